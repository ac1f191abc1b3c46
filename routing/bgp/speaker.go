// Package bgp is the embedded BGP speaker of a director (GoBGP v4): it
// announces VIP/32 and VIP/128 with next hop self to the upstream switches,
// with BFD for fast failure detection, and learns nothing.
package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/routing"
	"github.com/anycastd/anycastd/routing/bgp/bfd"
	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/config/oc"
	gobgp "github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
)

var startMu sync.Mutex

// Speaker is a routing.Announcer over an embedded GoBGP server. Safe for
// concurrent use.
type Speaker struct {
	cfg configs.BGP
	log *slog.Logger

	mu    sync.Mutex
	srv   *server.BgpServer // nil until Run has started it
	want  map[netip.Prefix]routing.Announcement
	have  map[netip.Prefix]routing.Announcement
	peers map[netip.Addr]*routing.Peer
	// bfd runs the sessions of the neighbours with BFD (anycastd's own,
	// not GoBGP's: see package bfd); nil without any.
	bfd *bfd.Server
	// bfdDown holds the BFD failures not yet acted on, by neighbour
	// (when, and whether to confirm first); bfdKick tells Run of one.
	bfdDown map[netip.Addr]bfdFailure
	bfdKick chan struct{}
}

// bfdFailure is a BFD session's failure waiting for Run.
type bfdFailure struct {
	at time.Time
	// confirm: our own detection time expired, so the BGP session is
	// taken down only if the neighbour's BGP messages stopped too (see
	// confirmFailure).
	confirm bool
}

var _ routing.Announcer = (*Speaker)(nil)

// New returns a speaker for cfg (validated by configs). Nothing runs
// before Run.
func New(cfg configs.BGP, log *slog.Logger) *Speaker {
	s := &Speaker{cfg: cfg, log: log, want: map[netip.Prefix]routing.Announcement{},
		have: map[netip.Prefix]routing.Announcement{}, peers: map[netip.Addr]*routing.Peer{},
		bfdDown: map[netip.Addr]bfdFailure{}, bfdKick: make(chan struct{}, 1)}
	var bfdPeers []bfd.Peer
	for _, n := range cfg.Neighbors {
		s.peers[n.Address] = &routing.Peer{Address: n.Address, ASN: n.ASN, State: "idle"}
		if n.BFD.Enabled {
			bfdPeers = append(bfdPeers, bfd.Peer{Address: n.Address, Local: n.LocalAddress, Config: bfd.Config{
				MinTx: n.BFD.MinTx, MinRx: n.BFD.MinRx, Multiplier: uint8(n.BFD.Multiplier)}})
		}
	}
	if len(bfdPeers) > 0 {
		s.bfd = bfd.NewServer(log.With("component", "bfd"), bfdPeers, s.onBFD)
	}
	return s
}

