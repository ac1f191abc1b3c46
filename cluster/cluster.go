package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/internal/atomicfile"
	"github.com/hashicorp/memberlist"
)

// Options configure a Cluster.
type Options struct {
	Name string
	// Bind is the gossip address (TCP and UDP) and Port its port; port 0
	// picks a free one (tests).
	Bind netip.Addr
	Port int
	// Advertise is the address others reach this member at; Bind when
	// unset (and Bind is not unspecified).
	Advertise netip.Addr
	// Seeds are members to join: "host" or "host:port".
	Seeds []string
	// Keys are the AES keys (16, 24 or 32 bytes); the first encrypts.
	// None: an insecure cluster (the caller checked that it is allowed).
	Keys [][]byte
	// StateDir keeps the last applied config document.
	StateDir string
	Log      *slog.Logger
	// Timing tunes memberlist; zero: LANTiming.
	Timing Timing
	// Now is the clock (tests); nil: time.Now.
	Now func() time.Time
	// streams bounds the gossip port's TCP streams (tests); zero: the
	// daemon's limits.
	streams streamLimits
	// saveDocument writes the document (tests: a slow disk); nil:
	// SaveDocument.
	saveDocument func(dir string, d *Document) error
}

// Timing is how fast the cluster notices things.
type Timing struct {
	// ProbeInterval and ProbeTimeout: each member probes one other member
	// per interval; a member that doesn't answer in time is suspected.
	ProbeInterval time.Duration
	ProbeTimeout  time.Duration
	// SuspicionMult times the probe interval (times log10 of the cluster
	// size, at least 1) is how long a suspect has to refute before it is
	// declared dead.
	SuspicionMult int
	// GossipInterval is how often queued messages go out.
	GossipInterval time.Duration
	// PushPull is the full state exchange with one random member:
	// anti-entropy for the config document after a partition.
	PushPull time.Duration
}

// LANTiming declares a failed member dead in 2-3.5 s on a LAN. Faster
// timings (250 ms probes with a 150 ms timeout, dead in about a second,
// the first default) declared busy members dead many times a minute in
// the soak lab, and the standby went in and out of the active set with
// each, announcing and withdrawing; a director busiest when traffic is
// (a flood on a VIP) would do the same. Gossip's speed only decides when
// a standby takes a failed director's slot: the routers stop sending to a
// dead director by BFD, without waiting for it.
var LANTiming = Timing{
	ProbeInterval:  500 * time.Millisecond,
	ProbeTimeout:   400 * time.Millisecond,
	SuspicionMult:  3,
	GossipInterval: 50 * time.Millisecond,
	PushPull:       5 * time.Second,
}

// Cluster is this director's membership in the gossip cluster: its view
// of the members, its own metadata, and the replicated config document.
// Safe for concurrent use.
type Cluster struct {
	opts  Options
	log   *slog.Logger
	queue *memberlist.TransmitLimitedQueue

	mu      sync.Mutex
	ml      *memberlist.Memberlist
	local   netip.AddrPort // our gossip address, read once at start
	aborted bool
	keyring *memberlist.Keyring
	meta    Meta
	members map[string]*Member
	doc     *Document
	clock   uint64 // highest version seen (Lamport clock)
	// rejected are documents already judged bad (logged once, not asked
	// for again): by version/hash when invalid, with the tag as well when
	// not authentic (a copy signed with another key may be). Only
	// verdicts go here, never an I/O failure; a key change empties it.
	rejected map[string]bool
	// asked is the newer document last asked for because a member's
	// metadata named it (version/short hash), and when: asked again only
	// after askAgain, not of every member that adopts it meanwhile (a
	// large document would come once per member).
	asked   string
	askedAt time.Time
	// saveMu orders the writes of the document and the member list,
	// which happen outside mu: memberlist's callbacks take mu, and a slow
	// disk must not stall them. Taken before peersMu and mu, never while
	// holding either.
	saveMu sync.Mutex
	// saved is the document last written to the state dir.
	saved *Document
	// saveKick wakes Run's saver: the document or the members changed
	// (peersDirty says which).
	saveKick   chan struct{}
	peersDirty atomic.Bool
	// saveErr is why the current document is not on disk yet (it is
	// applied all the same; Run retries the save).
	saveErr error
	// leaving are members that said they are leaving, and when.
	leaving map[string]time.Time
	// peersMu orders saves of the known members.
	peersMu sync.Mutex
	// closed: Run has returned; nothing is written any more.
	closed bool
	// state is this member's State; states are the others', by name.
	state  MemberState
	states map[string]MemberState

	changed chan struct{}
	ready   chan struct{}
	joined  chan struct{}

	// bg are the sends and joins started in the background (from
	// memberlist's callbacks, from SetMeta, from Run's reconnects): Run
	// waits for them before it returns; once bgClosed (under mu) none is
	// started. Each is bounded by memberlist's TCP timeout.
	bg       sync.WaitGroup
	bgClosed bool
	// metaKick asks Run's metadata publisher for an UpdateNode:
	// memberlist's UpdateNode is not safe to run twice at once (it reads
	// its own node record unlocked while another call rewrites it).
	metaKick chan struct{}
}

// Wire message types (the first byte of a user message).
const (
	msgNotice   = 'N' // {version, hash, author}: a newer document exists
	msgDocument = 'D' // a Document
	msgWant     = 'W' // {from}: send me your document
	msgState    = 'S' // stateMsg: a member's MemberState
	msgWantSt   = 'Q' // {from}: send me your State
	msgLeaving  = 'L' // {from}: I am leaving (memberlist tells a leave from a failure only in state it does not hand out)
)

type notice struct {
	Version uint64 `json:"v"`
	Hash    string `json:"h"`
	Author  string `json:"a"`
	From    string `json:"f"`
}

