package soak

import (
	"cmp"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/labs/labtest"
	"github.com/anycastd/anycastd/labs/vmlab"
)

// TestLabSoak boots Debian's kernel under qemu and runs the soak inside
// it (TestVMSoak): SOAK_SEED (default 1), SOAK_DURATION (default 75s, for
// each routing setup), SOAK_ROUTING (default all three, one after the
// other in the same boot) and SOAK_FLOWS (long flows, default 40). It fails on any invariant violation; the
// report is in the output.
func TestLabSoak(t *testing.T) {
	labtest.Require(t)
	if labtest.InVM() {
		t.Skip("already inside the VM")
	}
	for _, tool := range []string{"qemu-system-x86_64", "/usr/sbin/bird", "/usr/sbin/birdc", "/usr/sbin/nft", "/usr/sbin/nginx"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the soak lab needs %s (labs/install-deps.sh installs qemu-system-x86, bird2, nftables and nginx)", tool)
		}
	}
	// make test runs a short soak of a seed that CI replays on every
	// submission; make soak chooses its own (SEED, DURATION, ROUTING).
	seed := cmp.Or(os.Getenv("SOAK_SEED"), "1")
	dur := durationEnv("SOAK_DURATION", 75*time.Second)
	routing := cmp.Or(os.Getenv("SOAK_ROUTING"), strings.Join(routingModes, ","))
	flows := cmp.Or(os.Getenv("SOAK_FLOWS"), "40")
	kinds := os.Getenv("SOAK_KINDS")
	if _, err := parseKinds(kinds); err != nil {
		t.Fatal(err)
	}
	modes := len(strings.Split(routing, ","))
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(modes)*(dur+5*time.Minute)+10*time.Minute)
	defer cancel()
	root := labtest.RepoRoot()
	k, err := vmlab.EnsureKernel(ctx, vmlab.CacheDir(root))
	if err != nil {
		t.Fatal(err)
	}
	bins := labtest.Binaries(t)
	test := filepath.Join(t.TempDir(), "soak.test")
	cmd := exec.CommandContext(ctx, "go", "test", "-c", "-o", test, "./labs/soak")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the soak: %v\n%s", err, b)
	}
	// nginx looks its workers' user up (nobody) as root: the VM's
	// files need the two entries.
	users, groups := filepath.Join(t.TempDir(), "passwd"), filepath.Join(t.TempDir(), "group")
	os.WriteFile(users, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"), 0o644)
	os.WriteFile(groups, []byte("root:x:0:\nnogroup:x:65534:\n"), 0o644)
	spec := vmlab.Spec{
		Kernel: k,
		Memory: 2048,
		Files: map[string]string{"/bin/anyctl": filepath.Join(bins, "anyctl"), "/bin/anycastd": filepath.Join(bins, "anycastd"),
			"/etc/passwd": users, "/etc/group": groups},
		HostBinaries: []string{"/usr/sbin/bird", "/usr/sbin/birdc", "/usr/sbin/nft", "/usr/sbin/nginx"},
		Env: map[string]string{"ANYCASTD_BIN_DIR": "/bin", "SOAK_SEED": seed, "SOAK_DURATION": dur.String(), "SOAK_ROUTING": routing, "SOAK_FLOWS": flows,
			"SOAK_KINDS": kinds, "SOAK_LOGS": os.Getenv("SOAK_LOGS")},
		Tests: []vmlab.Test{{Name: "soak", Binary: test, Args: []string{"-test.run", "^TestVMSoak$", "-test.v", "-test.count=1",
			"-test.timeout", (time.Duration(modes) * (dur + 5*time.Minute)).String()}}},
	}
	res, err := vmlab.Run(ctx, spec)
	if err != nil {
		if res != nil {
			if len(res.Tests) > 0 && res.Tests[0].Output != "" {
				t.Logf("the soak's output inside the VM, cut off:\n%s", tailLines(res.Tests[0].Output, 60))
			}
			t.Log(res.ConsoleReport(80))
		}
		t.Fatal(err)
	}
	r := res.Tests[0]
	t.Logf("inside the VM (kernel %s, whole run %s):\n%s", k.Version, res.Duration.Round(time.Second), r.Output)
	switch {
	case r.Exit == -1:
		t.Fatalf("the soak did not finish inside the VM\n%s", res.ConsoleReport(80))
	case r.Exit != 0:
		t.Fatalf("the soak failed (seed %s): see the report above; the same seed replays the same schedule", seed)
	case strings.Count(r.Output, "soak report (") != modes:
		t.Fatalf("%d reports for %d routing setups", strings.Count(r.Output, "soak report ("), modes)
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
