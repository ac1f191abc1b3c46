package health

import (
	"context"
	"net"
	"net/netip"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestConnector runs plain TCP checks on the connector over loopback: a
// listener (up), a closed port (refused, the same words as Go's dialer),
// a listener whose accept queue is full (no answer: timed out), and a stop
// with a check unfinished (undone, not failed).
func TestConnector(t *testing.T) {
	c, err := newConnector()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { c.run(ctx); close(ran) }()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	up := netip.MustParseAddrPort(ln.Addr().String())
	closed := netip.MustParseAddrPort(closedPort(t))

	// A listening socket with a backlog of 0 that never accepts: once
	// its queue is full, the kernel drops the SYNs of a new connect.
	full, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(full)
	unix.Bind(full, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
	if err := unix.Listen(full, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(full)
	stuck := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(sa.(*unix.SockaddrInet4).Port))
	for range 3 {
		if c, err := net.DialTimeout("tcp", stuck.String(), 200*time.Millisecond); err == nil {
			defer c.Close()
		}
	}

	type outcome struct {
		r      Result
		undone bool
	}
	var mu sync.Mutex
	got := map[string]outcome{}
	var wg sync.WaitGroup
	check := func(name string, a netip.AddrPort, timeout time.Duration) {
		wg.Add(1)
		c.start(a, timeout, nil,
			func(r Result) { mu.Lock(); got[name] = outcome{r: r}; mu.Unlock(); wg.Done() },
			func() { mu.Lock(); got[name] = outcome{undone: true}; mu.Unlock(); wg.Done() })
	}
	check("up", up, time.Second)
	check("refused", closed, time.Second)
	check("stuck", stuck, 300*time.Millisecond)
	wg.Wait()
	if r := got["up"].r; !r.OK || r.Detail != "connected" || r.Latency <= 0 {
		t.Errorf("up: %+v", r)
	}
	if r := got["refused"].r; r.OK || r.Err == nil || !strings.Contains(r.Err.Error(), "connect: connection refused") {
		t.Errorf("refused: %+v", r)
	}
	if r := got["stuck"].r; r.OK || r.Err == nil || !strings.Contains(r.Err.Error(), "timed out after 300ms") || !strings.Contains(r.Err.Error(), "i/o timeout") || r.Latency < 300*time.Millisecond {
		t.Errorf("stuck: %+v", r)
	}

	// Stopped with a check in flight: undone, and later starts too.
	check("in flight", stuck, time.Minute)
	cancel()
	<-ran
	check("after stop", up, time.Second)
	wg.Wait()
	if !got["in flight"].undone || !got["after stop"].undone && !got["after stop"].r.OK {
		t.Errorf("after the stop: in flight %+v, after %+v", got["in flight"], got["after stop"])
	}
}

// TestConnectorWaitsInThePoller: an idle connector is parked in Go's
// poller ("IO wait"), not blocked in epoll_wait ("syscall"), which holds
// an OS thread and costs a thread hand-off on every wake-up (the monitor's
// CPU per check was twice keepalived's in the VM lab).
func TestConnectorWaitsInThePoller(t *testing.T) {
	runningConnector(t)

	// The connector's goroutine, once it waits: its state in a dump of
	// every goroutine.
	waiting := regexp.MustCompile(`goroutine \d+ \[([^\],]+)[^\]]*\]:\n(?:.*\n.*\n)*?[^\n]*\(\*connector\)\.run\(`)
	var state string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		buf := make([]byte, 1<<20)
		dump := string(buf[:runtime.Stack(buf, true)])
		for _, g := range strings.Split(dump, "\n\n") {
			if m := waiting.FindStringSubmatch(g + "\n"); m != nil && m[1] != "running" && m[1] != "runnable" {
				state = m[1]
			}
		}
		if state != "" {
			break
		}
	}
	if state != "IO wait" {
		t.Errorf("the idle connector's goroutine is in %q, want \"IO wait\" (parked in the poller)", state)
	}
}

// TestConnectorConnectsOnItsGoroutine: start only queues a check; the
// socket and the connect are made by run's goroutine, so that every system
// call on the checks' sockets comes from one goroutine (a connect on the
// monitor's and a close on the connector's contended for the kernel's
// locks: under the VM lab's emulation that cost more than the checks).
func TestConnectorConnectsOnItsGoroutine(t *testing.T) {
	c, err := newConnector()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan Result, 1)
	c.start(netip.MustParseAddrPort(ln.Addr().String()), time.Second, nil, func(r Result) { got <- r }, func() { t.Error("undone") })

	ln.(*net.TCPListener).SetDeadline(time.Now().Add(200 * time.Millisecond))
	if conn, err := ln.Accept(); err == nil {
		conn.Close()
		t.Fatal("start connected before run ran")
	}
	runConnector(t, c)
	if r := <-got; !r.OK {
		t.Errorf("once run runs: %+v", r)
	}
}

// runningConnector is a connector whose run goroutine runs until the test
// ends.
func runningConnector(t *testing.T) *connector {
	t.Helper()
	c, err := newConnector()
	if err != nil {
		t.Fatal(err)
	}
	runConnector(t, c)
	return c
}

// runConnector runs c's run goroutine until the test ends.
func runConnector(t *testing.T, c *connector) {
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { c.run(ctx); close(ran) }()
	t.Cleanup(func() { cancel(); <-ran })
}
