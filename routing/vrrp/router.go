package vrrp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/routing"
	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Router runs the configured virtual routers on one interface and
// implements routing.Announcer: the set of VIPs the director may serve
// (Set) decides each instance's priority (its configured one while all its
// VIPs are wanted, its unhealthy_priority otherwise; 0 resigns at once).
// The state machines decide mastership; a master holds the instance's VIPs
// on the interface and announces them with gratuitous ARP and unsolicited
// neighbour advertisements.
type Router struct {
	cfg configs.VRRP
	log *slog.Logger

	// mu guards what Set and Status share with Run: wanted, and each
	// instance's machine and counters. Only Run's goroutine changes the
	// machines, and it carries out their actions (sockets, netlink, ARP)
	// after letting mu go, so Status never waits on the kernel.
	mu      sync.Mutex
	wanted  map[netip.Addr]bool
	inst    map[uint8]*instance
	events  chan event
	changed chan struct{}
	ifi     *net.Interface
	self4   netip.Addr
	self6   netip.Addr
	conn4   *ipv4.PacketConn
	conn6   *ipv6.PacketConn
	// readers are the sockets' receive loops, owned by Run: it closes
	// quit and the sockets on its way out and waits for them.
	readers sync.WaitGroup
	quit    chan struct{}
	// added, vmac and arpIgnore are Run's alone.
	added map[netip.Addr]int // VIP -> interface index it was added to
	// arpIgnore is the interface's arp_ignore before virtual_mac set it
	// to 1 ("" if untouched), put back when the router stops.
	arpIgnore string
}

type instance struct {
	cfg  configs.VRRPInstance
	m    *Machine
	v6   bool
	vips []netip.Addr
	// vmac is the instance's macvlan interface with the virtual MAC
	// (virtual_mac), nil otherwise.
	vmac *net.Interface
	// flaps counts the times the instance left master (Peer.Flaps).
	flaps uint64
	// rejected counts the advertisements for this instance that were
	// dropped as misconfigured, by reason (Peer.Rejected); lastReject says
	// the last one; warned and suppressed rate-limit the warnings.
	rejected   map[string]uint64
	lastReject string
	warned     map[string]time.Time
	suppressed map[string]uint64
}

// rejectWarnEvery is how often one reason of one instance is logged at
// Warn: a misconfigured peer sends every advert interval.
const rejectWarnEvery = 10 * time.Second

// VirtualMAC is the instance's virtual router MAC (RFC 5798 7.3):
// 00-00-5E-00-01-{VRID} for IPv4, 00-00-5E-00-02-{VRID} for IPv6.
func VirtualMAC(vrid uint8, v6 bool) net.HardwareAddr {
	if v6 {
		return net.HardwareAddr{0, 0, 0x5e, 0, 2, vrid}
	}
	return net.HardwareAddr{0, 0, 0x5e, 0, 1, vrid}
}

type event struct {
	src netip.Addr
	dst netip.Addr
	b   []byte
	v6  bool
	at  time.Time
}

// New makes a router for a valid config.
func New(cfg configs.VRRP, log *slog.Logger) (*Router, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Router{cfg: cfg, log: log, wanted: map[netip.Addr]bool{}, inst: map[uint8]*instance{},
		events: make(chan event, 64), changed: make(chan struct{}, 1), added: map[netip.Addr]int{}}
	for _, ic := range cfg.Instances {
		in := &instance{cfg: ic, vips: ic.VIPs, rejected: map[string]uint64{}, warned: map[string]time.Time{}, suppressed: map[string]uint64{}}
		in.v6 = ic.VIPs[0].Is6() && !ic.VIPs[0].Is4In6()
		for _, v := range ic.VIPs {
			if (v.Is6() && !v.Is4In6()) != in.v6 {
				return nil, fmt.Errorf("routing.vrrp.instances %s: IPv4 and IPv6 VIPs in one instance (VRRPv3 carries one family)", ic.Name)
			}
		}
		r.inst[uint8(ic.VRID)] = in
	}
	return r, nil
}

// The Router holds a VIP only while master: it elects (routing.Elects).
var _ routing.Announcer = (*Router)(nil)

// Changed is signalled (coalesced) when an instance became master or
// backup: what Status reports changed.
func (r *Router) Changed() <-chan struct{} { return r.changed }