// New makes a Cluster and loads the last applied config document from the
// state dir (a document there that fails its checks is an error: it was
// written by this director, so something is badly wrong). It does not
// join yet; Run does.
func New(o Options) (*Cluster, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Timing == (Timing{}) {
		o.Timing = LANTiming
	}
	if o.saveDocument == nil {
		o.saveDocument = SaveDocument
	}
	c := &Cluster{opts: o, log: o.Log, members: map[string]*Member{}, rejected: map[string]bool{}, leaving: map[string]time.Time{}, states: map[string]MemberState{},
		changed: make(chan struct{}, 1), ready: make(chan struct{}), joined: make(chan struct{}), metaKick: make(chan struct{}, 1), saveKick: make(chan struct{}, 1)}
	c.queue = &memberlist.TransmitLimitedQueue{NumNodes: c.numMembers, RetransmitMult: 4}
	if len(o.Keys) > 0 {
		kr, err := memberlist.NewKeyring(o.Keys, o.Keys[0])
		if err != nil {
			return nil, fmt.Errorf("cluster keys: %w", err)
		}
		c.keyring = kr
	}
	if o.StateDir != "" {
		d, err := LoadDocument(o.StateDir, o.Keys)
		if errors.Is(err, ErrUnauthenticated) {
			// This director wrote it, into a directory only root can
			// write: a tag that fails means the keys changed while it
			// was down (a rotation), not a forgery. Refusing to start
			// would brick every director restarted after a rotation.
			// Serve it, and sign it with the key in use now.
			c.log.Warn("the saved cluster config is signed with a key no longer configured (keys rotated while this director was down?): serving it and re-signing it", "err", err)
			d, err = LoadDocument(o.StateDir, nil, withoutVerify)
		}
		if err != nil {
			return nil, fmt.Errorf("last applied cluster config: %w", err)
		}
		if d != nil {
			if err := c.checkRoomLocked(d); err != nil {
				return nil, fmt.Errorf("last applied cluster config: %w", err)
			}
			c.doc, c.clock, c.saved = d, d.Version, d
			c.log.Info("cluster config loaded from the state dir", "version", d.Version, "hash", d.Short(), "author", d.Author)
			if c.resignLocked() {
				c.persist()
			}
		}
	}
	return c, nil
}

// Run joins the cluster (retrying the seeds until one answers) and stays
// in it until ctx ends; then it leaves, telling the others, and returns.
func (c *Cluster) Run(ctx context.Context) error {
	conf := memberlist.DefaultLANConfig()
	conf.Name = c.opts.Name
	conf.BindAddr = c.opts.Bind.String()
	conf.BindPort = c.opts.Port
	conf.AdvertisePort = c.opts.Port
	if c.opts.Advertise.IsValid() {
		conf.AdvertiseAddr = c.opts.Advertise.String()
	}
	t := c.opts.Timing
	conf.ProbeInterval, conf.ProbeTimeout = t.ProbeInterval, t.ProbeTimeout
	conf.SuspicionMult, conf.SuspicionMaxTimeoutMult = t.SuspicionMult, 2
	conf.GossipInterval, conf.PushPullInterval = t.GossipInterval, t.PushPull
	conf.GossipToTheDeadTime = 5 * t.ProbeInterval * time.Duration(t.SuspicionMult)
	conf.TCPTimeout = 2 * time.Second
	conf.Keyring = c.keyring
	conf.Delegate = (*delegate)(c)
	conf.Events = (*events)(c)
	conf.Logger = log.New(&logWriter{log: c.log, rate: newRateLog(c.log.With("component", "memberlist"), 10*time.Second)}, "", 0)
	limits := c.opts.streams
	if limits == (streamLimits{}) {
		limits = defaultStreamLimits
	}
	tr, port, err := newBoundedTransport(c.opts.Bind.String(), c.opts.Port, limits, conf.Logger, newRateLog(c.log, 10*time.Second))
	if err != nil {
		return fmt.Errorf("gossip on %s:%d: %w", c.opts.Bind, c.opts.Port, err)
	}
	conf.Transport, conf.BindPort, conf.AdvertisePort = tr, port, port
	ml, err := memberlist.Create(conf)
	if err != nil {
		tr.Shutdown()
		return fmt.Errorf("gossip on %s:%d: %w", c.opts.Bind, c.opts.Port, err)
	}
	// memberlist hands out a pointer to its own node record, which it
	// rewrites on every UpdateNode: read it once, before SetMeta can.
	local := ml.LocalNode()
	a, _ := netip.AddrFromSlice(local.Addr)
	c.mu.Lock()
	c.ml = ml
	c.local = netip.AddrPortFrom(a.Unmap(), local.Port)
	c.mu.Unlock()
	pubStop, pubDone, saverDone := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(pubDone)
		c.publishMeta(ml, pubStop)
	}()
	go func() {
		defer close(saverDone)
		c.saver(pubStop)
	}()
	// On the way out: no new background work, the leave, then wait for
	// what is still running (sends on a shut-down memberlist fail fast;
	// one to a silent peer within the TCP timeout).
	defer func() {
		close(pubStop)
		<-pubDone
		<-saverDone
		c.bg.Wait()
	}()
	close(c.ready)
	c.log.Info("gossip started", "name", c.opts.Name, "addr", c.local, "encrypted", c.keyring != nil)
	if c.keyring == nil {
		c.log.Warn("cluster gossip is NOT encrypted or authenticated (cluster.insecure: true): anyone who reaches the gossip port can join and change the config")
	}

	// The seeds, and the members this director knew when it last ran
	// (serf's snapshot): a member that left is never called again by the
	// others, so after a restart it must find them itself, even when its
	// seeds are down or are only itself.
	seeds := slices.Clone(c.opts.Seeds)
	for _, a := range c.knownPeers() {
		if a != c.local.String() && !slices.Contains(seeds, a) {
			seeds = append(seeds, a)
		}
	}
	joined := len(seeds) == 0
	if joined {
		close(c.joined)
	}
	retry := time.NewTimer(0)
	defer retry.Stop()
	failures := 0
	var reconnecting inFlight
	for {
		select {
		case <-ctx.Done():
			c.mu.Lock()
			c.bgClosed = true
			c.mu.Unlock()
			c.leave(ml)
			c.persist() // what the saver had not written yet
			c.close()
			return nil
		case <-retry.C:
			c.retrySave()
			c.prune()
			if joined {
				// Like serf's reconnect: memberlist never calls a dead
				// member again, so a healed partition would stay split.
				// Try the dead ones (not those that left) now and then.
				retry.Reset(reconnectInterval)
				c.reconnectRound(&reconnecting, func(addr string) {
					if n, err := ml.Join([]string{addr}); n > 0 {
						c.log.Info("reconnected to a member thought dead", "addr", addr)
					} else if err != nil {
						c.log.Debug("reconnect", "addr", addr, "err", err)
					}
				})
				continue
			}
			n, err := c.joinAny(ml, seeds)
			if err == nil || n > 0 {
				joined = true
				close(c.joined)
				retry.Reset(reconnectInterval)
				c.log.Info("joined the cluster", "seeds_reached", n, "members", ml.NumMembers())
				continue
			}
			failures++
			// Alone is a valid state (the first director, or all seeds
			// down): keep serving and keep trying, quietly after a while.
			if failures == 1 || failures%30 == 0 {
				c.log.Warn("no seed answers; running alone until one does", "seeds", seeds, "err", err)
			}
			retry.Reset(2 * time.Second)
		}
	}
}

