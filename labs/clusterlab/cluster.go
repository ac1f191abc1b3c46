// Package clusterlab runs anycastd daemons as separate processes, on
// loopback addresses or inside a network namespace, and drives them with
// anyctl: the multi-process tests of the cluster and director.
package clusterlab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anycastd/anycastd/api"
)

// Daemon is one anycastd process.
type Daemon struct {
	Name   string
	Addr   string // gossip address (127.0.0.N)
	Dir    string
	Config string
	Socket string

	// Env is added to the daemon's environment (systemd's NOTIFY_SOCKET,
	// for example).
	Env []string

	bin    string
	netns  string
	cmd    *exec.Cmd
	done   chan struct{}
	log    *os.File
	mu     sync.Mutex
	exited error
}

// Spec says how to write a daemon's config.
type Spec struct {
	Name      string
	Addr      string
	Port      int
	Seeds     []string
	Key       string // base64; "" is insecure
	MaxActive int
	Priority  int
	Services  string // YAML list under services:
	Extra     string // more top-level YAML
}

// WriteConfig writes the daemon's config file into dir.
func WriteConfig(dir string, s Spec) (string, error) {
	sec := "insecure: true"
	if s.Key != "" {
		sec = fmt.Sprintf("keys: [%q]", s.Key)
	}
	seeds := "[]"
	if len(s.Seeds) > 0 {
		seeds = `["` + strings.Join(s.Seeds, `", "`) + `"]`
	}
	doc := fmt.Sprintf(`node:
  name: %s
  addresses: [%s]
  state_dir: %s
  dataplane: memory
cluster:
  bind: %s
  port: %d
  seeds: %s
  %s
  max_active: %d
  priority: %d
routing:
  mode: bgp
  bgp:
    asn: 65001
    router_id: %s
    listen_port: -1
    graceful_shutdown: 1s
    # A neighbour on loopback that never answers: the speaker runs for
    # real, sessions stay down (the lab with a router is issue 7's).
    neighbors: [{address: 127.0.0.254, asn: 65000, connect_retry: 60s}]
api:
  socket: %s
health: {interval: 500ms, timeout: 300ms, rise: 1, fall: 2}
%s
services:
%s`, s.Name, s.Addr, filepath.Join(dir, "state"), s.Addr, s.Port, seeds, sec, s.MaxActive, s.Priority, s.Addr,
		filepath.Join(dir, "api.sock"), s.Extra, s.Services)
	path := filepath.Join(dir, "anycastd.yaml")
	return path, os.WriteFile(path, []byte(doc), 0o644)
}

// Start runs anycastd with the config at dir/anycastd.yaml (in netns, if
// set) and returns once its API answers.
func Start(t testing.TB, bin, dir, name, addr, netns string) *Daemon {
	t.Helper()
	return StartEnv(t, bin, dir, name, addr, netns, nil)
}

// StartEnv is Start with env added to the daemon's environment.
func StartEnv(t testing.TB, bin, dir, name, addr, netns string, env []string) *Daemon {
	t.Helper()
	d := &Daemon{Name: name, Addr: addr, Dir: dir, Config: filepath.Join(dir, "anycastd.yaml"),
		Socket: filepath.Join(dir, "api.sock"), Env: env, bin: bin, netns: netns}
	d.start(t)
	t.Cleanup(d.Kill)
	return d
}

func (d *Daemon) start(t testing.TB) {
	t.Helper()
	args := []string{filepath.Join(d.bin, "anycastd"), "-c", d.Config, "--log-format", "json", "--log-level", "debug"}
	if d.netns != "" {
		args = append([]string{"ip", "netns", "exec", d.netns}, args...)
	}
	lf, err := os.OpenFile(filepath.Join(d.Dir, "anycastd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	d.log = lf
	d.cmd = exec.Command(args[0], args[1:]...)
	d.cmd.Stdout, d.cmd.Stderr = lf, lf
	if len(d.Env) > 0 {
		d.cmd.Env = append(os.Environ(), d.Env...)
	}
	// Its own process group, so that a kill reaches anycastd under
	// `ip netns exec` too.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.done = make(chan struct{})
	go func() {
		err := d.cmd.Wait()
		d.mu.Lock()
		d.exited = err
		d.mu.Unlock()
		lf.Close()
		close(d.done)
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var st api.StatusResponse
		if err := d.Get("/v1/status", &st); err == nil {
			return
		}
		select {
		case <-d.done:
			t.Fatalf("%s exited at start: %v\n%s", d.Name, d.exited, d.Log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: API not up after 20s\n%s", d.Name, d.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Restart starts the daemon again after Stop or Kill.
func (d *Daemon) Restart(t testing.TB) { d.start(t) }

// Log is the daemon's log so far.
func (d *Daemon) Log() string {
	b, _ := os.ReadFile(filepath.Join(d.Dir, "anycastd.log"))
	return string(b)
}

// Signal sends sig to the daemon's process group.
func (d *Daemon) Signal(sig syscall.Signal) {
	if d.cmd != nil && d.cmd.Process != nil {
		_ = syscall.Kill(-d.cmd.Process.Pid, sig)
	}
}

// Kill is kill -9 and waits for the process to go.
func (d *Daemon) Kill() {
	if d.done == nil {
		return
	}
	d.Signal(syscall.SIGKILL)
	<-d.done
}

// Stop is SIGTERM (graceful) and waits up to timeout; it returns the
// exit error.
func (d *Daemon) Stop(timeout time.Duration) error {
	d.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(timeout):
		d.Kill()
		return fmt.Errorf("%s did not stop within %v", d.Name, timeout)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.exited
}

// Running reports whether the process is alive.
func (d *Daemon) Running() bool {
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

func (d *Daemon) client() *http.Client {
	sock := d.Socket
	return &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", sock)
		}}}
}

// Get calls the daemon's API.
func (d *Daemon) Get(path string, out any) error {
	resp, err := d.client().Get("http://anycastd" + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Anyctl runs the anyctl binary against this daemon.
func (d *Daemon) Anyctl(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(d.bin, "anyctl"), append(args, "--socket", d.Socket)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}