func (r *Router) notify() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// Set declares the VIPs this director may serve now.
func (r *Router) Set(ctx context.Context, anns []routing.Announcement) error {
	w := map[netip.Addr]bool{}
	for _, a := range anns {
		w[a.Prefix.Addr()] = true
	}
	r.mu.Lock()
	r.wanted = w
	r.mu.Unlock()
	select {
	case r.events <- event{}: // wake the loop to apply priorities
	default:
	}
	return nil
}

// Status reports each instance as a session, and the VIPs held.
func (r *Router) Status() routing.Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := routing.Status{Mode: configs.ModeVRRP}
	for _, vrid := range slices.Sorted(mapsKeys(r.inst)) {
		in := r.inst[vrid]
		state := "initialize"
		if in.m != nil {
			state = in.m.State().String()
		}
		p := routing.Peer{Address: in.masterAddr(), ASN: uint32(vrid), State: state, Flaps: in.flaps, LastRejected: in.lastReject}
		if len(in.rejected) > 0 {
			p.Rejected = maps.Clone(in.rejected)
		}
		st.Peers = append(st.Peers, p)
		if in.m != nil && in.m.State() == Master {
			for _, v := range in.vips {
				p := netip.PrefixFrom(v, v.BitLen())
				st.Announced = append(st.Announced, routing.Announcement{Prefix: p})
				if in.m.StandIn() {
					st.StandIn = append(st.StandIn, p)
				}
			}
		}
	}
	return st
}

func (in *instance) masterAddr() netip.Addr {
	if in.m == nil {
		return netip.Addr{}
	}
	return in.m.Master()
}

func mapsKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// priority is what instance in should advertise given the wanted VIPs.
func (r *Router) priority(in *instance) uint8 {
	for _, v := range in.vips {
		if !r.wanted[v] {
			return uint8(in.cfg.UnhealthyPriority)
		}
	}
	return uint8(in.cfg.Priority)
}

// Run opens the sockets, runs every instance until ctx ends, then stops
// them (a master sends priority 0 and releases its VIPs).
func (r *Router) Run(ctx context.Context) error {
	ifi, err := net.InterfaceByName(r.cfg.Interface)
	if err != nil {
		return fmt.Errorf("vrrp interface %s: %w", r.cfg.Interface, err)
	}
	r.ifi = ifi
	r.quit = make(chan struct{})
	// The receive loops end with Run, after stop (deferred later, so it
	// runs first) has sent its last advertisements through the sockets.
	defer r.closeSockets()
	r.removeStale()
	need4, need6 := false, false
	for _, in := range r.inst {
		need4, need6 = need4 || !in.v6, need6 || in.v6
	}
	addrs, _ := ifi.Addrs()
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := p.Addr()
		if ip.Is4() && !r.self4.IsValid() {
			r.self4 = ip
		}
		if ip.Is6() && ip.IsLinkLocalUnicast() && !r.self6.IsValid() {
			r.self6 = ip
		}
	}
	if need4 {
		if !r.self4.IsValid() {
			return fmt.Errorf("vrrp interface %s has no IPv4 address to send from", ifi.Name)
		}
		if err := r.open4(); err != nil {
			return err
		}
	}
	if need6 {
		if !r.self6.IsValid() {
			return fmt.Errorf("vrrp interface %s has no IPv6 link-local address to send from", ifi.Name)
		}
		if err := r.open6(); err != nil {
			return err
		}
	}
	if r.cfg.VirtualMAC {
		// With the VIP on the macvlan, the interface itself must not
		// answer ARP for it with its own MAC (Linux answers for any
		// local address on any interface unless arp_ignore says no).
		path := "/proc/sys/net/ipv4/conf/" + ifi.Name + "/arp_ignore"
		if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == "0" {
			if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
				return fmt.Errorf("vrrp virtual_mac: arp_ignore on %s: %w", ifi.Name, err)
			}
			r.arpIgnore = "0"
			r.log.Info("vrrp: set arp_ignore=1 on the interface for the virtual MAC (put back at stop)", "interface", ifi.Name)
		}
		for vrid, in := range r.inst {
			vm, err := r.makeVMAC(vrid, in.v6)
			if err != nil {
				r.removeVMACs()
				return err
			}
			in.vmac = vm
		}
		defer r.removeVMACs()
	}
	now := time.Now()
	var todo []decision
	r.mu.Lock()
	for vrid, in := range r.inst {
		self := r.self4
		if in.v6 {
			self = r.self6
		}
		in.m = NewMachine(Config{Version: uint8(in.cfg.Version), VRID: vrid, Priority: r.priority(in), Interval: r.cfg.AdvertInterval,
			Preempt: in.cfg.Preempt, PreemptDelay: in.cfg.PreemptDelay, Self: self})
		todo = r.decided(todo, in, in.m.Start(now))
	}
	r.mu.Unlock()
	r.do(todo)
	defer r.stop()

	timer := time.NewTimer(time.Millisecond)
	defer timer.Stop()
	for {
		r.mu.Lock()
		next := time.Time{}
		for _, in := range r.inst {
			if d := in.m.Deadline(); !d.IsZero() && (next.IsZero() || d.Before(next)) {
				next = d
			}
		}
		r.mu.Unlock()
		if !next.IsZero() {
			timer.Reset(max(time.Until(next), 0))
		}
		todo = todo[:0]
		select {
		case <-ctx.Done():
			return nil
		case ev := <-r.events:
			todo = r.handle(todo, ev)
		case <-timer.C:
		}
		r.mu.Lock()
		now := time.Now()
		for _, in := range r.inst {
			todo = r.decided(todo, in, in.m.SetPriority(now, r.priority(in)))
			todo = r.decided(todo, in, in.m.Tick(now))
		}
		r.mu.Unlock()
		r.do(todo)
	}
}

