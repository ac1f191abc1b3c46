package bfd

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

// fakeNeighbour is a BFD neighbour played by hand on loopback: it sends
// the packets the test asks for, with TTL 255 unless told otherwise.
type fakeNeighbour struct {
	t    *testing.T
	conn *net.UDPConn
	to   *net.UDPAddr
	got  chan Packet
}

func newFakeNeighbour(t *testing.T) *fakeNeighbour {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	if err := ipv4.NewConn(c).SetTTL(255); err != nil {
		t.Fatal(err)
	}
	n := &fakeNeighbour{t: t, conn: c, got: make(chan Packet, 1000)}
	go func() {
		buf := make([]byte, 1500)
		for {
			k, err := c.Read(buf)
			if err != nil {
				close(n.got)
				return
			}
			if p, err := Parse(buf[:k]); err == nil {
				n.got <- p
			}
		}
	}()
	t.Cleanup(func() { c.Close() })
	return n
}

func (n *fakeNeighbour) port() int { return n.conn.LocalAddr().(*net.UDPAddr).Port }

func (n *fakeNeighbour) send(p Packet, ttl int) {
	n.t.Helper()
	ipv4.NewConn(n.conn).SetTTL(ttl)
	b, err := p.MarshalBinary()
	if err != nil {
		n.t.Fatal(err)
	}
	if _, err := n.conn.WriteTo(b, n.to); err != nil {
		n.t.Fatal(err)
	}
}

// await reads the server's packets until one matches.
func (n *fakeNeighbour) await(what string, ok func(Packet) bool) Packet {
	n.t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case p := <-n.got:
			if ok(p) {
				return p
			}
		case <-deadline:
			n.t.Fatalf("no packet from the server: %s", what)
		}
	}
}

type transitions struct {
	mu  sync.Mutex
	all []Transition
}

func (tr *transitions) add(_ netip.Addr, t Transition) {
	tr.mu.Lock()
	tr.all = append(tr.all, t)
	tr.mu.Unlock()
}

func (tr *transitions) reset() {
	tr.mu.Lock()
	tr.all = nil
	tr.mu.Unlock()
}

func (tr *transitions) await(t *testing.T, what string, ok func(Transition) bool) Transition {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		tr.mu.Lock()
		for _, x := range tr.all {
			if ok(x) {
				tr.mu.Unlock()
				return x
			}
		}
		tr.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no transition: %s (have %+v)", what, tr.all)
	return Transition{}
}

func freeUDPPort(t *testing.T) int {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// TestServerAgainstNeighbour runs the server over real UDP sockets on
// loopback against a neighbour played by the test: the handshake, the
// GTSM check, AdminDown (no failure), detection expiry (a failure), and
// AdminDown on stop.
func TestServerAgainstNeighbour(t *testing.T) {
	n := newFakeNeighbour(t)
	var tr transitions
	lo := netip.MustParseAddr("127.0.0.1")
	srv := NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)),
		[]Peer{{Address: lo, Config: fast}}, tr.add)
	srv.peerPort = n.port()
	srv.listenPort = freeUDPPort(t)
	n.to = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: srv.listenPort}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	// Held administratively down until the BGP session asks for it.
	n.await("admin down before Enable", func(p Packet) bool { return p.State == AdminDown })
	n.send(neighbour(Down, DiagNone, 0), 255)
	time.Sleep(50 * time.Millisecond)
	if st, _ := srv.Status(lo); st.State != AdminDown {
		t.Fatalf("state %s before Enable", StateName(st.State))
	}
	if !srv.Enable(lo, true) || srv.Enable(netip.MustParseAddr("127.0.0.2"), true) {
		t.Fatal("Enable: wrong session")
	}
	tr.await(t, "enabled", func(x Transition) bool { return x.From == AdminDown && x.To == Down })
	tr.reset()
	first := n.await("down", func(p Packet) bool { return p.State == Down })
	local := first.MyDiscriminator
	me := neighbour(Down, DiagNone, 0)
	// A packet with TTL 254 came through a router: dropped.
	n.send(me, 254)
	time.Sleep(50 * time.Millisecond)
	if st, _ := srv.Status(lo); st.State != Down {
		t.Fatalf("a packet with TTL 254 moved the session to %s", StateName(st.State))
	}
	n.send(me, 255)
	n.await("init", func(p Packet) bool { return p.State == Init && p.YourDiscriminator == 7 })
	n.send(neighbour(Up, DiagNone, local), 255)
	n.await("up with poll", func(p Packet) bool { return p.State == Up && p.Poll })
	tr.await(t, "up", func(x Transition) bool { return x.To == Up })

	// Keep it up for a while at 100 ms, then say AdminDown.
	for i := 0; i < 5; i++ {
		n.send(neighbour(Up, DiagNone, local), 255)
		time.Sleep(100 * time.Millisecond)
	}
	if st, _ := srv.Status(lo); st.State != Up {
		t.Fatalf("state %s while the neighbour sends up", StateName(st.State))
	}
	n.send(neighbour(AdminDown, DiagAdminDown, local), 255)
	x := tr.await(t, "down by admin down", func(x Transition) bool { return x.To == Down })
	if x.Failure() || x.Cause != CauseRemoteAdminDown {
		t.Errorf("admin down: %+v (failure %v)", x, x.Failure())
	}

	// Up again, then silence: the detection time (3 x 100 ms) expires.
	tr.reset()
	n.send(neighbour(Down, DiagNone, local), 255)
	n.send(neighbour(Up, DiagNone, local), 255)
	tr.await(t, "up again", func(x Transition) bool { return x.To == Up })
	x = tr.await(t, "expiry", func(x Transition) bool { return x.To == Down })
	if !x.Failure() || x.Cause != CauseExpired {
		t.Errorf("silence: %+v (failure %v)", x, x.Failure())
	}

	// Disabled (the BGP session went down): admin down, which is not a
	// failure.
	tr.reset()
	srv.Enable(lo, false)
	x = tr.await(t, "admin down", func(x Transition) bool { return x.To == AdminDown })
	if x.Failure() {
		t.Errorf("disable: %+v is a failure", x)
	}
	n.await("admin down after disable", func(p Packet) bool { return p.State == AdminDown && p.Diagnostic == DiagAdminDown })
	srv.Enable(lo, true)
	n.await("down after enable", func(p Packet) bool { return p.State == Down })

	cancel()
	<-done
	done <- nil
	n.await("admin down on stop", func(p Packet) bool { return p.State == AdminDown && p.Diagnostic == DiagAdminDown })
}
