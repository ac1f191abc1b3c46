package clusterlab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
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

// SIGHUP (a reload: `systemctl reload`, a key rotation's step) that
// arrives while the daemon starts or finishes stopping killed it with the
// default action: the soak lab saw a director exit "signal: hangup" when a
// rotation's SIGHUP met its graceful stop. It is caught from start to end.
func TestDaemonSurvivesSIGHUPAtStartAndStop(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	bin := labtest.Binaries(t)
	dir := t.TempDir()
	spec := Spec{Name: "h1", Addr: "127.0.0.63", Port: 7946, MaxActive: 8, Priority: 100, Services: baseServices}
	if _, err := WriteConfig(dir, spec); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, "anycastd"), "-c", filepath.Join(dir, "anycastd.yaml"), "--log-format", "json")
	pipe, _ := cmd.StdoutPipe()
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var out bytes.Buffer
	first := make(chan struct{})
	lines := make(chan struct{})
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pipe)
		once := sync.Once{}
		for sc.Scan() {
			mu.Lock()
			out.WriteString(sc.Text() + "\n")
			mu.Unlock()
			once.Do(func() { close(first) })
		}
	}()
	logged := func() string {
		mu.Lock()
		defer mu.Unlock()
		return out.String()
	}
	done := make(chan error, 1)
	go func() { <-lines; done <- cmd.Wait() }()
	// A signal before the program runs at all meets the kernel's default:
	// no program can catch that. From its first log line on (the old code
	// logged several before it caught SIGHUP), it must.
	select {
	case <-first:
	case <-time.After(20 * time.Second):
		t.Fatal("no log line")
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	// hup sends SIGHUP every 5 ms for d, or until the process exits
	// (exited, with its error).
	hup := func(d time.Duration) (exited bool, err error) {
		end := time.Now().Add(d)
		for time.Now().Before(end) {
			select {
			case err := <-done:
				return true, err
			default:
			}
			cmd.Process.Signal(syscall.SIGHUP)
			time.Sleep(5 * time.Millisecond)
		}
		return false, nil
	}
	if exited, err := hup(1500 * time.Millisecond); exited {
		t.Fatalf("SIGHUP while starting: exited: %v\n%s", err, tail(logged(), 20))
	}
	// And through a graceful stop, to the end.
	cmd.Process.Signal(syscall.SIGTERM)
	exited, err := hup(3 * time.Second)
	if !exited {
		select {
		case err = <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("did not stop\n%s", tail(logged(), 30))
		}
	}
	if err != nil {
		t.Fatalf("the stop ended with %v, want exit 0\n%s", err, tail(logged(), 20))
	}
}