// closeSockets ends the receive loops: quit first (a loop blocked handing
// on an advertisement gives up), then the sockets (a loop blocked reading
// returns); then it waits for them.
func (r *Router) closeSockets() {
	close(r.quit)
	if r.conn4 != nil {
		r.conn4.Close()
	}
	if r.conn6 != nil {
		r.conn6.Close()
	}
	r.readers.Wait()
}

func (r *Router) stop() {
	var todo []decision
	r.mu.Lock()
	now := time.Now()
	for _, in := range r.inst {
		if in.m != nil {
			todo = r.decided(todo, in, in.m.Stop(now))
		}
	}
	r.mu.Unlock()
	r.do(todo)
	for v := range r.added {
		r.delVIP(v)
	}
}

// handle gives an advertisement to its instance's machine and appends
// what the machine decided to todo.
func (r *Router) handle(todo []decision, ev event) []decision {
	if len(ev.b) < 2 {
		return todo
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	in := r.inst[ev.b[1]]
	a, err := Unmarshal(ev.b, ev.src, ev.dst)
	if in == nil {
		// Another VRID on the segment (RFC 5798 7.1: discard), which is
		// normal unless it carries our VIPs: a peer configured with
		// another VRID for them, and both hold them.
		if err == nil {
			if owner, vip := r.instanceOf(a.Addrs); owner != nil {
				r.reject(owner, ev, "vrid", fmt.Sprintf("%s advertises %s under VRID %d; this instance runs it as VRID %d", ev.src, vip, a.VRID, owner.cfg.VRID))
			}
		}
		return todo
	}
	if in.v6 != ev.v6 {
		return todo
	}
	if err != nil {
		reason := "malformed"
		if errors.Is(err, ErrVersion) {
			reason = "version"
		}
		r.reject(in, ev, reason, fmt.Sprintf("%s: %v", ev.src, err))
		return todo
	}
	if msg, reason := in.mismatch(a, r.cfg.AdvertInterval); reason != "" {
		r.reject(in, ev, reason, fmt.Sprintf("%s: %s", ev.src, msg))
		// RFC 3768 7.1 (and 5798): the address owner's advertisement is
		// taken even with other addresses.
		if reason != "addresses" || a.Priority != PriorityOwner {
			return todo
		}
	}
	if a.Priority == PriorityOwner && in.m.State() != Master && uint8(in.cfg.Priority) == PriorityOwner {
		r.log.Warn("vrrp: another router claims to own the addresses", "vrid", a.VRID, "from", ev.src)
	}
	return r.decided(todo, in, in.m.Receive(ev.at, ev.src, a))
}

// mismatch checks an advertisement for this instance against its
// configuration (RFC 3768 7.1, RFC 5798 7.1): the version, VRRPv2's
// authentication and interval, and the virtual addresses. It returns what
// is wrong and a reason for the counters, or "" if nothing is.
func (in *instance) mismatch(a Advert, interval time.Duration) (string, string) {
	want := uint8(in.cfg.Version)
	if a.Version != want {
		hint := "set vrrp_version 3 on the keepalived peer, or version: 2 on this instance"
		if want == Version2 {
			hint = "set version: 3 on this instance, or vrrp_version 2 on the peer"
		}
		return fmt.Sprintf("received VRRPv%d, this instance runs VRRPv%d (keepalived's default is 2: %s)", a.Version, want, hint), "version"
	}
	if want == Version2 {
		wantType, wantAuth := uint8(AuthNone), [8]byte{}
		if au := in.cfg.Authentication; au != nil {
			wantType, wantAuth = AuthSimple, SimpleAuth(au.Password)
		}
		if a.AuthType != wantType {
			return fmt.Sprintf("authentication type %d, this instance expects %d (%s)", a.AuthType, wantType, map[uint8]string{0: "none", 1: "simple text"}[wantType]), "auth"
		}
		if wantType == AuthSimple && a.Auth != wantAuth {
			return "wrong authentication password", "auth"
		}
		if a.Interval != interval {
			return fmt.Sprintf("advertisement interval %v, this instance uses %v (VRRPv2 requires the same)", a.Interval, interval), "interval"
		}
	}
	if len(a.Addrs) != len(in.vips) {
		return fmt.Sprintf("%d virtual addresses %v, this instance has %d %v", len(a.Addrs), a.Addrs, len(in.vips), in.vips), "addresses"
	}
	for _, v := range a.Addrs {
		if !slices.Contains(in.vips, v) {
			return fmt.Sprintf("virtual addresses %v, this instance has %v", a.Addrs, in.vips), "addresses"
		}
	}
	return "", ""
}

// instanceOf is the instance one of addrs belongs to, and that address.
func (r *Router) instanceOf(addrs []netip.Addr) (*instance, netip.Addr) {
	for _, in := range r.inst {
		for _, a := range addrs {
			if slices.Contains(in.vips, a) {
				return in, a
			}
		}
	}
	return nil, netip.Addr{}
}

// reject counts a dropped advertisement against in and logs it at Warn,
// at most once per reason every rejectWarnEvery (saying how many went
// unlogged). Called with r.mu held.
func (r *Router) reject(in *instance, ev event, reason, msg string) {
	in.rejected[reason]++
	in.lastReject = fmt.Sprintf("%s: %s", reason, msg)
	if last, ok := in.warned[reason]; ok && ev.at.Sub(last) < rejectWarnEvery {
		in.suppressed[reason]++
		return
	}
	in.warned[reason] = ev.at
	r.log.Warn("vrrp: advertisement dropped: misconfigured peer", "instance", in.cfg.Name, "vrid", in.cfg.VRID,
		"reason", reason, "detail", msg, "dropped_total", in.rejected[reason], "unlogged", in.suppressed[reason])
	in.suppressed[reason] = 0
}

// decision is what one machine decided, to be carried out by do.
type decision struct {
	in   *instance
	acts []Action
	// master is whether the machine is master after deciding (where its
	// packets leave from).
	master bool
}

// decided appends a machine's actions to todo and counts what Status
// reports. Called with r.mu held.
func (r *Router) decided(todo []decision, in *instance, acts []Action) []decision {
	if len(acts) == 0 {
		return todo
	}
	for _, a := range acts {
		if a.Kind == Release {
			in.flaps++
		}
	}
	return append(todo, decision{in: in, acts: acts, master: in.m.State() == Master})
}

// do carries out the machines' actions, in order, on Run's goroutine
// without r.mu: sockets, netlink and ARP may take their time.
func (r *Router) do(todo []decision) {
	for _, t := range todo {
		in := t.in
		// A new master's virtual MAC interface comes up before its first
		// advertisement, which leaves from it.
		for _, a := range t.acts {
			if a.Kind == TakeOver {
				r.vmacUp(in, true)
			}
		}
		for _, a := range t.acts {
			switch a.Kind {
			case Send:
				if err := r.send(in, a.Priority, t.master); err != nil {
					r.log.Warn("vrrp: send advertisement", "vrid", in.cfg.VRID, "err", err)
				}
			case TakeOver:
				r.log.Info("vrrp: master", "instance", in.cfg.Name, "vrid", in.cfg.VRID, "vips", in.vips)
				r.vmacUp(in, true)
				for _, v := range in.vips {
					r.addVIP(in, v)
				}
				r.announce(in)
				r.notify()
			case Release:
				r.log.Info("vrrp: backup, releasing", "instance", in.cfg.Name, "vrid", in.cfg.VRID)
				for _, v := range in.vips {
					r.delVIP(v)
				}
				r.vmacUp(in, false)
				r.notify()
			}
		}
	}
}

func (r *Router) send(in *instance, prio uint8, master bool) error {
	a := Advert{Version: uint8(in.cfg.Version), VRID: uint8(in.cfg.VRID), Priority: prio, Interval: r.cfg.AdvertInterval, Addrs: in.vips}
	if au := in.cfg.Authentication; au != nil && in.cfg.Version == Version2 {
		a.AuthType, a.Auth = AuthSimple, SimpleAuth(au.Password)
	}
	dsts := r.cfg.UnicastPeers
	if len(dsts) == 0 {
		dsts = []netip.Addr{GroupIPv4}
		if in.v6 {
			dsts = []netip.Addr{GroupIPv6}
		}
	}
	var errs []error
	for _, dst := range dsts {
		if (dst.Is6() && !dst.Is4In6()) != in.v6 {
			continue
		}
		if in.v6 {
			b, err := a.Marshal(r.self6, dst)
			if err != nil {
				return err
			}
			ifi := r.sendIface(in, master)
			cm := &ipv6.ControlMessage{HopLimit: 255, Src: r.self6.AsSlice(), IfIndex: ifi.Index}
			if _, err := r.conn6.WriteTo(b, cm, &net.IPAddr{IP: dst.AsSlice(), Zone: ifi.Name}); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		b, err := a.Marshal(r.self4, dst)
		if err != nil {
			return err
		}
		cm := &ipv4.ControlMessage{TTL: 255, Src: r.self4.AsSlice(), IfIndex: r.sendIface(in, master).Index}
		if _, err := r.conn4.WriteTo(b, cm, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (r *Router) open4() error {
	c, err := net.ListenPacket("ip4:112", "0.0.0.0")
	if err != nil {
		return fmt.Errorf("vrrp: raw IPv4 socket for protocol 112 (needs CAP_NET_RAW): %w", err)
	}
	p := ipv4.NewPacketConn(c)
	for _, f := range []func() error{
		func() error { return p.SetControlMessage(ipv4.FlagTTL|ipv4.FlagDst|ipv4.FlagInterface, true) },
		func() error { return p.JoinGroup(r.ifi, &net.IPAddr{IP: GroupIPv4.AsSlice()}) },
		func() error { return p.SetMulticastInterface(r.ifi) },
		func() error { return p.SetMulticastTTL(255) },
		func() error { return p.SetTTL(255) },
		func() error { return p.SetMulticastLoopback(false) },
	} {
		if err := f(); err != nil {
			c.Close()
			return fmt.Errorf("vrrp: IPv4 socket on %s: %w", r.ifi.Name, err)
		}
	}
	r.conn4 = p
	r.readers.Go(func() {
		r.receive(func(b []byte) (int, int, int, net.Addr, net.IP, error) {
			n, cm, src, err := p.ReadFrom(b)
			if cm == nil {
				return n, 0, 0, src, nil, err
			}
			return n, cm.IfIndex, cm.TTL, src, cm.Dst, err
		}, false)
	})
	return nil
}

func (r *Router) open6() error {
	c, err := net.ListenPacket("ip6:112", "::")
	if err != nil {
		return fmt.Errorf("vrrp: raw IPv6 socket for protocol 112 (needs CAP_NET_RAW): %w", err)
	}
	p := ipv6.NewPacketConn(c)
	for _, f := range []func() error{
		func() error { return p.SetControlMessage(ipv6.FlagHopLimit|ipv6.FlagDst|ipv6.FlagInterface, true) },
		func() error { return p.JoinGroup(r.ifi, &net.IPAddr{IP: GroupIPv6.AsSlice()}) },
		func() error { return p.SetMulticastInterface(r.ifi) },
		func() error { return p.SetMulticastHopLimit(255) },
		func() error { return p.SetHopLimit(255) },
		func() error { return p.SetMulticastLoopback(false) },
	} {
		if err := f(); err != nil {
			c.Close()
			return fmt.Errorf("vrrp: IPv6 socket on %s: %w", r.ifi.Name, err)
		}
	}
	r.conn6 = p
	r.readers.Go(func() {
		r.receive(func(b []byte) (int, int, int, net.Addr, net.IP, error) {
			n, cm, src, err := p.ReadFrom(b)
			if cm == nil {
				return n, 0, 0, src, nil, err
			}
			return n, cm.IfIndex, cm.HopLimit, src, cm.Dst, err
		}, true)
	})
	return nil
}

// receive reads advertisements from one raw socket until it closes and
// queues those that count: RFC 5798 7.1, TTL (hop limit) 255, so it never
// crossed a router; our interface only; not our own.
func (r *Router) receive(read func([]byte) (n, ifIndex, ttl int, src net.Addr, dst net.IP, err error), v6 bool) {
	buf := make([]byte, 1500)
	for {
		n, ifIndex, ttl, src, dst, err := read(buf)
		if err != nil {
			return
		}
		if ifIndex != r.ifi.Index || ttl != 255 {
			continue
		}
		s, _ := netip.AddrFromSlice(src.(*net.IPAddr).IP)
		d, _ := netip.AddrFromSlice(dst)
		s, d = s.Unmap(), d.Unmap()
		self := r.self4
		if v6 {
			self = r.self6
		}
		if s == self {
			continue
		}
		select {
		case r.events <- event{src: s, dst: d, b: slices.Clone(buf[:n]), v6: v6, at: time.Now()}:
		case <-r.quit:
			return
		}
	}
}

// sendIface is where an instance's packets leave: its macvlan with the
// virtual MAC while master (so the segment's switches learn where the MAC
// lives from the master's advertisements), else the interface.
func (r *Router) sendIface(in *instance, master bool) *net.Interface {
	if in.vmac != nil && master {
		return in.vmac
	}
	return r.ifi
}

// makeVMAC creates the macvlan interface "vrrp.VRID" (IPv6: "vrrp6.VRID")
// on the VRRP interface with the virtual MAC, down until the instance is
// master: a backup must never send from the virtual MAC.
func (r *Router) makeVMAC(vrid uint8, v6 bool) (*net.Interface, error) {
	name := fmt.Sprintf("vrrp.%d", vrid)
	if v6 {
		name = fmt.Sprintf("vrrp6.%d", vrid)
	}
	if old, err := netlink.LinkByName(name); err == nil {
		// Left by a crashed run: ours by name and MAC, replace it.
		if old.Attrs().HardwareAddr.String() != VirtualMAC(vrid, v6).String() {
			return nil, fmt.Errorf("vrrp virtual_mac: interface %s exists and is not ours", name)
		}
		netlink.LinkDel(old)
	}
	mv := &netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: r.ifi.Index, HardwareAddr: VirtualMAC(vrid, v6)},
		Mode: netlink.MACVLAN_MODE_PRIVATE}
	if err := netlink.LinkAdd(mv); err != nil {
		return nil, fmt.Errorf("vrrp virtual_mac: create %s on %s: %w", name, r.ifi.Name, err)
	}
	if !v6 {
		// No IPv6 link-local (and so no ND or MLD) from the virtual MAC
		// of an IPv4 instance.
		os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("1"), 0o644)
	}
	// Answer ARP for the VIP on this interface only, from the virtual MAC.
	os.WriteFile("/proc/sys/net/ipv4/conf/"+name+"/arp_ignore", []byte("1"), 0o644)
	return net.InterfaceByName(name)
}

func (r *Router) vmacUp(in *instance, up bool) {
	if in.vmac == nil {
		return
	}
	l, err := netlink.LinkByIndex(in.vmac.Index)
	if err == nil {
		if up {
			err = netlink.LinkSetUp(l)
		} else {
			err = netlink.LinkSetDown(l)
		}
	}
	if err != nil {
		r.log.Warn("vrrp: virtual MAC interface", "name", in.vmac.Name, "up", up, "err", err)
	}
}

func (r *Router) removeVMACs() {
	if r.arpIgnore != "" {
		os.WriteFile("/proc/sys/net/ipv4/conf/"+r.ifi.Name+"/arp_ignore", []byte(r.arpIgnore), 0o644)
		r.arpIgnore = ""
	}
	for _, in := range r.inst {
		if in.vmac == nil {
			continue
		}
		if l, err := netlink.LinkByIndex(in.vmac.Index); err == nil {
			netlink.LinkDel(l)
		}
		in.vmac = nil
	}
}

func (r *Router) addVIP(in *instance, v netip.Addr) {
	idx := r.ifi.Index
	if in.vmac != nil {
		idx = in.vmac.Index
	}
	l, err := netlink.LinkByIndex(idx)
	if err != nil {
		r.log.Error("vrrp: interface", "err", err)
		return
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: v.AsSlice(), Mask: net.CIDRMask(v.BitLen(), v.BitLen())}}
	if v.Is6() {
		a.Flags = 0x80 // IFA_F_NODAD: a master's VIP must work at once
	}
	if err := netlink.AddrAdd(l, a); err != nil && !errors.Is(err, errExist) {
		r.log.Error("vrrp: add VIP", "vip", v, "err", err)
		return
	}
	r.added[v] = idx
}

// removeStale removes from the interface the instances' VIPs that an
// earlier run left there (killed while master, or standing in): a backup
// holding one answers ARP for it beside the master. keepalived removes its
// VIPs at start too; the instance adds them again once master. Only
// host-prefix addresses are ours (an address the operator configured with
// another prefix length is left alone).
func (r *Router) removeStale() {
	l, err := netlink.LinkByIndex(r.ifi.Index)
	if err != nil {
		return
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		r.log.Warn("vrrp: list the interface's addresses", "err", err)
		return
	}
	vips := map[netip.Addr]bool{}
	for _, in := range r.inst {
		for _, v := range in.vips {
			vips[v] = true
		}
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ones, bits := a.Mask.Size(); !vips[ip] || ones != bits {
			continue
		}
		if err := netlink.AddrDel(l, &a); err != nil {
			r.log.Warn("vrrp: remove a VIP left by an earlier run", "vip", ip, "err", err)
			continue
		}
		r.log.Info("vrrp: removed a VIP left on the interface by an earlier run", "vip", ip, "interface", r.ifi.Name)
	}
}

func (r *Router) delVIP(v netip.Addr) {
	idx, ok := r.added[v]
	if !ok {
		return
	}
	l, err := netlink.LinkByIndex(idx)
	if err == nil {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: v.AsSlice(), Mask: net.CIDRMask(v.BitLen(), v.BitLen())}}
		err = netlink.AddrDel(l, a)
	}
	if err != nil {
		r.log.Warn("vrrp: remove VIP", "vip", v, "err", err)
	}
	delete(r.added, v)
}

