package clusterlab

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/labs/labtest"
)

// runToExit runs anycastd with the config in dir until it exits (at most
// timeout) and returns its exit code and output; -1 if it had to be
// killed.
func runToExit(t *testing.T, bin, dir string, timeout time.Duration) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "anycastd"), "-c", filepath.Join(dir, "anycastd.yaml"), "--log-format", "json")
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return -1, string(out)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}

// Cases 9 and 10 of the fail-safe issue: a gossip port that is taken
// made the daemon hang forever (even through SIGTERM) without logging the
// error, and a metrics listener that could not bind made it exit 0, so
// systemd's Restart=on-failure did nothing. Both must log the error and
// exit non-zero.
func TestDaemonExitsNonZeroWhenAListenerFails(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	bin := labtest.Binaries(t)
	cases := []struct {
		name string
		addr string
		take string // address:port held by the test
		api  string // added to the api section
		want string
	}{
		{"gossip port taken", "127.0.0.61", "127.0.0.61:7946", "", "gossip on 127.0.0.61:7946"},
		{"metrics port taken", "127.0.0.62", "127.0.0.62:9100", "  metrics: 127.0.0.62:9100\n", "api.metrics"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l, err := net.Listen("tcp", tc.take)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			dir := t.TempDir()
			spec := Spec{Name: "x1", Addr: tc.addr, Port: 7946, MaxActive: 8, Priority: 100, Services: baseServices}
			path, err := WriteConfig(dir, spec)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(path)
			if err := os.WriteFile(path, []byte(strings.Replace(string(b), "api:\n", "api:\n"+tc.api, 1)), 0o644); err != nil {
				t.Fatal(err)
			}
			code, out := runToExit(t, bin, dir, 15*time.Second)
			if code <= 0 {
				t.Fatalf("exit code %d, want non-zero\n%s", code, tail(out, 20))
			}
			if !strings.Contains(out, tc.want) || !strings.Contains(out, "address already in use") {
				t.Errorf("the error is not logged (want %q):\n%s", tc.want, tail(out, 20))
			}
		})
	}
}