// joinAny joins through every seed at once and returns as soon as one
// answers (the others go on in the background), or when all have failed.
// memberlist's Join tries them one after another, each up to its TCP
// timeout: a director restarted while two seeds were unreachable (gossip
// partitioned, a director blackholed) waited 4 s before its first turn,
// serving the table its previous run left in the kernel (the soak lab).
func (c *Cluster) joinAny(ml *memberlist.Memberlist, seeds []string) (int, error) {
	type result struct {
		n   int
		err error
	}
	res := make(chan result, len(seeds))
	for _, s := range seeds {
		if !c.background(func() { n, err := ml.Join([]string{s}); res <- result{n, err} }) {
			res <- result{err: errors.New("stopping")}
		}
	}
	var errs []error
	for range seeds {
		r := <-res
		if r.n > 0 {
			return r.n, nil
		}
		errs = append(errs, r.err)
	}
	return 0, errors.Join(errs...)
}

// reconnectRound calls every dead member again (join), each in the
// background, without waiting for the last round: behind a drop (not a
// reject) an attempt waits for the TCP timeout, and rounds that waited
// for every attempt found a healed partition or blackhole up to three
// seconds late (the soak lab). An address has at most maxReconnects
// attempts under way (the timeout over the interval, plus one).
func (c *Cluster) reconnectRound(f *inFlight, join func(addr string)) {
	for _, addr := range c.deadAddrs() {
		if !f.start(addr) {
			continue
		}
		if !c.background(func() { defer f.done(addr); join(addr) }) {
			f.done(addr)
		}
	}
}

// inFlight counts the attempts under way per address.
type inFlight struct {
	mu sync.Mutex
	n  map[string]int
}

// maxReconnects bounds the attempts under way to one address.
const maxReconnects = 3

func (f *inFlight) start(addr string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == nil {
		f.n = map[string]int{}
	}
	if f.n[addr] >= maxReconnects {
		return false
	}
	f.n[addr]++
	return true
}

func (f *inFlight) done(addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n[addr]--; f.n[addr] <= 0 {
		delete(f.n, addr)
	}
}

// reconnectInterval is how often dead members are called again, for
// reconnectFor after they failed (serf's reconnect_timeout).
const (
	reconnectInterval = time.Second
	reconnectFor      = 24 * time.Hour
)

// deadAddrs are the addresses of members that failed (not left) within
// reconnectFor.
func (c *Cluster) deadAddrs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	now := c.opts.Now()
	for _, m := range c.members {
		if m.State == StateDead && m.Addr.IsValid() && now.Sub(m.Since) < reconnectFor {
			out = append(out, m.Addr.String())
		}
	}
	slices.Sort(out)
	return out
}

func (c *Cluster) leave(ml *memberlist.Memberlist) {
	c.mu.Lock()
	aborted := c.aborted
	c.mu.Unlock()
	if aborted {
		return
	}
	// Say so first, to every member directly: memberlist's NotifyLeave
	// hands out a node record whose State is not updated (its own
	// nodeState shadows it), so the others cannot tell this leave from a
	// crash without it, and would redial this member for a day.
	msg, _ := json.Marshal(notice{From: c.opts.Name})
	msg = append([]byte{msgLeaving}, msg...)
	var wg sync.WaitGroup
	for _, nc := range c.peers() {
		wg.Go(func() { _ = ml.SendReliable(&nc, msg) })
	}
	waitTimeout(&wg, time.Second)
	if err := ml.Leave(2 * time.Second); err != nil {
		c.log.Warn("leave the cluster", "err", err)
	}
	if err := ml.Shutdown(); err != nil {
		c.log.Warn("gossip shutdown", "err", err)
	}
	wg.Wait() // a notice still going to a silent peer ends within the TCP timeout
	c.log.Info("left the cluster")
}

// close ends every write to the state dir: memberlist may still call back
// while it shuts down, and nothing may be written after Run returns (the
// next owner of the state dir, a restarted daemon, is starting).
func (c *Cluster) close() {
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	c.peersMu.Lock()
	defer c.peersMu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
}

// Ready is closed once the gossip listener is up.
func (c *Cluster) Ready() <-chan struct{} { return c.ready }

// Joined is closed once a seed answered (with it, a push/pull of state:
// the cluster's config document, if it has one, is here by then), or at
// once without seeds.
func (c *Cluster) Joined() <-chan struct{} { return c.joined }

// Changed receives (coalesced) whenever the view or the document changed.
func (c *Cluster) Changed() <-chan struct{} { return c.changed }

func (c *Cluster) notify() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// LocalAddr is the gossip address and port others reach this member at
// (valid after Ready).
func (c *Cluster) LocalAddr() netip.AddrPort {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.local
}

// abort stops gossiping at once without telling anyone, as a crash
// would (tests use it; Run then returns without leaving).
func (c *Cluster) abort() {
	c.mu.Lock()
	ml := c.ml
	c.aborted = true
	c.mu.Unlock()
	if ml != nil {
		ml.Shutdown()
	}
}

// SetMeta publishes this director's state. It returns at once; the
// metadata spreads with the next gossip, the state (Reason, Announced,
// StandIn) is sent to every member at once, whole.
func (c *Cluster) SetMeta(m Meta) {
	st := MemberState{Reason: m.Reason, Announced: slices.Clone(m.Announced), StandIn: slices.Clone(m.StandIn), Health: m.Health.clone(), Tables: maps.Clone(m.Tables), Rollout: m.Rollout.clone()}
	c.mu.Lock()
	stateChanged := !st.same(c.state) || c.state.Seq == 0
	if stateChanged {
		// Grows across restarts too (a restarted member's first state
		// must beat what the others kept of its last run).
		st.Seq = max(c.state.Seq+1, uint64(c.opts.Now().UnixNano()))
		c.state = st
	}
	m.StateSeq = c.state.Seq
	same := metaEqual(c.meta, m)
	c.meta = m
	ml := c.ml
	c.mu.Unlock()
	if stateChanged {
		c.sendState(nil)
	}
	if same || ml == nil {
		return
	}
	select {
	case c.metaKick <- struct{}{}:
	default: // one is pending; it will read the newest metadata
	}
}

// publishMeta runs memberlist's UpdateNode, one at a time, whenever
// SetMeta asks, until stop is closed. Changes made while one is under way
// are gathered into the next.
func (c *Cluster) publishMeta(ml *memberlist.Memberlist, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-c.metaKick:
		}
		if err := ml.UpdateNode(2 * time.Second); err != nil {
			c.log.Debug("metadata update", "err", err)
		}
	}
}

// background runs f as work Run owns (see bg); it is not started once
// Run is on its way out (false).
func (c *Cluster) background(f func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bgClosed {
		return false
	}
	c.bg.Go(f)
	return true
}

// sendReliable sends msg to node over TCP in the background; what is
// lost is logged at debug (push/pull repairs it).
func (c *Cluster) sendReliable(ml *memberlist.Memberlist, node *memberlist.Node, msg []byte, what string) {
	c.background(func() {
		if err := ml.SendReliable(node, msg); err != nil {
			c.log.Debug("send "+what, "to", node.Name, "err", err)
		}
	})
}