// Run starts the BGP server and its sessions, announces what Set asked
// for, and on ctx's end withdraws everything, waits for the withdrawals to
// be sent, and stops the server.
func (s *Speaker) Run(ctx context.Context) error {
	// BFD runs beside BGP and stops after it (its AdminDown on the way
	// out is not a failure to the router: RFC 5882 §3.2).
	bfdCtx, stopBFD := context.WithCancel(context.Background())
	bfdDone := make(chan error, 1)
	if s.bfd != nil {
		go func() { bfdDone <- s.bfd.Run(bfdCtx) }()
	}
	defer func() {
		stopBFD()
		if s.bfd != nil {
			<-bfdDone
		}
	}()
	lvl := &slog.LevelVar{}
	lvl.Set(slog.LevelWarn) // GoBGP logs every FSM step at Info
	srv := server.NewBgpServer(server.LoggerOption(s.log.With("component", "gobgp"), lvl))
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve()
	}()
	// Stop stops the BGP part (StopBgp), BFD and the API server; calling
	// StopBgp before it made it log "BGP server is not running" at Error
	// on every stop. It waits for Serve's loop to end too, both within
	// 5 s: a GoBGP that hangs in its stop is left behind (logged) rather
	// than holding the daemon's exit, which must withdraw and drain.
	stop := func() {
		done := make(chan struct{})
		go func() {
			srv.Stop()
			<-served
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			s.log.Warn("the BGP server did not stop within 5s; leaving it")
		}
	}

	// GoBGP v4.8.0's StartBgp writes package-level route selection
	// settings; two speakers in one process (tests, never the daemon)
	// must not start at the same time.
	startMu.Lock()
	err := srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn:        s.cfg.ASN,
		RouterId:   s.cfg.RouterID.String(),
		ListenPort: int32(s.cfg.ListenPort),
		// Only the families a director announces: without a list GoBGP
		// builds its two RIBs for every family it knows (2,048-shard
		// tables each, ~9 MB of heap for tables that stay empty).
		Families: []uint32{
			uint32(oc.AfiSafiTypeToIntMap[oc.AFI_SAFI_TYPE_IPV4_UNICAST]),
			uint32(oc.AfiSafiTypeToIntMap[oc.AFI_SAFI_TYPE_IPV6_UNICAST]),
		},
	}})
	startMu.Unlock()
	if err != nil {
		// Nothing started to stop: Stop's own StopBgp would log that
		// at Error, under the real error returned here.
		lvl.Set(slog.LevelError + 1)
		srv.Stop()
		return fmt.Errorf("start BGP (AS %d, router id %s, port %d): %w", s.cfg.ASN, s.cfg.RouterID, s.cfg.ListenPort, err)
	}
	// A director must not learn routes: reject everything on import but
	// our own. GoBGP runs locally originated paths through the global
	// import policy too, so a plain default-reject would withdraw the
	// VIPs themselves.
	if err := srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: &api.Policy{
		Name: "anycastd-import",
		Statements: []*api.Statement{{
			Name:       "accept-local",
			Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL},
			Actions:    &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_ACCEPT},
		}},
	}}); err != nil {
		stop()
		return fmt.Errorf("define import policy: %w", err)
	}
	if err := srv.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
		Name:          "global",
		Direction:     api.PolicyDirection_POLICY_DIRECTION_IMPORT,
		Policies:      []*api.Policy{{Name: "anycastd-import"}},
		DefaultAction: api.RouteAction_ROUTE_ACTION_REJECT,
	}}); err != nil {
		stop()
		return fmt.Errorf("set import policy: %w", err)
	}
	if err := srv.WatchEvent(ctx, server.WatchEventMessageCallbacks{OnPeerUpdate: s.onPeer}, server.WatchPeer()); err != nil {
		stop()
		return fmt.Errorf("watch peers: %w", err)
	}
	for _, n := range s.cfg.Neighbors {
		if err := srv.AddPeer(ctx, &api.AddPeerRequest{Peer: peerConfig(n)}); err != nil {
			stop()
			return fmt.Errorf("add neighbour %s AS %d: %w", n.Address, n.ASN, err)
		}
	}
	s.mu.Lock()
	s.srv = srv
	err = s.reconcileLocked()
	s.mu.Unlock()
	if err != nil {
		s.log.Error("announce", "err", err)
	}
	s.log.Info("bgp speaker started", "asn", s.cfg.ASN, "router_id", s.cfg.RouterID, "neighbors", len(s.cfg.Neighbors))

	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	started := time.Now()
	// BFD failures: a neighbour's signalled failure is acted on at once;
	// our own expiry once confirmFailure has seen the neighbour's BGP
	// messages over one keepalive window (confirm holds them meanwhile).
	confirm := map[netip.Addr]pendingExpiry{}
	confirmTimer := time.NewTimer(time.Hour)
	confirmTimer.Stop()
	defer confirmTimer.Stop()
	for {
		select {
		case <-ctx.Done():
			s.shutdown(srv)
			stop()
			return nil
		case <-s.bfdKick:
			s.takeBFDFailures(ctx, srv, confirm)
			resetConfirmTimer(confirmTimer, confirm)
		case <-confirmTimer.C:
			s.confirmExpiries(ctx, srv, confirm, time.Now())
			resetConfirmTimer(confirmTimer, confirm)
		case <-tick.C:
			s.warnStuckPeers(time.Since(started))
		case err := <-bfdDone:
			// Only a socket that cannot be opened ends it early (port
			// 3784 taken, e.g. by a bfdd on this host).
			bfdDone <- nil
			s.shutdown(srv)
			stop()
			return err
		}
	}
}

// shutdown withdraws everything and waits (up to 3 s) until the
// established sessions have sent it.
func (s *Speaker) shutdown(srv *server.BgpServer) {
	s.mu.Lock()
	s.want = map[netip.Prefix]routing.Announcement{}
	n := len(s.have)
	if err := s.reconcileLocked(); err != nil {
		s.log.Error("withdraw on shutdown", "err", err)
	}
	s.srv = nil
	s.mu.Unlock()
	if n == 0 {
		return
	}
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		pending := false
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
			if p.State != nil && p.State.SessionState == api.PeerState_SESSION_STATE_ESTABLISHED &&
				p.State.Queues != nil && p.State.Queues.Output > 0 {
				pending = true
			}
		})
		cancel()
		if !pending {
			// The queue is empty once the message is handed to the
			// socket; give the kernel a moment to put it on the wire.
			time.Sleep(100 * time.Millisecond)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.log.Info("bgp routes withdrawn on shutdown", "prefixes", n)
}

