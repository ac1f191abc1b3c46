package bfd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Port is the destination port of single-hop BFD control packets
// (RFC 5881 §4).
const Port = 3784

// Peer is one neighbour to run a session with.
type Peer struct {
	Address netip.Addr
	// Local is the source address to send from (invalid: the kernel
	// picks one).
	Local netip.Addr
	Config
}

// Status is what Server.Status reports of one session.
type Status struct {
	State State
	// Diag is the local diagnostic (why the session last went down).
	Diag Diag
	// Since is when the session entered State.
	Since time.Time
}

// Server runs BFD sessions over UDP: it receives on port 3784 (IPv4 and
// IPv6), accepts only packets with TTL (hop limit) 255 (RFC 5881 §5, the
// generalized TTL security that single-hop BFD without authentication
// relies on), and sends each session's packets from its own source port in
// 49152-65535 with TTL 255. Every transition is passed to the notify
// function given to NewServer, in order, one at a time, from a goroutine of
// the server's (so notify may call Enable).
// Safe for concurrent use.
type Server struct {
	log    *slog.Logger
	notify func(netip.Addr, Transition)
	// listenPort and peerPort are Port except in tests, which run two
	// servers on one host.
	listenPort, peerPort int

	mu       sync.Mutex
	sessions map[netip.Addr]*peerSession
	byLocal  map[uint32]*peerSession
	wake     chan struct{}

	// events queues the transitions for notify, which runs on a goroutine
	// of its own: in order, one at a time, never under a caller's lock
	// (Enable is called from the BGP session's state callback).
	eventsMu sync.Mutex
	events   []event
	evWake   chan struct{}
}

type event struct {
	addr netip.Addr
	t    Transition
}

type peerSession struct {
	peer  Peer
	s     *Session
	conn  *net.UDPConn // nil until it could be opened
	since time.Time
	// connErr is the last error opening conn, logged once.
	connErr string
}

// NewServer returns a server that will run a session with each peer,
// each administratively down until Enable. notify (may be nil) gets each
// transition.
func NewServer(log *slog.Logger, peers []Peer, notify func(netip.Addr, Transition)) *Server {
	if notify == nil {
		notify = func(netip.Addr, Transition) {}
	}
	srv := &Server{log: log, notify: notify, listenPort: Port, peerPort: Port,
		sessions: map[netip.Addr]*peerSession{}, byLocal: map[uint32]*peerSession{}, wake: make(chan struct{}, 1),
		evWake: make(chan struct{}, 1)}
	now := time.Now()
	for _, p := range peers {
		local := srv.newDiscriminator()
		ps := &peerSession{peer: p, s: NewSession(p.Config, local, now, nil), since: now}
		ps.s.SetAdminDown(now, true)
		srv.sessions[p.Address.Unmap()] = ps
		srv.byLocal[local] = ps
	}
	return srv
}

func (srv *Server) newDiscriminator() uint32 {
	for {
		d := rand.Uint32()
		if _, taken := srv.byLocal[d]; d != 0 && !taken {
			return d
		}
	}
}

// Enable starts (true) or administratively stops (false) the session
// with addr; false if there is none. A stopped session sends AdminDown
// once a second and ignores what the neighbour sends.
func (srv *Server) Enable(addr netip.Addr, on bool) bool {
	now := time.Now()
	srv.mu.Lock()
	ps, ok := srv.sessions[addr.Unmap()]
	var t Transition
	changed := false
	if ok {
		t, changed = ps.s.SetAdminDown(now, !on)
		if changed {
			ps.since = now
		}
	}
	srv.mu.Unlock()
	if changed {
		srv.poke()
		srv.queue(event{addr.Unmap(), t})
	}
	return ok
}

func (srv *Server) queue(evs ...event) {
	if len(evs) == 0 {
		return
	}
	srv.eventsMu.Lock()
	srv.events = append(srv.events, evs...)
	srv.eventsMu.Unlock()
	select {
	case srv.evWake <- struct{}{}:
	default:
	}
}

// deliver calls notify with the queued transitions until ctx is done.
func (srv *Server) deliver(ctx context.Context) {
	for {
		srv.eventsMu.Lock()
		evs := srv.events
		srv.events = nil
		srv.eventsMu.Unlock()
		for _, e := range evs {
			srv.notify(e.addr, e.t)
		}
		select {
		case <-ctx.Done():
			return
		case <-srv.evWake:
		}
	}
}