// stateMsg carries a member's State.
type stateMsg struct {
	Name  string      `json:"n"`
	State MemberState `json:"s"`
}

// sendState sends this member's state to the members named, or to every
// live member (nil), over TCP: it may be far larger than a gossip packet.
// To every member, it is gossiped as well when it fits a packet
// (maxGossipState): a TCP connection that loses its SYN waits a second or
// three to retry, and on a saturated host (the soak lab's VM) a health
// report took two seconds to reach some members while their tables
// differed; gossip sends it to a few members every GossipInterval, several
// times over.
func (c *Cluster) sendState(to []string) {
	c.mu.Lock()
	ml := c.ml
	b, _ := json.Marshal(stateMsg{Name: c.opts.Name, State: c.state})
	c.mu.Unlock()
	if ml == nil {
		return
	}
	msg := append([]byte{msgState}, b...)
	if to != nil {
		// Answers to a request: wherever the asker is held to be.
		for _, name := range to {
			if node := c.known(name); node != nil {
				c.sendReliable(ml, node, msg, "member state")
			}
		}
		return
	}
	if len(msg) <= maxGossipState {
		c.queue.QueueBroadcast(stateBroadcast{name: c.opts.Name, msg: msg})
	}
	for _, nc := range c.peers() {
		c.sendReliable(ml, &nc, msg, "member state")
	}
}

// mergeState keeps st as name's state if it is newer than the one held,
// and says whether it was.
func (c *Cluster) mergeState(name string, st MemberState) bool {
	if name == "" || name == c.opts.Name {
		return false
	}
	c.mu.Lock()
	newer := st.Seq > c.states[name].Seq
	if newer {
		c.states[name] = st
	}
	c.mu.Unlock()
	if newer {
		c.notify()
	}
	return newer
}

func metaEqual(a, b Meta) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// Members returns the view: every member known, this one included, sorted
// by name.
func (c *Cluster) Members() []Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Member, 0, len(c.members)+1)
	for _, m := range c.members {
		mm := *m
		st, ok := c.states[m.Name]
		if m.Name == c.opts.Name {
			st, ok = c.state, true
		}
		if ok {
			mm.Meta.Reason, mm.Meta.Announced, mm.Meta.StandIn, mm.Meta.Health, mm.Meta.Tables = st.Reason, st.Announced, st.StandIn, st.Health, st.Tables
			mm.Meta.Rollout = st.Rollout
		}
		out = append(out, mm)
	}
	if _, ok := c.members[c.opts.Name]; !ok {
		// Before Run: only ourselves.
		out = append(out, Member{Name: c.opts.Name, State: StateAlive, Meta: c.meta})
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Document returns the current config document (nil: none yet).
func (c *Cluster) Document() *Document {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.doc
}

// Propose makes services the cluster's config: a new document one version
// above anything seen, signed, kept, and sent to every member. It returns
// the document. Services must be valid (they are checked again).
func (c *Cluster) Propose(services []configs.Service) (*Document, error) {
	return c.propose(services, nil)
}

// ErrConflict is the error of ProposeIf when the cluster's config is no
// longer the one the change was made against.
var ErrConflict = errors.New("the cluster config changed meanwhile")

// ProposeIf is Propose if the current document is still version/hash
// (0 and "": no document yet), else ErrConflict: a compare-and-swap, so
// that two operators applying at once do not silently overwrite each
// other.
func (c *Cluster) ProposeIf(version uint64, hash string, services []configs.Service) (*Document, error) {
	return c.propose(services, func(cur *Document) error {
		if cur.IsZero() && version == 0 {
			return nil
		}
		if cur.IsZero() || cur.Version != version || cur.Hash != hash {
			have := "none"
			if !cur.IsZero() {
				have = fmt.Sprintf("v%d/%s by %s", cur.Version, cur.Short(), cur.Author)
			}
			return fmt.Errorf("%w: it is %s now", ErrConflict, have)
		}
		return nil
	})
}

func (c *Cluster) propose(services []configs.Service, check func(cur *Document) error) (*Document, error) {
	if err := configs.ValidateServices(services); err != nil {
		return nil, err
	}
	return c.proposeDoc(func(cur *Document, version uint64, primary []byte) (*Document, error) {
		if check != nil {
			if err := check(cur); err != nil {
				return nil, err
			}
		}
		return NewDocument(services, version, c.opts.Name, c.opts.Now(), primary)
	})
}

// ErrRollout is the error of a change that a rollout's state forbids: a
// staged change while another is in progress, a stage update of a
// document that is not that rollout's.
var ErrRollout = errors.New("rollout")

// ProposeRollout starts a staged rollout of services (see Rollout) if
// the current document is still version/hash, as ProposeIf: the new
// document carries the current services as the previous ones, and no
// director applies the new ones until a stage reaches it. A rollout in
// progress must end first.
func (c *Cluster) ProposeRollout(version uint64, hash string, services []configs.Service, hold time.Duration) (*Document, error) {
	if err := configs.ValidateServices(services); err != nil {
		return nil, err
	}
	return c.proposeDoc(func(cur *Document, next uint64, primary []byte) (*Document, error) {
		if cur.IsZero() || cur.Version != version || cur.Hash != hash {
			have := "none"
			if !cur.IsZero() {
				have = fmt.Sprintf("v%d/%s by %s", cur.Version, cur.Short(), cur.Author)
			}
			return nil, fmt.Errorf("%w: it is %s now", ErrConflict, have)
		}
		if cur.InProgress() {
			return nil, fmt.Errorf("%w: the rollout of v%d is in progress (stage %s): let it end, or apply at once", ErrRollout, cur.Rollout.ID, cur.Rollout.Stage)
		}
		d, err := NewDocument(services, next, c.opts.Name, c.opts.Now(), nil)
		if err != nil {
			return nil, err
		}
		if d.Hash == cur.Hash {
			return nil, fmt.Errorf("%w: the services are the cluster's already", ErrRollout)
		}
		d.Rollout = &Rollout{ID: next, Stage: StageStandby, Hold: hold, Started: d.Time}
		d.Previous, d.PreviousHash = cur.Services, cur.Hash
		return d.sign(primary), nil
	})
}

// UpdateRollout moves the rollout of the current document, which must
// still be version/hash, to r (same ID): the next stage, or its end. At
// OutcomeRolledOut every director applies the new services; at
// OutcomeRolledBack the new document's services are the previous ones.
func (c *Cluster) UpdateRollout(version uint64, hash string, r Rollout) (*Document, error) {
	return c.proposeDoc(func(cur *Document, next uint64, primary []byte) (*Document, error) {
		if cur.IsZero() || cur.Version != version || cur.Hash != hash {
			return nil, fmt.Errorf("%w: the cluster config moved on", ErrConflict)
		}
		if !cur.InProgress() || cur.Rollout.ID != r.ID {
			return nil, fmt.Errorf("%w: v%d/%s is not rollout %d in progress", ErrRollout, cur.Version, cur.Short(), r.ID)
		}
		r.Reached = slices.Clone(r.Reached)
		d := &Document{Version: next, Hash: cur.Hash, Author: c.opts.Name, Time: c.opts.Now().UTC().Truncate(time.Millisecond),
			Services: cur.Services, Rollout: &r, Previous: cur.Previous, PreviousHash: cur.PreviousHash}
		switch r.Outcome {
		case "":
		case OutcomeRolledOut:
			d.Previous, d.PreviousHash = nil, ""
		case OutcomeRolledBack:
			d.Services, d.Hash = cur.Previous, cur.PreviousHash
			d.Previous, d.PreviousHash = nil, ""
		default:
			return nil, fmt.Errorf("%w: outcome %q", ErrRollout, r.Outcome)
		}
		return d.sign(primary), d.Check()
	})
}

// proposeDoc makes the document build returns (from the current one, the
// next version and the key to sign with) current, saved and spread.
func (c *Cluster) proposeDoc(build func(cur *Document, version uint64, primary []byte) (*Document, error)) (*Document, error) {
	// Saves are ordered by saveMu, held across this one's write; mu only
	// around the reads and the commit, so memberlist's callbacks are not
	// stalled by the disk. A document that arrives during the write is
	// adopted meanwhile: then this change is made again on top of it (or
	// refused, when it was made against the one replaced), and the file
	// holds the current document again before saveMu is let go.
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	for try := 0; ; try++ {
		if try == 5 {
			// Documents keep coming while this one is written: let the
			// caller try again rather than write for ever.
			return nil, fmt.Errorf("%w: newer documents kept arriving while this change was saved", ErrConflict)
		}
		c.mu.Lock()
		base := c.doc
		d, err := c.nextDocLocked(build)
		c.mu.Unlock()
		if err != nil {
			return nil, err
		}
		if c.opts.StateDir != "" {
			// A change made here is saved before anyone sees it, or not
			// made: the operator is told, and nothing changed.
			if err := c.opts.saveDocument(c.opts.StateDir, d); err != nil {
				return nil, err
			}
		}
		c.mu.Lock()
		if c.doc == base {
			c.doc, c.clock, c.saveErr, c.saved = d, max(c.clock, d.Version), nil, d
			c.mu.Unlock()
			c.log.Info("cluster config changed here", "version", d.Version, "hash", d.Short())
			c.spread(d)
			c.notify()
			return d, nil
		}
		c.mu.Unlock()
		c.persistLocked()
	}
}

// nextDocLocked is the document build makes from the current one, one
// version above anything seen.
func (c *Cluster) nextDocLocked(build func(cur *Document, version uint64, primary []byte) (*Document, error)) (*Document, error) {
	if c.closed {
		return nil, errors.New("the cluster member is stopped")
	}
	if c.clock >= MaxVersion {
		return nil, fmt.Errorf("the cluster config version is at its ceiling (%d): no newer version can be made", MaxVersion)
	}
	var primary []byte
	if c.keyring != nil {
		primary = c.keyring.GetPrimaryKey()
	}
	d, err := build(c.doc, c.clock+1, primary)
	if err != nil {
		return nil, err
	}
	if n := len(d.Services) + len(d.Previous); n > MaxDocumentBytes {
		return nil, fmt.Errorf("the services document is %.1f MiB (with a rollout's previous services); the cluster carries at most %d MiB", float64(n)/(1<<20), MaxDocumentBytes>>20)
	}
	if err := c.checkRoomLocked(d); err != nil {
		return nil, err
	}
	return d, nil
}

// adoptLocked makes d current; Run's saver writes it to the state dir. A
// failed save does not stop the adoption: the document is checked and the
// cluster's, so this director serves it (a director that cannot write its
// state dir for a moment must not fall behind the cluster and withdraw);
// the error is kept in saveErr and the save retried every second.
func (c *Cluster) adoptLocked(d *Document) {
	c.doc = d
	c.clock = max(c.clock, d.Version)
	c.saveErr = nil
	c.kickSave()
}

func (c *Cluster) kickSave() {
	select {
	case c.saveKick <- struct{}{}:
	default:
	}
}

// saver writes the document and the member list when they change, until
// stop is closed: outside mu, one write at a time.
func (c *Cluster) saver(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-c.saveKick:
		}
		if c.peersDirty.Swap(false) {
			c.saveKnownPeers()
		}
		c.persist()
	}
}