// Set implements routing.Announcer.
func (s *Speaker) Set(ctx context.Context, anns []routing.Announcement) error {
	want := make(map[netip.Prefix]routing.Announcement, len(anns))
	for _, a := range anns {
		p := a.Prefix.Masked()
		if !p.IsValid() {
			return fmt.Errorf("invalid prefix %v", a.Prefix)
		}
		if _, err := pathFor(a, s.cfg); err != nil {
			return fmt.Errorf("announce %s: %w", p, err)
		}
		a.Prefix = p
		want[p] = a
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.want = want
	return s.reconcileLocked()
}

// reconcileLocked makes the server's local paths equal s.want.
func (s *Speaker) reconcileLocked() error {
	if s.srv == nil {
		return nil
	}
	var errs []error
	for p, a := range s.want {
		if h, ok := s.have[p]; ok && h.Equal(a) {
			continue
		}
		path, err := pathFor(a, s.cfg)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// Adding a path for a prefix we already announce replaces it.
		if _, err := s.srv.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{path}}); err != nil {
			errs = append(errs, fmt.Errorf("announce %s: %w", p, err))
			continue
		}
		verb := "announced"
		if _, ok := s.have[p]; ok {
			verb = "updated"
		}
		s.have[p] = a
		s.log.Info("route "+verb, "prefix", p, "graceful_shutdown", a.GracefulShutdown)
	}
	for p, h := range s.have {
		if _, ok := s.want[p]; ok {
			continue
		}
		path, err := pathFor(h, s.cfg)
		if err == nil {
			err = s.srv.DeletePath(apiutil.DeletePathRequest{Paths: []*apiutil.Path{path}})
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("withdraw %s: %w", p, err))
			continue
		}
		delete(s.have, p)
		s.log.Info("route withdrawn", "prefix", p)
	}
	return errors.Join(errs...)
}

// Status implements routing.Announcer.
// Changed implements routing.Announcer: the speaker announces what it is
// Set, nothing else.
func (s *Speaker) Changed() <-chan struct{} { return nil }

func (s *Speaker) Status() routing.Status {
	s.mu.Lock()
	st := routing.Status{Mode: configs.ModeBGP}
	for _, a := range s.have {
		st.Announced = append(st.Announced, a)
	}
	peers := map[netip.Addr]routing.Peer{}
	for a, p := range s.peers {
		peers[a] = *p
	}
	s.mu.Unlock()
	if s.bfd != nil {
		for a, p := range peers {
			if b, ok := s.bfd.Status(a); ok {
				p.BFD = bfd.StateName(b.State)
				peers[a] = p
			}
		}
	}
	for _, n := range s.cfg.Neighbors {
		st.Peers = append(st.Peers, peers[n.Address])
	}
	slices.SortFunc(st.Announced, func(a, b routing.Announcement) int { return a.Prefix.Addr().Compare(b.Prefix.Addr()) })
	return st
}

func (s *Speaker) onPeer(ev *apiutil.WatchEventMessage_PeerEvent, t time.Time) {
	if ev.Type != apiutil.PEER_EVENT_STATE {
		return
	}
	addr := ev.Peer.State.NeighborAddress
	if !addr.IsValid() {
		addr = ev.Peer.Conf.NeighborAddress
	}
	state := fsmState(ev.Peer.State.SessionState)
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.peers[addr]
	if !ok || p.State == state {
		return
	}
	reason := ""
	if msg := ev.Peer.State.DisconnectMessage; msg != "" {
		reason = msg
	} else if r := ev.Peer.State.DisconnectReason; r != api.PeerState_DISCONNECT_REASON_UNSPECIFIED {
		reason = strings.ToLower(strings.TrimPrefix(r.String(), "DISCONNECT_REASON_"))
	}
	if p.State == "established" {
		p.Flaps++
	}
	// BFD runs only while the BGP session is established, as FRR runs its
	// own: a BFD session that is up before the BGP session establishes is
	// replaced by FRR at the establishment (with a new source address), and
	// FRR's bgpd takes that replacement's Down for a failure and resets the
	// new session (Cease/BFD Down): two establishments per router restart.
	if s.bfd != nil && (state == "established") != (p.State == "established") {
		s.bfd.Enable(addr, state == "established")
	}
	p.State, p.Since = state, t
	p.Reason = reason
	s.log.Info("bgp peer state changed", "peer", addr, "asn", p.ASN, "state", state, "reason", p.Reason)
}

