package vrrp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
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

	mu     sync.Mutex
	wanted map[netip.Addr]bool
	inst   map[uint8]*instance
	events chan event
	ifi    *net.Interface
	self4  netip.Addr
	self6  netip.Addr
	conn4  *ipv4.PacketConn
	conn6  *ipv6.PacketConn
	added  map[netip.Addr]bool
}

type instance struct {
	cfg  configs.VRRPInstance
	m    *Machine
	v6   bool
	vips []netip.Addr
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
	if cfg.VirtualMAC {
		return nil, errors.New("routing.vrrp.virtual_mac is not supported yet: the VIPs use the interface's MAC")
	}
	r := &Router{cfg: cfg, log: log, wanted: map[netip.Addr]bool{}, inst: map[uint8]*instance{},
		events: make(chan event, 64), added: map[netip.Addr]bool{}}
	for _, ic := range cfg.Instances {
		in := &instance{cfg: ic, vips: ic.VIPs}
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
		st.Peers = append(st.Peers, routing.Peer{Address: in.masterAddr(), ASN: uint32(vrid), State: state})
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
		defer r.conn4.Close()
	}
	if need6 {
		if !r.self6.IsValid() {
			return fmt.Errorf("vrrp interface %s has no IPv6 link-local address to send from", ifi.Name)
		}
		if err := r.open6(); err != nil {
			return err
		}
		defer r.conn6.Close()
	}
	now := time.Now()
	r.mu.Lock()
	for vrid, in := range r.inst {
		self := r.self4
		if in.v6 {
			self = r.self6
		}
		in.m = NewMachine(Config{VRID: vrid, Priority: r.priority(in), Interval: r.cfg.AdvertInterval,
			Preempt: in.cfg.Preempt, PreemptDelay: in.cfg.PreemptDelay, Self: self})
		r.do(in, in.m.Start(now))
	}
	r.mu.Unlock()
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
		select {
		case <-ctx.Done():
			return nil
		case ev := <-r.events:
			r.handle(ev)
		case <-timer.C:
		}
		r.mu.Lock()
		now := time.Now()
		for _, in := range r.inst {
			r.do(in, in.m.SetPriority(now, r.priority(in)))
			r.do(in, in.m.Tick(now))
		}
		r.mu.Unlock()
	}
}

func (r *Router) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	for _, in := range r.inst {
		if in.m != nil {
			r.do(in, in.m.Stop(now))
		}
	}
	for v := range r.added {
		r.delVIP(v)
	}
}

func (r *Router) handle(ev event) {
	if ev.b == nil {
		return
	}
	if len(ev.b) < 2 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	in := r.inst[ev.b[1]]
	if in == nil || in.v6 != ev.v6 {
		return // another VRID on the segment (RFC 5798 7.1: discard)
	}
	a, err := Unmarshal(ev.b, ev.src, ev.dst)
	if err != nil {
		r.log.Debug("vrrp: packet dropped", "from", ev.src, "err", err)
		return
	}
	if a.Priority == PriorityOwner && in.m.State() != Master && uint8(in.cfg.Priority) == PriorityOwner {
		r.log.Warn("vrrp: another router claims to own the addresses", "vrid", a.VRID, "from", ev.src)
	}
	r.do(in, in.m.Receive(ev.at, ev.src, a))
}

// do carries out a machine's actions. Called with r.mu held.
func (r *Router) do(in *instance, acts []Action) {
	for _, a := range acts {
		switch a.Kind {
		case Send:
			if err := r.send(in, a.Priority); err != nil {
				r.log.Warn("vrrp: send advertisement", "vrid", in.cfg.VRID, "err", err)
			}
		case TakeOver:
			r.log.Info("vrrp: master", "instance", in.cfg.Name, "vrid", in.cfg.VRID, "vips", in.vips)
			for _, v := range in.vips {
				r.addVIP(v)
			}
			r.announce(in)
		case Release:
			r.log.Info("vrrp: backup, releasing", "instance", in.cfg.Name, "vrid", in.cfg.VRID)
			for _, v := range in.vips {
				r.delVIP(v)
			}
		}
	}
}

func (r *Router) send(in *instance, prio uint8) error {
	a := Advert{VRID: uint8(in.cfg.VRID), Priority: prio, Interval: r.cfg.AdvertInterval, Addrs: in.vips}
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
			cm := &ipv6.ControlMessage{HopLimit: 255, Src: r.self6.AsSlice(), IfIndex: r.ifi.Index}
			if _, err := r.conn6.WriteTo(b, cm, &net.IPAddr{IP: dst.AsSlice(), Zone: r.ifi.Name}); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		b, err := a.Marshal(r.self4, dst)
		if err != nil {
			return err
		}
		cm := &ipv4.ControlMessage{TTL: 255, Src: r.self4.AsSlice(), IfIndex: r.ifi.Index}
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
	go func() {
		buf := make([]byte, 1500)
		for {
			n, cm, src, err := p.ReadFrom(buf)
			if err != nil {
				return
			}
			// RFC 5798 7.1: TTL must be 255 (it never crossed a
			// router), and only our interface counts.
			if cm == nil || cm.IfIndex != r.ifi.Index || cm.TTL != 255 {
				continue
			}
			s, _ := netip.AddrFromSlice(src.(*net.IPAddr).IP)
			d, _ := netip.AddrFromSlice(cm.Dst)
			if s.Unmap() == r.self4 {
				continue
			}
			r.events <- event{src: s.Unmap(), dst: d.Unmap(), b: slices.Clone(buf[:n]), at: time.Now()}
		}
	}()
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
	go func() {
		buf := make([]byte, 1500)
		for {
			n, cm, src, err := p.ReadFrom(buf)
			if err != nil {
				return
			}
			if cm == nil || cm.IfIndex != r.ifi.Index || cm.HopLimit != 255 {
				continue
			}
			s, _ := netip.AddrFromSlice(src.(*net.IPAddr).IP)
			d, _ := netip.AddrFromSlice(cm.Dst)
			if s == r.self6 {
				continue
			}
			r.events <- event{src: s, dst: d, b: slices.Clone(buf[:n]), v6: true, at: time.Now()}
		}
	}()
	return nil
}

func (r *Router) link() (netlink.Link, error) { return netlink.LinkByIndex(r.ifi.Index) }

func (r *Router) addVIP(v netip.Addr) {
	l, err := r.link()
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
	r.added[v] = true
}

func (r *Router) delVIP(v netip.Addr) {
	if !r.added[v] {
		return
	}
	l, err := r.link()
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
	if in.v6 {
		c, _, err := ndp.Listen(r.ifi, ndp.LinkLocal)
		if err != nil {
			r.log.Warn("vrrp: neighbour advertisements", "err", err)
			return
		}
		defer c.Close()
		for _, v := range in.vips {
			na := &ndp.NeighborAdvertisement{Override: true, TargetAddress: v,
				Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: r.ifi.HardwareAddr}}}
			if err := c.WriteTo(na, nil, netip.MustParseAddr("ff02::1")); err != nil {
				r.log.Warn("vrrp: neighbour advertisement", "vip", v, "err", err)
			}
		}
		return
	}
	c, err := arp.Dial(r.ifi)
	if err != nil {
		r.log.Warn("vrrp: gratuitous ARP", "err", err)
		return
	}
	defer c.Close()
	for _, v := range in.vips {
		p, err := arp.NewPacket(arp.OperationRequest, r.ifi.HardwareAddr, v, ethernet.Broadcast, v)
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