// persist writes the current document to the state dir unless it is
// there already (or its last write failed: then it tries again), and
// keeps the outcome in saveErr.
func (c *Cluster) persist() {
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	c.persistLocked()
}

// persistLocked is persist with saveMu held.
func (c *Cluster) persistLocked() {
	c.mu.Lock()
	d, saved, failed, closed := c.doc, c.saved, c.saveErr != nil, c.closed
	c.mu.Unlock()
	if c.opts.StateDir == "" || d == nil || closed || (d == saved && !failed) {
		return
	}
	err := c.opts.saveDocument(c.opts.StateDir, d)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil {
		c.saved = d
	}
	if c.doc != d {
		return // a newer one came meanwhile; its own save follows
	}
	c.saveErr = err
	switch {
	case err != nil && !failed:
		c.log.Error("cluster config applied but not saved (retried every second)", "version", d.Version, "err", err)
	case err == nil && failed:
		c.log.Info("cluster config saved to the state dir after an earlier failure", "version", d.Version)
		c.notify() // never blocks
	}
}

// retrySave has the saver try again if the last save failed.
func (c *Cluster) retrySave() {
	c.mu.Lock()
	failed := c.saveErr != nil
	c.mu.Unlock()
	if failed {
		c.kickSave()
	}
}

// SaveError is why the applied document is not saved in the state dir
// (nil when it is). It is retried every second.
func (c *Cluster) SaveError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.saveErr
}

// spread sends d to every other member over TCP (a document may be far
// larger than a gossip packet) and queues a notice, so that a member the
// direct send missed asks for it.
func (c *Cluster) spread(d *Document) {
	c.mu.Lock()
	ml := c.ml
	c.mu.Unlock()
	if ml == nil {
		return
	}
	c.queueNotice(d)
	msg := encodeDoc(d)
	for _, nc := range c.peers() {
		c.sendReliable(ml, &nc, msg, "config document")
	}
}

// askAgain is how long a document asked for because a member's metadata
// named it is not asked for again: it comes over TCP, within the TCP
// timeout (2 s) or not at all.
const askAgain = 2 * time.Second