// Status is the state of the session with addr; false if there is none.
func (srv *Server) Status(addr netip.Addr) (Status, bool) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	ps, ok := srv.sessions[addr.Unmap()]
	if !ok {
		return Status{}, false
	}
	return Status{State: ps.s.State(), Diag: ps.s.Diag(), Since: ps.since}, true
}

// Run listens, runs the sessions until ctx is done, then takes each
// session administratively down (the neighbour is told AdminDown, which is
// not a failure for its BGP session) and closes the sockets. It returns
// an error only if it cannot listen.
func (srv *Server) Run(ctx context.Context) error {
	if len(srv.sessions) == 0 {
		<-ctx.Done()
		return nil
	}
	var lc net.ListenConfig
	var conns []net.PacketConn
	v4, v6 := false, false
	for a := range srv.sessions {
		v4, v6 = v4 || a.Is4(), v6 || a.Is6()
	}
	closeAll := func() {
		for _, c := range conns {
			c.Close()
		}
	}
	if v4 {
		c, err := lc.ListenPacket(ctx, "udp4", fmt.Sprintf("0.0.0.0:%d", srv.listenPort))
		if err != nil {
			return fmt.Errorf("bfd: listen on udp4 port %d: %w", srv.listenPort, err)
		}
		conns = append(conns, c)
	}
	if v6 {
		c, err := lc.ListenPacket(ctx, "udp6", fmt.Sprintf("[::]:%d", srv.listenPort))
		if err != nil {
			closeAll()
			return fmt.Errorf("bfd: listen on udp6 port %d: %w", srv.listenPort, err)
		}
		conns = append(conns, c)
	}
	var wg sync.WaitGroup
	for _, c := range conns {
		var read func([]byte) (int, int, net.Addr, error)
		if c.LocalAddr().(*net.UDPAddr).IP.To4() != nil {
			pc := ipv4.NewPacketConn(c)
			if err := pc.SetControlMessage(ipv4.FlagTTL, true); err != nil {
				closeAll()
				return fmt.Errorf("bfd: ask for the TTL of received packets: %w", err)
			}
			read = func(b []byte) (int, int, net.Addr, error) {
				n, cm, src, err := pc.ReadFrom(b)
				ttl := -1
				if cm != nil {
					ttl = cm.TTL
				}
				return n, ttl, src, err
			}
		} else {
			pc := ipv6.NewPacketConn(c)
			if err := pc.SetControlMessage(ipv6.FlagHopLimit, true); err != nil {
				closeAll()
				return fmt.Errorf("bfd: ask for the hop limit of received packets: %w", err)
			}
			read = func(b []byte) (int, int, net.Addr, error) {
				n, cm, src, err := pc.ReadFrom(b)
				hl := -1
				if cm != nil {
					hl = cm.HopLimit
				}
				return n, hl, src, err
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			srv.readLoop(read)
		}()
	}
	srv.log.Info("bfd started", "port", srv.listenPort, "sessions", len(srv.sessions))
	wg.Add(1)
	go func() {
		defer wg.Done()
		srv.deliver(ctx)
	}()

	srv.loop(ctx)

	srv.stop()
	closeAll()
	wg.Wait()
	return nil
}

func (srv *Server) readLoop(read func([]byte) (int, int, net.Addr, error)) {
	buf := make([]byte, 1500)
	for {
		n, ttl, src, err := read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			srv.log.Debug("bfd: read", "err", err)
			continue
		}
		ua, ok := src.(*net.UDPAddr)
		if !ok {
			continue
		}
		addr, _ := netip.AddrFromSlice(ua.IP)
		addr = addr.Unmap()
		if addr.Is6() && addr.IsLinkLocalUnicast() {
			addr = addr.WithZone(ua.Zone)
		}
		srv.receive(time.Now(), addr, ttl, buf[:n])
	}
}

// receive handles one packet from addr: the session it selects (by Your
// Discriminator, else by source address) takes it.
func (srv *Server) receive(now time.Time, addr netip.Addr, ttl int, b []byte) {
	if ttl != 255 {
		srv.log.Debug("bfd: packet dropped: TTL is not 255 (RFC 5881 GTSM)", "from", addr, "ttl", ttl)
		return
	}
	p, err := Parse(b)
	if err != nil {
		srv.log.Debug("bfd: packet dropped", "from", addr, "err", err)
		return
	}
	srv.mu.Lock()
	ps := srv.sessions[addr]
	if p.YourDiscriminator != 0 {
		if byDisc := srv.byLocal[p.YourDiscriminator]; byDisc != ps {
			ps = nil
		}
	}
	if ps == nil {
		srv.mu.Unlock()
		srv.log.Debug("bfd: packet for no session", "from", addr, "your_discriminator", p.YourDiscriminator)
		return
	}
	if demand(b) && ps.s.State() != Up {
		srv.log.Debug("bfd: the neighbour asks for demand mode, which is not supported; sending periodically", "peer", addr)
	}
	t, changed, final, _ := ps.s.Receive(now, p)
	if final {
		srv.sendLocked(ps, ps.s.Packet(true))
	}
	if changed {
		ps.since = now
		if ps.s.NextTx().Equal(now) && ps.s.Due(now) {
			srv.sendLocked(ps, ps.s.Packet(false))
		}
	}
	srv.mu.Unlock()
	srv.poke()
	if changed {
		srv.queue(event{addr, t})
	}
}

