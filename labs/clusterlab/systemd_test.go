package clusterlab

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anycastd/anycastd/api"
	"github.com/anycastd/anycastd/labs/labtest"
)

// notifySocket is systemd's side of sd_notify: a unix datagram socket
// whose path the service finds in NOTIFY_SOCKET. It records every
// message, in order, with what the daemon's API said at that moment.
type notifySocket struct {
	path string
	conn *net.UnixConn
	mu   sync.Mutex
	msgs []string
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &notifySocket{path: path, conn: conn}
}

// serve reads messages until the socket closes; onReady runs when
// READY=1 arrives and its result is recorded as "READY=1 <result>".
func (n *notifySocket) serve(onReady func() string) {
	buf := make([]byte, 4096)
	for {
		k, err := n.conn.Read(buf)
		if err != nil {
			return
		}
		for _, line := range strings.Split(strings.TrimSpace(string(buf[:k])), "\n") {
			if line == "READY=1" {
				line += " " + onReady()
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, line)
			n.mu.Unlock()
		}
	}
}

func (n *notifySocket) messages() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.msgs...)
}

func (n *notifySocket) count(prefix string) int {
	c := 0
	for _, m := range n.messages() {
		if strings.HasPrefix(m, prefix) {
			c++
		}
	}
	return c
}

// The daemon under Type=notify with WatchdogSec: READY=1 once it serves
// (its API answers and its first reconcile is done), WATCHDOG=1 while the
// loop turns, STOPPING=1 on SIGTERM, in that order. systemd is not PID 1
// on these machines, so the test plays systemd's side of the protocol:
// the same datagrams on the same socket.
func TestDaemonSystemdNotify(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	bin := labtest.Binaries(t)
	dir := t.TempDir()
	spec := Spec{Name: "s1", Addr: "127.0.0.52", Port: 7946, MaxActive: 8, Priority: 100, Services: baseServices}
	if _, err := WriteConfig(dir, spec); err != nil {
		t.Fatal(err)
	}
	ns := listenNotify(t)
	go ns.serve(func() string {
		// The API socket is the daemon's own; it must answer at READY.
		client := &Daemon{Socket: filepath.Join(dir, "api.sock")}
		var st api.StatusResponse
		if err := client.Get("/v1/status", &st); err != nil {
			return "api-error:" + err.Error()
		}
		return fmt.Sprintf("api-ok vips=%d", len(st.VIPs))
	})
	// A 600 ms watchdog: petted every 200 ms while the loop turns.
	d := StartEnv(t, bin, dir, "s1", spec.Addr, "", []string{"NOTIFY_SOCKET=" + ns.path, "WATCHDOG_USEC=600000"})

	labtest.Eventually(t, 15*time.Second, "READY=1 and a few WATCHDOG=1", func() error {
		if ns.count("READY=1") != 1 || ns.count("WATCHDOG=1") < 3 {
			return fmt.Errorf("messages so far: %q", ns.messages())
		}
		return nil
	})
	d.Signal(syscall.SIGTERM)
	labtest.Eventually(t, 15*time.Second, "STOPPING=1", func() error {
		if ns.count("STOPPING=1") == 0 {
			return fmt.Errorf("messages so far: %q", ns.messages())
		}
		return nil
	})
	if err := d.Stop(15 * time.Second); err != nil {
		t.Errorf("stop: %v\n%s", err, tail(d.Log(), 20))
	}

	msgs := ns.messages()
	if !strings.HasPrefix(msgs[0], "READY=1 api-ok") {
		t.Errorf("first message %q: want READY=1 with the API already answering", msgs[0])
	}
	if msgs[0] != "READY=1 api-ok vips=1" {
		t.Errorf("at READY the director should have its service planned: %q", msgs[0])
	}
	stopping := -1
	for i, m := range msgs {
		switch {
		case m == "STOPPING=1":
			stopping = i
		case strings.HasPrefix(m, "READY=1") && i != 0:
			t.Errorf("READY=1 again at message %d: %q", i, msgs)
		case m != "WATCHDOG=1" && !strings.HasPrefix(m, "READY=1"):
			t.Errorf("unexpected message %q", m)
		}
	}
	if stopping != len(msgs)-1 {
		t.Errorf("STOPPING=1 should be the last message: %q", msgs)
	}
}