// metaDocNewer says whether the document a member's metadata names (its
// version and short hash) is newer than doc.
func metaDocNewer(m Meta, doc *Document) bool {
	if m.ConfigVersion == 0 {
		return false
	}
	if doc.IsZero() || m.ConfigVersion != doc.Version {
		return doc.IsZero() || m.ConfigVersion > doc.Version
	}
	return m.ConfigHash > doc.Short()
}

// rejectedLocked says whether a document of version v whose hash begins
// with short was judged bad here.
func (c *Cluster) rejectedLocked(v uint64, short string) bool {
	prefix := fmt.Sprintf("%d/%s", v, short)
	for key := range c.rejected {
		if strings.HasPrefix(key, prefix) {
			return true
		}
	}
	return false
}

func encodeDoc(d *Document) []byte {
	b, _ := json.Marshal(d)
	return append([]byte{msgDocument}, b...)
}

// consider takes a document from the network (or push/pull) and adopts it
// if it is newer than ours and passes authentication and validation.
func (c *Cluster) consider(d *Document, via string) {
	c.mu.Lock()
	if !d.Newer(c.doc) {
		c.mu.Unlock()
		return
	}
	key := fmt.Sprintf("%d/%s", d.Version, d.Hash)
	authKey := fmt.Sprintf("%s/%x", key, d.Tag)
	if c.rejected[key] || c.rejected[authKey] {
		c.mu.Unlock()
		return
	}
	var keys [][]byte
	if c.keyring != nil {
		keys = c.keyring.GetKeys()
	}
	if err := d.Verify(keys); err != nil {
		c.rejected[authKey] = true
		c.mu.Unlock()
		c.log.Error("cluster config rejected, not applied", "version", d.Version, "hash", d.Short(), "author", d.Author, "via", via, "err", err)
		return
	}
	if err := c.checkDocLocked(d); err != nil {
		c.rejected[key] = true
		c.mu.Unlock()
		c.log.Error("cluster config rejected, not applied", "version", d.Version, "hash", d.Short(), "author", d.Author, "via", via, "err", err)
		return
	}
	c.adoptLocked(d)
	c.mu.Unlock()
	c.log.Info("cluster config received", "version", d.Version, "hash", d.Short(), "author", d.Author, "via", via)
	c.queueNotice(d)
	c.notify()
}

// MaxVersion is the highest version a document may have. A Lamport clock
// counts one a change; a version near 2^64 can only come from a bug or a
// forged document, and would leave no room for the next change.
const MaxVersion = 1 << 62

// checkDocLocked judges a document's content: its version and services.
func (c *Cluster) checkDocLocked(d *Document) error {
	if err := c.checkRoomLocked(d); err != nil {
		return err
	}
	return d.Check()
}

func (c *Cluster) checkRoomLocked(d *Document) error {
	if d.Version > MaxVersion {
		return fmt.Errorf("%w: version %d is above the ceiling %d", ErrCorrupt, d.Version, uint64(MaxVersion))
	}
	return nil
}

// CheckKeys reports whether SetKeys(keys) would succeed, changing nothing.
func (c *Cluster) CheckKeys(keys [][]byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if (c.keyring == nil) != (len(keys) == 0) {
		return errors.New("switching gossip encryption on or off needs a restart")
	}
	for i, k := range keys {
		if err := memberlist.ValidateKey(k); err != nil {
			return fmt.Errorf("key %d: %w", i, err)
		}
	}
	return nil
}

// SetKeys rotates the gossip keys to keys (the first becomes the one that
// encrypts): keys not yet installed are installed, then the first is put
// in use, then keys no longer listed are removed. An insecure cluster
// cannot become encrypted (or the reverse) without a restart.
func (c *Cluster) SetKeys(keys [][]byte) error {
	if err := c.CheckKeys(keys); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.keyring == nil {
		return nil
	}
	for _, k := range keys {
		if err := c.keyring.AddKey(k); err != nil {
			return fmt.Errorf("install key: %w", err)
		}
	}
	if err := c.keyring.UseKey(keys[0]); err != nil {
		return fmt.Errorf("use key: %w", err)
	}
	for _, k := range c.keyring.GetKeys() {
		if !slices.ContainsFunc(keys, func(x []byte) bool { return bytes.Equal(x, k) }) {
			if err := c.keyring.RemoveKey(k); err != nil {
				return fmt.Errorf("remove key: %w", err)
			}
		}
	}
	c.opts.Keys = keys
	// Documents refused for a missing key may pass now.
	clear(c.rejected)
	if c.resignLocked() {
		c.kickSave()
	}
	return nil
}

// resignLocked signs the current document with the primary key if its
// tag is not that key's (same version, content and author: a copy, not a
// change), and saves it, so that a director that has only the new key
// after a rotation accepts it, here after a restart and from here when it
// joins. It reports whether it did (the caller has it saved).
func (c *Cluster) resignLocked() bool {
	if c.doc.IsZero() || c.keyring == nil {
		return false
	}
	primary := c.keyring.GetPrimaryKey()
	if c.doc.Verify([][]byte{primary}) == nil {
		return false
	}
	d := *c.doc
	d.Tag = d.mac(primary)
	c.doc = &d
	c.log.Info("cluster config re-signed with the new primary key", "version", d.Version, "hash", d.Short())
	return true
}

func (c *Cluster) numMembers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, m := range c.members {
		if m.State == StateAlive {
			n++
		}
	}
	return max(n, 1)
}

// delegate implements memberlist.Delegate.
type delegate Cluster

func (d *delegate) NodeMeta(limit int) []byte {
	c := (*Cluster)(d)
	c.mu.Lock()
	m := c.meta
	c.mu.Unlock()
	b, err := m.Encode(limit)
	if err != nil {
		c.log.Error("node metadata", "err", err)
		return nil
	}
	return b
}