// announce tells the segment where the VIPs are now: a gratuitous ARP for
// each IPv4 VIP, an unsolicited neighbour advertisement (override) for
// each IPv6 one.
func (r *Router) announce(in *instance) {
	ifi := r.ifi
	if in.vmac != nil {
		ifi = in.vmac
	}
	if in.v6 {
		c, _, err := ndp.Listen(ifi, ndp.LinkLocal)
		if err != nil {
			r.log.Warn("vrrp: neighbour advertisements", "err", err)
			return
		}
		defer c.Close()
		for _, v := range in.vips {
			na := &ndp.NeighborAdvertisement{Override: true, TargetAddress: v,
				Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: ifi.HardwareAddr}}}
			if err := c.WriteTo(na, nil, netip.MustParseAddr("ff02::1")); err != nil {
				r.log.Warn("vrrp: neighbour advertisement", "vip", v, "err", err)
			}
		}
		return
	}
	c, err := arp.Dial(ifi)
	if err != nil {
		r.log.Warn("vrrp: gratuitous ARP", "err", err)
		return
	}
	defer c.Close()
	for _, v := range in.vips {
		p, err := arp.NewPacket(arp.OperationRequest, ifi.HardwareAddr, v, ethernet.Broadcast, v)
		if err == nil {
			err = c.WriteTo(p, ethernet.Broadcast)
		}
		if err != nil {
			r.log.Warn("vrrp: gratuitous ARP", "vip", v, "err", err)
		}
	}
}

// errExist is the kernel's answer to adding an address that is there.
var errExist = syscall.EEXIST