// onBFD takes a BFD transition of the session with addr: one that is a
// failure of the path (bfd.Transition.Failure: the router detected a
// failure, or our detection time expired and the neighbour's BGP messages
// stopped too, see confirmFailure) takes the BGP session down, so that it
// is re-established as soon as the path is back rather than after the hold
// time. An AdminDown, or a Down the router sends while it replaces its own
// session, leaves the BGP session alone. Run carries out what it decides.
func (s *Speaker) onBFD(addr netip.Addr, t bfd.Transition) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.peers[addr]
	if !ok {
		return
	}
	args := []any{"peer", addr, "state", bfd.StateName(t.To), "cause", t.Cause.String()}
	if t.Cause == bfd.CauseRemoteDown || t.Cause == bfd.CauseRemoteAdminDown {
		args = append(args, "neighbour_diag", t.RemoteDiag.String())
	}
	if t.From == bfd.Up {
		args = append(args, "was_up", t.UpFor.Round(time.Millisecond))
	}
	if t.From != bfd.Up || t.To != bfd.Down {
		s.log.Info("bfd session state changed", args...)
		return
	}
	if !t.Failure() {
		s.log.Info("bfd session down, not a path failure: the bgp session stays up", args...)
		return
	}
	if p.State != "established" || s.srv == nil {
		s.log.Warn("bfd session down", args...)
		return
	}
	if t.Cause == bfd.CauseExpired {
		s.log.Warn("bfd session down: taking the bgp session down unless the neighbour's bgp messages still arrive", args...)
	} else {
		s.log.Warn("bfd session down: taking the bgp session down", args...)
	}
	s.bfdDown[addr] = bfdFailure{at: time.Now(), confirm: t.Cause == bfd.CauseExpired}
	select {
	case s.bfdKick <- struct{}{}:
	default:
	}
}

// pendingExpiry is a BFD expiry under confirmation: the neighbour's BGP
// messages received when it expired, and until when to watch.
type pendingExpiry struct {
	rx       uint64
	deadline time.Time
	// session is when the BGP session then established came up: one
	// established since is a new session, judged by its own BFD.
	session time.Time
}

// confirmFailure decides an expiry of our BFD detection time once its
// keepalive window has passed: the path failed if the BGP session is no
// longer established or no BGP message of the neighbour's arrived in the
// window. Messages still arriving mean the neighbour's BFD went silent
// while the path works (BIRD 2.0 stops sending, without AdminDown, when
// its BFD is disabled or "bfd off" is configured), or only BFD's packets
// are filtered: taking every director's session down for that would take
// the VIP off the router for a reconvergence on every director at once.
func confirmFailure(rxAtExpiry, rxNow uint64, established bool) bool {
	return !established || rxNow <= rxAtExpiry
}

// keepaliveWindow is how long an expiry is watched for BGP messages: the
// keepalive interval RFC 4271 suggests for the negotiated hold time (a
// third of it), and a quarter of a second for timers and scheduling. A
// neighbour that sends its keepalives less often is judged failed, as
// before this window existed; a shorter window delays less the
// re-establishment after a real failure.
func keepaliveWindow(negotiatedHold time.Duration) time.Duration {
	return negotiatedHold/3 + 250*time.Millisecond
}

// takeBFDFailures takes the failures onBFD noted: a signalled one takes
// the session down now, an expiry starts its confirmation.
func (s *Speaker) takeBFDFailures(ctx context.Context, srv *server.BgpServer, confirm map[netip.Addr]pendingExpiry) {
	s.mu.Lock()
	down := s.bfdDown
	s.bfdDown = map[netip.Addr]bfdFailure{}
	s.mu.Unlock()
	for addr, f := range down {
		if !f.confirm {
			delete(confirm, addr)
			s.recycle(ctx, srv, addr)
			continue
		}
		if _, ok := confirm[addr]; ok {
			continue // already watched since an earlier expiry
		}
		rx, hold, established := peerCounters(ctx, srv, addr)
		if !established {
			continue // BGP is down already: nothing to take down
		}
		confirm[addr] = pendingExpiry{rx: rx, deadline: f.at.Add(keepaliveWindow(hold)), session: s.sessionSince(addr)}
	}
}