func (srv *Server) poke() {
	select {
	case srv.wake <- struct{}{}:
	default:
	}
}

// loop sends the periodic packets and runs the detection timers.
func (srv *Server) loop(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-srv.wake:
		}
		now := time.Now()
		var events []event
		next := now.Add(time.Second) // retry a socket that would not open
		srv.mu.Lock()
		for addr, ps := range srv.sessions {
			if t, ok := ps.s.Expire(now); ok {
				ps.since = now
				events = append(events, event{addr, t})
			}
			if ps.s.Due(now) {
				srv.sendLocked(ps, ps.s.Packet(false))
			}
			for _, at := range []time.Time{ps.s.NextTx(), ps.s.Deadline()} {
				if !at.IsZero() && at.Before(next) {
					next = at
				}
			}
		}
		srv.mu.Unlock()
		srv.queue(events...)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(max(time.Until(next), 0))
	}
}

// stop sends AdminDown on every session (three times, so one lost packet
// does not leave the neighbour to time out) and closes the senders.
func (srv *Server) stop() {
	now := time.Now()
	srv.mu.Lock()
	defer srv.mu.Unlock()
	for _, ps := range srv.sessions {
		ps.s.SetAdminDown(now, true)
	}
	for i := 0; i < 3; i++ {
		for _, ps := range srv.sessions {
			if ps.conn != nil {
				srv.sendLocked(ps, ps.s.Packet(false))
			}
		}
		if i < 2 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	for _, ps := range srv.sessions {
		if ps.conn != nil {
			ps.conn.Close()
			ps.conn = nil
		}
	}
}

// sendLocked sends p on the session's socket, opening it first if needed.
func (srv *Server) sendLocked(ps *peerSession, p Packet) {
	if ps.conn == nil {
		c, err := srv.dial(ps.peer)
		if err != nil {
			if msg := err.Error(); msg != ps.connErr {
				ps.connErr = msg
				srv.log.Warn("bfd: cannot open the socket to the neighbour (retrying every second)", "peer", ps.peer.Address, "err", err)
			}
			return
		}
		ps.conn, ps.connErr = c, ""
	}
	b, err := p.MarshalBinary()
	if err != nil {
		srv.log.Error("bfd: encode", "peer", ps.peer.Address, "err", err)
		return
	}
	if _, err := ps.conn.Write(b); err != nil {
		// No route, a link down: the detection time is what tells.
		srv.log.Debug("bfd: send", "peer", ps.peer.Address, "err", err)
	}
}

// dial opens a session's sender: a UDP socket from a free port in
// 49152-65535 (RFC 5881 §4) to the neighbour's port 3784, TTL 255 and
// traffic class CS6, as routers send their control traffic.
func (srv *Server) dial(p Peer) (*net.UDPConn, error) {
	network := "udp4"
	if p.Address.Is6() {
		network = "udp6"
	}
	raddr := net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.Address, uint16(srv.peerPort)))
	var lastErr error
	for try := 0; try < 16; try++ {
		port := 49152 + rand.IntN(65536-49152)
		laddr := &net.UDPAddr{Port: port}
		if p.Local.IsValid() {
			laddr.IP = p.Local.AsSlice()
		}
		c, err := net.DialUDP(network, laddr, raddr)
		if err != nil {
			lastErr = err
			if errors.Is(err, syscall.EADDRINUSE) {
				continue
			}
			return nil, err
		}
		if p.Address.Is4() {
			pc := ipv4.NewConn(c)
			err = errors.Join(pc.SetTTL(255), pc.SetTOS(0xc0))
		} else {
			pc := ipv6.NewConn(c)
			err = errors.Join(pc.SetHopLimit(255), pc.SetTrafficClass(0xc0))
		}
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("set TTL 255: %w", err)
		}
		return c, nil
	}
	return nil, lastErr
}
