// Package labtest is what lab tests share: the gate that runs them only
// where they can run (root, ANYCASTD_LAB=1), network namespaces that are
// removed even when a test fails, commands run inside them, building the
// project's binaries, and polling for a condition with a deadline.
package labtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// Require skips t unless lab tests are enabled (ANYCASTD_LAB=1, as `make
// lab-test` sets, or inside the VM lab) and the process is root, and says
// why.
func Require(t testing.TB) {
	t.Helper()
	if os.Getenv("ANYCASTD_LAB") != "1" && !InVM() {
		t.Skip("lab test: set ANYCASTD_LAB=1 (make lab-test) to run it")
	}
	if os.Geteuid() != 0 {
		t.Skip("lab test: needs root for network namespaces")
	}
}

// InVM reports whether the test runs inside the VM lab.
func InVM() bool { return os.Getenv("ANYCASTD_VM") == "1" }

// RequireVM skips t unless it runs inside the VM lab (labs/vmlab), where
// the kernel has IPVS.
func RequireVM(t testing.TB) {
	t.Helper()
	if !InVM() {
		t.Skip("VM test: runs inside the qemu VM lab (make lab-test), whose kernel has IPVS")
	}
}

// Run runs a command on the host and returns its combined output; a
// failure fails the test with the output.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Netns is a network namespace made for one test.
type Netns struct {
	Name string
	t    testing.TB
}

// NewNetns creates a namespace with a unique name and the loopback up, and
// deletes it (and kills what runs in it) when the test ends.
func NewNetns(t testing.TB, hint string) *Netns {
	t.Helper()
	name := fmt.Sprintf("acd-%s-%d", hint, os.Getpid()%100000)
	exec.Command("ip", "netns", "del", name).Run()
	Run(t, "ip", "netns", "add", name)
	n := &Netns{Name: name, t: t}
	t.Cleanup(n.Delete)
	n.Run("ip", "link", "set", "lo", "up")
	return n
}

// Delete kills every process in the namespace and removes it; idempotent.
func (n *Netns) Delete() {
	if pids, err := exec.Command("ip", "netns", "pids", n.Name).Output(); err == nil {
		for _, p := range strings.Fields(string(pids)) {
			exec.Command("kill", "-9", p).Run()
		}
	}
	exec.Command("ip", "netns", "del", n.Name).Run()
}

// Run runs a command inside the namespace; a failure fails the test.
func (n *Netns) Run(name string, args ...string) string {
	n.t.Helper()
	return Run(n.t, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Do runs f on a thread that has entered the namespace (netlink and
// sockets act on the calling thread's namespace), then puts the thread
// back. f must not start goroutines that expect to be in the namespace.
func (n *Netns) Do(f func()) {
	n.t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		n.t.Fatal(err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(n.Name)
	if err != nil {
		n.t.Fatal(err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		n.t.Fatal(err)
	}
	defer netns.Set(orig)
	f()
}

// Try runs a command inside the namespace and returns its output and error.
func (n *Netns) Try(name string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// Sysctl reads a sysctl (net.ipv4.conf.lo.arp_ignore) inside the namespace.
func (n *Netns) Sysctl(name string) string {
	n.t.Helper()
	return strings.TrimSpace(n.Run("cat", "/proc/sys/"+strings.ReplaceAll(name, ".", "/")))
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// Binaries builds anycastd and anyctl once per test process and returns
// the directory that holds them. Inside the VM (no Go toolchain there) it
// returns ANYCASTD_BIN_DIR, where the VM lab put them.
func Binaries(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("ANYCASTD_BIN_DIR"); d != "" {
		return d
	}
	buildOnce.Do(func() {
		// A fixed directory in the git-ignored cache: rebuilt (incrementally)
		// by each test process, never left behind in /tmp.
		buildDir = filepath.Join(RepoRoot(), "labs", ".cache", "bin")
		if buildErr = os.MkdirAll(buildDir, 0o755); buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", buildDir+"/", "./cmd/anycastd", "./cmd/anyctl")
		cmd.Dir = RepoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build binaries: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

// RepoRoot is the repository's top directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Eventually polls cond every 20 ms until it returns nil, and fails the
// test with what was awaited and the last error if timeout passes first.
// It returns how long it waited.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	return Poll(t, 20*time.Millisecond, timeout, what, cond)
}

// Poll is Eventually with another interval (in-process tests that
// measure how fast something converges poll faster).
func Poll(t testing.TB, every, timeout time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tick := time.NewTicker(every)
	defer tick.Stop()
	var last error
	for {
		if last = cond(); last == nil {
			return time.Since(start)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, last)
			return 0
		case <-tick.C:
		}
	}
}

// MeasureRuns is how often a lab repeats a timed scenario: the
// ANYCASTD_MEASURE_RUNS environment variable (make bench sets it), else 1.
func MeasureRuns() int {
	if n, err := strconv.Atoi(os.Getenv("ANYCASTD_MEASURE_RUNS")); err == nil && n > 0 {
		return n
	}
	return 1
}

// Report logs a "measure:" line with the median, min and max of ds: the
// lines make bench collects into its report.
func Report(t testing.TB, what string, ds []time.Duration) {
	t.Helper()
	if len(ds) == 0 {
		return
	}
	ds = slices.Clone(ds)
	slices.Sort(ds)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	if len(ds) == 1 {
		t.Logf("measure: %s: %.1f ms", what, ms(ds[0]))
		return
	}
	t.Logf("measure: %s: median %.1f ms, min %.1f ms, max %.1f ms (%d runs)", what,
		ms(ds[len(ds)/2]), ms(ds[0]), ms(ds[len(ds)-1]), len(ds))
}