func (d *delegate) NotifyMsg(b []byte) {
	c := (*Cluster)(d)
	if len(b) == 0 {
		return
	}
	switch b[0] {
	case msgDocument:
		var doc Document
		if err := json.Unmarshal(b[1:], &doc); err != nil {
			c.log.Warn("undecodable config document from the cluster", "err", err)
			return
		}
		c.consider(&doc, "send")
	case msgNotice:
		var n notice
		if err := json.Unmarshal(b[1:], &n); err != nil {
			return
		}
		c.mu.Lock()
		newer := (&Document{Version: n.Version, Hash: n.Hash}).Newer(c.doc) && !c.rejected[fmt.Sprintf("%d/%s", n.Version, n.Hash)]
		ml := c.ml
		c.mu.Unlock()
		if !newer || ml == nil {
			return
		}
		// Ask the author, else whoever passed the notice on (held alive
		// here, else as last known: it just sent this).
		node := c.node(n.Author)
		for _, find := range []func(string) *memberlist.Node{c.node, c.known} {
			if node == nil {
				node = find(n.From)
			}
		}
		if node != nil {
			w, _ := json.Marshal(notice{From: c.opts.Name})
			c.sendReliable(ml, node, append([]byte{msgWant}, w...), "document request")
		}
	case msgState:
		var sm stateMsg
		if err := json.Unmarshal(b[1:], &sm); err != nil {
			return
		}
		if c.mergeState(sm.Name, sm.State) && len(b) <= maxGossipState {
			// Passed on, as memberlist passes on what it learns of a
			// member: the last state a member sent before it was cut off
			// reached some members and not others, and they counted
			// different votes until it was declared dead (the soak lab:
			// two directors' tables differed for over 4 s). The copy
			// memberlist hands us is its buffer's: keep our own.
			c.queue.QueueBroadcast(stateBroadcast{name: sm.Name, msg: slices.Clone(b)})
		}
	case msgWantSt:
		var n notice
		if err := json.Unmarshal(b[1:], &n); err != nil || n.From == "" {
			return
		}
		c.sendState([]string{n.From})
	case msgLeaving:
		var n notice
		if err := json.Unmarshal(b[1:], &n); err != nil || n.From == "" || n.From == c.opts.Name {
			return
		}
		c.mu.Lock()
		c.leaving[n.From] = c.opts.Now()
		m := c.members[n.From]
		changed := m != nil && m.State == StateDead
		if changed {
			// The leave overtook this notice.
			m.State, m.Since = StateLeft, c.opts.Now()
		}
		c.mu.Unlock()
		if changed {
			c.log.Info("member left", "name", n.From)
			c.notify()
		}
	case msgWant:
		var n notice
		if err := json.Unmarshal(b[1:], &n); err != nil {
			return
		}
		c.mu.Lock()
		doc, ml := c.doc, c.ml
		c.mu.Unlock()
		if doc.IsZero() || ml == nil {
			return
		}
		if node := c.known(n.From); node != nil {
			c.sendReliable(ml, node, encodeDoc(doc), "config document")
		}
	}
}

// peers are the other live members as memberlist addresses. They come
// from our own copies: the *Node values memberlist hands out are its
// live records, rewritten under its lock, and must not be read later.
func (c *Cluster) peers() []memberlist.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []memberlist.Node
	for _, m := range c.members {
		if m.Name == c.opts.Name || m.State != StateAlive {
			continue
		}
		out = append(out, memberlist.Node{Name: m.Name, Addr: m.Addr.Addr().AsSlice(), Port: m.Addr.Port()})
	}
	return out
}

func (c *Cluster) node(name string) *memberlist.Node {
	for _, n := range c.peers() {
		if n.Name == name {
			return &n
		}
	}
	return nil
}

// known is the member name as this member last knew it, alive or not:
// where an answer to its request goes. It asked, so it runs; this side
// may still hold it dead (after a partition heals the two sides learn it
// of each other at different times, and a request left unanswered until
// then kept a director on an old document and old votes for seconds).
func (c *Cluster) known(name string) *memberlist.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, ok := c.members[name]
	if !ok || name == c.opts.Name || !m.Addr.IsValid() || m.State == StateLeft {
		return nil
	}
	return &memberlist.Node{Name: m.Name, Addr: m.Addr.Addr().AsSlice(), Port: m.Addr.Port()}
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.queue.GetBroadcasts(overhead, limit)
}

// pushPull is the push/pull payload: the document (its fields at the top
// level, as earlier builds sent and read it) and every member state held
// (anti-entropy for a state message that was lost).
type pushPull struct {
	Document
	States map[string]MemberState `json:"member_states,omitempty"`
}

// LocalState is the push/pull payload.
func (d *delegate) LocalState(join bool) []byte {
	c := (*Cluster)(d)
	c.mu.Lock()
	var pp pushPull
	if !c.doc.IsZero() {
		pp.Document = *c.doc
	}
	pp.States = make(map[string]MemberState, len(c.states)+1)
	for name, st := range c.states {
		pp.States[name] = st
	}
	if c.state.Seq != 0 {
		pp.States[c.opts.Name] = c.state
	}
	c.mu.Unlock()
	if pp.Document.IsZero() && len(pp.States) == 0 {
		return nil
	}
	b, _ := json.Marshal(pp)
	return b
}

func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	c := (*Cluster)(d)
	if len(buf) == 0 {
		return
	}
	var pp pushPull
	if err := json.Unmarshal(buf, &pp); err != nil {
		c.log.Warn("undecodable state exchange", "err", err)
		return
	}
	for name, st := range pp.States {
		c.mergeState(name, st)
	}
	if !pp.Document.IsZero() {
		doc := pp.Document
		c.consider(&doc, "push/pull")
	}
}

// events implements memberlist.EventDelegate; memberlist calls it with its
// node lock held, so the node is copied here.
type events Cluster

func (e *events) NotifyJoin(n *memberlist.Node) {
	c := (*Cluster)(e)
	c.mu.Lock()
	delete(c.leaving, n.Name) // back: a notice from before is spent
	c.mu.Unlock()
	c.observe(n, StateAlive)
}
func (e *events) NotifyUpdate(n *memberlist.Node) { (*Cluster)(e).observe(n, StateAlive) }
func (e *events) NotifyLeave(n *memberlist.Node) {
	c := (*Cluster)(e)
	st := StateDead
	c.mu.Lock()
	if at, ok := c.leaving[n.Name]; ok && c.opts.Now().Sub(at) < leavingFor {
		st = StateLeft
	}
	delete(c.leaving, n.Name)
	c.mu.Unlock()
	c.observe(n, st)
}

// leavingFor is how long a member's notice that it is leaving explains
// its going; leftFor is how long a member that left stays in the view.
const (
	leavingFor = 30 * time.Second
	leftFor    = 10 * time.Minute
)

// prune forgets members that left more than leftFor ago, and notices of
// members that said they were leaving but never went.
func (c *Cluster) prune() {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.opts.Now()
	for name, m := range c.members {
		if m.State == StateLeft && now.Sub(m.Since) >= leftFor {
			delete(c.members, name)
			delete(c.states, name)
		}
	}
	for name, at := range c.leaving {
		if now.Sub(at) >= leavingFor {
			delete(c.leaving, name)
		}
	}
}

// waitTimeout waits for wg, at most d.
func waitTimeout(wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
	}
}