// confirmExpiries decides the expiries whose window has passed.
func (s *Speaker) confirmExpiries(ctx context.Context, srv *server.BgpServer, confirm map[netip.Addr]pendingExpiry, now time.Time) {
	for addr, e := range confirm {
		if now.Before(e.deadline) {
			continue
		}
		delete(confirm, addr)
		rx, _, established := peerCounters(ctx, srv, addr)
		if !established || !s.sessionSince(addr).Equal(e.session) {
			continue // taken down meanwhile (and maybe up again: a new session)
		}
		if !confirmFailure(e.rx, rx, established) {
			s.log.Warn("bfd detection time expired but the neighbour's bgp messages still arrive: the bgp session stays up "+
				"(the neighbour's BFD stopped without AdminDown, or BFD packets are filtered)",
				"peer", addr, "bgp_messages_in_window", rx-e.rx)
			continue
		}
		s.recycle(ctx, srv, addr)
	}
}

// resetConfirmTimer sets t to the earliest deadline in confirm.
func resetConfirmTimer(t *time.Timer, confirm map[netip.Addr]pendingExpiry) {
	t.Stop()
	var next time.Time
	for _, e := range confirm {
		if next.IsZero() || e.deadline.Before(next) {
			next = e.deadline
		}
	}
	if !next.IsZero() {
		t.Reset(max(time.Until(next), 0))
	}
}

// peerCounters reads a neighbour's received BGP messages, negotiated hold
// time and whether its session is established.
func peerCounters(ctx context.Context, srv *server.BgpServer, addr netip.Addr) (rx uint64, hold time.Duration, established bool) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	srv.ListPeer(ctx, &api.ListPeerRequest{Address: addr.String()}, func(p *api.Peer) {
		if p.State == nil {
			return
		}
		established = p.State.SessionState == api.PeerState_SESSION_STATE_ESTABLISHED
		if m := p.State.Messages; m != nil && m.Received != nil {
			rx = m.Received.Total
		}
		if p.Timers != nil && p.Timers.State != nil {
			hold = time.Duration(p.Timers.State.NegotiatedHoldTime) * time.Second
		}
	})
	return rx, hold, established
}

// sessionSince is when addr's BGP session last changed state (for an
// established one: when it came up).
func (s *Speaker) sessionSince(addr netip.Addr) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.peers[addr]; p != nil {
		return p.Since
	}
	return time.Time{}
}

// recycle takes addr's BGP session down after a BFD failure, counting it.
func (s *Speaker) recycle(ctx context.Context, srv *server.BgpServer, addr netip.Addr) {
	s.mu.Lock()
	n, ok := s.neighbor(addr)
	p := s.peers[addr]
	if ok && p != nil {
		p.BFDFlaps++
	}
	s.mu.Unlock()
	if ok {
		s.recyclePeer(srv, n)
	}
}

func (s *Speaker) neighbor(addr netip.Addr) (configs.Neighbor, bool) {
	for _, n := range s.cfg.Neighbors {
		if n.Address == addr {
			return n, true
		}
	}
	return configs.Neighbor{}, false
}

// recyclePeer takes a neighbour's BGP session down after BFD found the
// path failed, by deleting and re-adding the peer: its Cease goes out if the
// path lets it, and the new peer connects as soon as it may. (GoBGP's
// ResetPeer, asked while the session is already down, queues its Cease and
// sends it on the next establishment, which resets that session at once.)
func (s *Speaker) recyclePeer(srv *server.BgpServer, n configs.Neighbor) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: n.Address.String()}); err != nil {
		s.log.Warn("bgp: take the session down after bfd: delete peer", "peer", n.Address, "err", err)
		return
	}
	if err := srv.AddPeer(ctx, &api.AddPeerRequest{Peer: peerConfig(n)}); err != nil {
		s.log.Error("bgp: take the session down after bfd: add peer", "peer", n.Address, "err", err)
		return
	}
	s.log.Info("bgp session taken down after bfd; peer re-created", "peer", n.Address)
}

