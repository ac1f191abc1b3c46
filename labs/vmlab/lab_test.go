package vmlab

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/labs/labtest"
)

// vmPackages are the packages whose TestVM* (and real-server lab) tests run
// inside the VM, against Debian's kernel with IPVS.
var vmPackages = []struct{ name, pkg, run string }{
	{"ipvs", "./ipvs", "^TestVM"},
	{"anyctl", "./cmd/anyctl", "^TestLabRealServer"},
	{"vmlab", "./labs/vmlab", "^TestVM"},
}

// TestLabVM boots Debian's kernel under qemu once and runs every in-VM
// test there: the kernel dataplane, real-server setup with IPIP, and the
// DR packet path through namespaces.
func TestLabVM(t *testing.T) {
	labtest.Require(t)
	if labtest.InVM() {
		t.Skip("already inside the VM")
	}
	for _, tool := range []string{"qemu-system-x86_64", "apt-get", "dpkg"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the VM lab needs %s (apt-get install qemu-system-x86 busybox-static)", tool)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	root := labtest.RepoRoot()
	k, err := EnsureKernel(ctx, CacheDir(root))
	if err != nil {
		t.Fatal(err)
	}
	bins := labtest.Binaries(t)
	build := t.TempDir()
	spec := Spec{
		Kernel: k,
		Files:  map[string]string{"/bin/anyctl": filepath.Join(bins, "anyctl"), "/bin/anycastd": filepath.Join(bins, "anycastd")},
		// ipvsadm and keepalived: the peers ipvs's measurements compare
		// with in the same boot (TestVMMeasureApply).
		HostBinaries: []string{"/usr/sbin/ipvsadm", "/usr/sbin/keepalived"},
		Env:          map[string]string{"ANYCASTD_BIN_DIR": "/bin"},
	}
	// The sizes make bench asks for reach the tests inside.
	for _, k := range []string{"ANYCASTD_CHURN_FLOWS"} {
		if v := os.Getenv(k); v != "" {
			spec.Env[k] = v
		}
	}
	for _, p := range vmPackages {
		// ANYCASTD_VM_ONLY=ipvs (a name of vmPackages) boots for that
		// package alone, and ANYCASTD_VM_RUN narrows its -test.run: a
		// shorter boot while working on one test.
		only := os.Getenv("ANYCASTD_VM_ONLY")
		if only != "" && only != p.name {
			continue
		}
		if r := os.Getenv("ANYCASTD_VM_RUN"); r != "" && only == p.name {
			p.run = r
		}
		out := filepath.Join(build, p.name+".test")
		cmd := exec.CommandContext(ctx, "go", "test", "-c", "-o", out, p.pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", p.pkg, err, b)
		}
		spec.Tests = append(spec.Tests, Test{Name: p.name, Binary: out, Args: []string{"-test.run", p.run, "-test.v", "-test.count=1", "-test.timeout=50m"}})
	}
	res, err := Run(ctx, spec)
	if err != nil {
		t.Log(res.ConsoleReport(80))
		t.Fatal(err)
	}
	t.Logf("VM: Debian kernel %s under qemu (software emulation), kernel up %s before /init's tests, whole run %s", k.Version, res.Boot, res.Duration.Round(time.Millisecond))
	for _, r := range res.Tests {
		t.Run(r.Name, func(t *testing.T) {
			t.Logf("output inside the VM (kernel %s):\n%s", k.Version, r.Output)
			switch {
			case r.Exit == -1:
				t.Fatalf("did not finish inside the VM\n%s", res.ConsoleReport(60))
			case r.Exit != 0:
				t.Fatalf("failed inside the VM (exit %d)", r.Exit)
			case !strings.Contains(r.Output, "--- PASS"):
				t.Fatalf("ran no test inside the VM")
			}
		})
	}
}
