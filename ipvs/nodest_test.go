package ipvs

import (
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestHoldNodestConns: 1 becomes 0 for the plan and 1 again after; any
// other value is left alone.
func TestHoldNodestConns(t *testing.T) {
	for _, tc := range []struct{ start, during, after string }{
		{"1\n", "0", "1"},
		{"0\n", "0", "0"},
		{"2\n", "2", "2"},
	} {
		path := filepath.Join(t.TempDir(), "expire_nodest_conn")
		if err := os.WriteFile(path, []byte(tc.start), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		read := func() string {
			b, _ := os.ReadFile(path)
			return strings.TrimSpace(string(b))
		}
		restore, err := holdNodestConns(f)
		if err != nil {
			t.Fatalf("start %q: %v", tc.start, err)
		}
		if got := read(); got != tc.during {
			t.Errorf("start %q: %q during the plan, want %q", tc.start, got, tc.during)
		}
		if err := restore(); err != nil {
			t.Fatal(err)
		}
		if got := read(); got != tc.after {
			t.Errorf("start %q: %q after the plan, want %q", tc.start, got, tc.after)
		}
		f.Close()
	}
}

// TestOpenInNetns: the sysctl file opened for a namespace writes that
// namespace's value, not the caller's.
func TestOpenInNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	const ns, sysctl = "ipvs-nodest-test", "/proc/sys/net/ipv4/ip_default_ttl"
	exec.Command("ip", "netns", "del", ns).Run()
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Skipf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	host, _ := os.ReadFile(sysctl)
	f, err := openInNetns("/run/netns/"+ns, sysctl)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("77\n"), 0); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ip", "netns", "exec", ns, "cat", sysctl).Output()
	if err != nil || strings.TrimSpace(string(out)) != "77" {
		t.Errorf("the namespace's value: %q %v, want 77", out, err)
	}
	if now, _ := os.ReadFile(sysctl); string(now) != string(host) {
		t.Errorf("the caller's value changed: %q -> %q", host, now)
	}
}

// TestNodestHoldNeverFailsThePlan: the hold is not a reason for a plan to
// fail (a failed plan withdraws the services' VIPs): a sysctl that cannot
// be written still lets the plan run, and only the plan's own error is
// returned.
func TestNodestHoldNeverFailsThePlan(t *testing.T) {
	path := filepath.Join(t.TempDir(), "expire_nodest_conn")
	if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path) // read-only: setting 0 fails
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var logged strings.Builder
	log := slog.New(slog.NewTextHandler(&logged, nil))
	ran := false
	if err := withNodestHold(f, log, func() error { ran = true; return nil }); err != nil || !ran {
		t.Errorf("with an unwritable sysctl: plan ran %v, error %v; want it run and no error", ran, err)
	}
	if !strings.Contains(logged.String(), "without holding expire_nodest_conn") {
		t.Errorf("not logged: %q", logged.String())
	}
	planErr := errors.New("refused")
	if err := withNodestHold(f, nil, func() error { return planErr }); err != planErr {
		t.Errorf("the plan's own error: got %v", err)
	}
}