// warnStuckPeers says, at Warn, which sessions are still not established
// and what usually causes it: the operator looking at a silent session at
// 3 a.m. needs the hint more than the FSM's steps.
func (s *Speaker) warnStuckPeers(up time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.cfg.Neighbors {
		p := s.peers[n.Address]
		if p.Established() {
			continue
		}
		since := up
		if !p.Since.IsZero() {
			since = time.Since(p.Since)
		}
		if since < 3*n.ConnectRetry && since < 15*time.Second {
			continue
		}
		hint := "check the neighbour's address, AS number and that it allows our address"
		if n.Password != "" {
			hint = "a TCP MD5 password is set: if the neighbour's differs (or it has none), the kernel drops every segment silently and the session stays down exactly like this"
		}
		s.log.Warn("bgp session not established", "peer", n.Address, "asn", n.ASN, "state", p.State, "for", since.Round(time.Second), "hint", hint)
	}
}

func peerConfig(n configs.Neighbor) *api.Peer {
	p := &api.Peer{
		Conf: &api.PeerConf{NeighborAddress: n.Address.String(), PeerAsn: n.ASN, AuthPassword: n.Password},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime:          uint64(n.HoldTime / time.Second),
			KeepaliveInterval: uint64(n.Keepalive / time.Second),
			ConnectRetry:      uint64(n.ConnectRetry / time.Second),
			// GoBGP waits 30 s after a reset (a BFD failure, a
			// notification) before it tries again; a director whose link
			// came back should be back as soon as it may connect.
			IdleHoldTimeAfterReset: uint64(n.ConnectRetry / time.Second),
		}},
	}
	if n.LocalAddress.IsValid() {
		p.Transport = &api.Transport{LocalAddress: n.LocalAddress.String()}
	}
	if n.Multihop > 0 {
		p.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: uint32(n.Multihop)}
	}
	for _, f := range n.Families {
		fam := &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
		if f == "ipv6" {
			fam.Afi = api.Family_AFI_IP6
		}
		p.AfiSafis = append(p.AfiSafis, &api.AfiSafi{Config: &api.AfiSafiConfig{Family: fam, Enabled: true}})
	}
	return p
}

// pathFor builds the BGP path of an announcement: next hop self unless
// configured, communities (plus GRACEFUL_SHUTDOWN when asked), MED.
func pathFor(a routing.Announcement, cfg configs.BGP) (*apiutil.Path, error) {
	nlri, err := gobgp.NewIPAddrPrefix(a.Prefix.Masked())
	if err != nil {
		return nil, err
	}
	attrs := []gobgp.PathAttributeInterface{gobgp.NewPathAttributeOrigin(gobgp.BGP_ORIGIN_ATTR_TYPE_IGP)}
	family := gobgp.RF_IPv4_UC
	if a.Prefix.Addr().Is4() {
		nh := cfg.NextHopIPv4
		if !nh.IsValid() {
			nh = netip.IPv4Unspecified() // next hop self
		}
		nha, err := gobgp.NewPathAttributeNextHop(nh)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, nha)
	} else {
		family = gobgp.RF_IPv6_UC
		nh := cfg.NextHopIPv6
		if !nh.IsValid() {
			nh = netip.IPv6Unspecified()
		}
		mp, err := gobgp.NewPathAttributeMpReachNLRI(family, []gobgp.PathNLRI{{NLRI: nlri}}, nh)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, mp)
	}
	comms := a.Communities
	if a.GracefulShutdown {
		comms = append(slices.Clone(comms), routing.GracefulShutdown)
	}
	if len(comms) > 0 {
		var vals []uint32
		for _, c := range comms {
			v, err := parseCommunity(c)
			if err != nil {
				return nil, err
			}
			vals = append(vals, v)
		}
		attrs = append(attrs, gobgp.NewPathAttributeCommunities(vals))
	}
	if len(a.LargeCommunities) > 0 {
		var vals []*gobgp.LargeCommunity
		for _, c := range a.LargeCommunities {
			lc, err := gobgp.ParseLargeCommunity(c)
			if err != nil {
				return nil, fmt.Errorf("large community %q: %w", c, err)
			}
			vals = append(vals, lc)
		}
		attrs = append(attrs, gobgp.NewPathAttributeLargeCommunities(vals))
	}
	if a.MED > 0 {
		attrs = append(attrs, gobgp.NewPathAttributeMultiExitDisc(a.MED))
	}
	return &apiutil.Path{Family: family, Nlri: nlri, Attrs: attrs}, nil
}

func parseCommunity(s string) (uint32, error) {
	hi, lo, ok := strings.Cut(s, ":")
	a, err1 := strconv.ParseUint(hi, 10, 16)
	b, err2 := strconv.ParseUint(lo, 10, 16)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("community %q is not ASN:value", s)
	}
	return uint32(a)<<16 | uint32(b), nil
}

func fsmState(s gobgp.FSMState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "BGP_FSM_"))
}