func (c *Cluster) observe(n *memberlist.Node, st State) {
	a, _ := netip.AddrFromSlice(n.Addr)
	m := Member{Name: n.Name, Addr: netip.AddrPortFrom(a.Unmap(), n.Port), State: st, Since: c.opts.Now()}
	meta, err := DecodeMeta(n.Meta)
	if err != nil {
		m.Bad = "unreadable metadata: " + err.Error()
	}
	m.Meta = meta
	c.mu.Lock()
	old, ok := c.members[n.Name]
	if ok && old.State == st {
		m.Since = old.Since
	}
	c.members[n.Name] = &m
	// The known members are saved when one comes, goes or moves (not on
	// every metadata update).
	save := !ok || old.State != st || old.Addr != m.Addr
	// Its metadata says it has a newer state than the one held here (a
	// state message lost, or this member just joined): ask for it. The
	// same for a newer document: its notice goes by gossip only to the
	// members its author holds alive, and after a partition heals the
	// two sides take a while to agree on who is (the soak lab: a director
	// that knew the others had v2 waited 8 s for the push/pull and
	// withdrew as config behind meanwhile).
	other := st == StateAlive && n.Name != c.opts.Name
	staleState := other && meta.StateSeq > c.states[n.Name].Seq
	staleDoc := other && metaDocNewer(meta, c.doc) && !c.rejectedLocked(meta.ConfigVersion, meta.ConfigHash)
	if staleDoc {
		key, now := fmt.Sprintf("%d/%s", meta.ConfigVersion, meta.ConfigHash), c.opts.Now()
		if key == c.asked && now.Sub(c.askedAt) < askAgain {
			staleDoc = false
		} else {
			c.asked, c.askedAt = key, now
		}
	}
	ml := c.ml
	c.mu.Unlock()
	if (staleState || staleDoc) && ml != nil {
		w, _ := json.Marshal(notice{From: c.opts.Name})
		node := memberlist.Node{Name: n.Name, Addr: slices.Clone(n.Addr), Port: n.Port}
		if staleState {
			c.sendReliable(ml, &node, append([]byte{msgWantSt}, w...), "state request")
		}
		if staleDoc {
			c.sendReliable(ml, &node, append([]byte{msgWant}, w...), "document request")
		}
	}
	if save {
		c.peersDirty.Store(true)
		c.kickSave()
	}
	if st != StateAlive {
		c.log.Info("member "+string(st), "name", n.Name, "addr", m.Addr)
	} else if _, err := json.Marshal(meta); err == nil {
		c.log.Debug("member update", "name", n.Name, "addr", m.Addr)
	}
	c.notify()
}

// noticeBroadcast is a queued notice of a document. A member only
// notices the newest document it holds, so a newer notice replaces any
// older one still in the queue.
type noticeBroadcast []byte

func (b noticeBroadcast) Invalidates(o memberlist.Broadcast) bool {
	_, ok := o.(noticeBroadcast)
	return ok
}
func (b noticeBroadcast) Message() []byte { return b }
func (b noticeBroadcast) Finished()       {}

// stateBroadcast is a member's state, gossiped (this member's own, or
// another's passed on): a newer one of the same member replaces one still
// in the queue.
type stateBroadcast struct {
	name string
	msg  []byte
}

func (b stateBroadcast) Invalidates(o memberlist.Broadcast) bool {
	ob, ok := o.(stateBroadcast)
	return ok && ob.name == b.name
}
func (b stateBroadcast) Name() string    { return "state/" + b.name }
func (b stateBroadcast) Message() []byte { return b.msg }
func (b stateBroadcast) Finished()       {}

// maxGossipState is the largest state message gossiped as well as sent:
// memberlist packs broadcasts into UDP packets of 1,400 bytes with its own
// headers and the encryption's.
const maxGossipState = 1000

// queueNotice gossips that d exists, so that members that missed it (a
// direct send lost, a healed partition) ask for it. Every member that
// adopts a document passes the notice on: the spread is epidemic, not
// only from the author.
func (c *Cluster) queueNotice(d *Document) {
	n, _ := json.Marshal(notice{Version: d.Version, Hash: d.Hash, Author: d.Author, From: c.opts.Name})
	c.queue.QueueBroadcast(noticeBroadcast(append([]byte{msgNotice}, n...)))
}

// logWriter turns memberlist's log lines ("[WARN] memberlist: ...") into
// slog records at the matching level. Warnings and errors (most of them
// about a packet or stream from someone: undecryptable, malformed) are
// rate-limited by kind, so that a sender cannot flood the log.
type logWriter struct {
	log  *slog.Logger
	rate *rateLog
}

func (w *logWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	lvl := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{"[DEBUG]": slog.LevelDebug, "[INFO]": slog.LevelDebug,
		"[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError} {
		if strings.HasPrefix(line, prefix) {
			lvl, line = l, strings.TrimSpace(strings.TrimPrefix(line, prefix))
			break
		}
	}
	line = strings.TrimPrefix(line, "memberlist: ")
	if lvl >= slog.LevelWarn && w.rate != nil {
		// The kind is the text up to the first detail (": ", "from=").
		kind, _, _ := strings.Cut(line, ": ")
		kind, _, _ = strings.Cut(kind, " from=")
		w.rate.print(lvl, kind, "line", line)
		return len(p), nil
	}
	w.log.Log(context.Background(), lvl, line, "component", "memberlist")
	return len(p), nil
}

var _ io.Writer = (*logWriter)(nil)

// SeedAddrs returns seeds as memberlist wants them, defaulting the port.
func SeedAddrs(seeds []string, port int) []string {
	out := make([]string, 0, len(seeds))
	for _, s := range seeds {
		if _, _, err := net.SplitHostPort(s); err == nil {
			out = append(out, s)
			continue
		}
		out = append(out, net.JoinHostPort(s, strconv.Itoa(port)))
	}
	return out
}

// peersFile keeps the addresses of the live members, for the next start.
const peersFile = "members.json"

// knownPeers are the member addresses saved by the last run (none if the
// file is missing or unreadable: they are only a hint).
func (c *Cluster) knownPeers() []string {
	if c.opts.StateDir == "" {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(c.opts.StateDir, peersFile))
	if err != nil {
		return nil
	}
	var addrs []string
	if err := json.Unmarshal(b, &addrs); err != nil {
		c.log.Warn("saved member list unreadable; joining by the seeds only", "err", err)
		return nil
	}
	return addrs
}

// maxKnownPeers bounds the saved list: a few live members are enough to
// find the cluster again.
const maxKnownPeers = 32

func (c *Cluster) saveKnownPeers() {
	if c.opts.StateDir == "" {
		return
	}
	c.peersMu.Lock()
	defer c.peersMu.Unlock()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	var addrs []string
	for _, m := range c.members {
		if m.Name != c.opts.Name && m.State == StateAlive && m.Addr.IsValid() {
			addrs = append(addrs, m.Addr.String())
		}
	}
	c.mu.Unlock()
	if len(addrs) == 0 {
		return // alone: keep what the file says, for the next start
	}
	slices.Sort(addrs)
	addrs = addrs[:min(len(addrs), maxKnownPeers)]
	b, _ := json.Marshal(addrs)
	if err := atomicfile.Write(filepath.Join(c.opts.StateDir, peersFile), b, 0o600); err != nil {
		c.log.Debug("save the member list", "err", err)
	}
}
