// Package kernel announces VIPs through an external routing daemon (FRR,
// BIRD), the classic "LVS-ospf" way: anycastd puts each VIP as a host
// route into a routing table, or as a host address on an interface, and
// the daemon redistributes what it finds there; removing it withdraws.
//
// Table mode: `ip route add VIP/32 dev lo table N proto P`; the daemon
// imports table N (BIRD: a kernel protocol with `kernel table N` and
// `learn`; FRR: `ip import-table N`) and redistributes it.
// Interface mode: `ip addr add VIP/32 dev IF`; the daemon redistributes
// connected routes of IF (BIRD: protocol direct; FRR: redistribute
// connected), or IF is an OSPF stub interface.
package kernel

import (
	"cmp"
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
	"github.com/vishvananda/netlink"
)

// Announcer is a routing.Announcer over the kernel's routing table or an
// interface's addresses. Safe for concurrent use.
type Announcer struct {
	cfg configs.Kernel
	log *slog.Logger
	// Resync is how often Run repairs what someone else changed.
	Resync time.Duration

	mu   sync.Mutex
	want map[netip.Prefix]routing.Announcement
	// added are the interface addresses this announcer put there (in
	// interface mode it removes only those).
	added map[netip.Prefix]bool
}

var _ routing.Announcer = (*Announcer)(nil)

// New returns an announcer for cfg (validated by configs).
func New(cfg configs.Kernel, log *slog.Logger) *Announcer {
	return &Announcer{cfg: cfg, log: log, Resync: 10 * time.Second,
		want: map[netip.Prefix]routing.Announcement{}, added: map[netip.Prefix]bool{}}
}

// Run reconciles on every Resync until ctx ends, then withdraws all.
func (a *Announcer) Run(ctx context.Context) error {
	if err := a.sync(); err != nil {
		a.log.Error("kernel announce", "err", err)
	}
	t := time.NewTicker(a.Resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			a.mu.Lock()
			a.want = map[netip.Prefix]routing.Announcement{}
			a.mu.Unlock()
			return a.sync()
		case <-t.C:
			if err := a.sync(); err != nil {
				a.log.Error("kernel announce", "err", err)
			}
		}
	}
}

// Set implements routing.Announcer: it applies at once.
func (a *Announcer) Set(ctx context.Context, anns []routing.Announcement) error {
	want := map[netip.Prefix]routing.Announcement{}
	for _, x := range anns {
		p := x.Prefix.Masked()
		if !p.IsValid() {
			return fmt.Errorf("invalid prefix %v", x.Prefix)
		}
		x.Prefix = p
		want[p] = x
	}
	a.mu.Lock()
	a.want = want
	a.mu.Unlock()
	return a.sync()
}

// Status implements routing.Announcer.
// Changed implements routing.Announcer: the kernel route holds what it is
// Set, nothing else.
func (a *Announcer) Changed() <-chan struct{} { return nil }

func (a *Announcer) Status() routing.Status {
	st := routing.Status{Mode: configs.ModeKernel}
	have, err := a.current()
	if err != nil {
		return st
	}
	for _, p := range have {
		st.Announced = append(st.Announced, routing.Announcement{Prefix: p})
	}
	return st
}

func (a *Announcer) sync() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	have, err := a.current()
	if err != nil {
		return err
	}
	var errs []error
	for p := range a.want {
		if slices.Contains(have, p) {
			continue
		}
		if err := a.add(p); err != nil {
			errs = append(errs, err)
			continue
		}
		a.log.Info("route announced", "prefix", p, "via", a.where())
	}
	for _, p := range have {
		if _, ok := a.want[p]; ok {
			continue
		}
		if err := a.del(p); err != nil {
			errs = append(errs, err)
			continue
		}
		a.log.Info("route withdrawn", "prefix", p, "via", a.where())
	}
	return errors.Join(errs...)
}

func (a *Announcer) where() string {
	if a.cfg.Table != 0 {
		return fmt.Sprintf("table %d proto %d", a.cfg.Table, a.cfg.Protocol)
	}
	return "address on " + a.cfg.Interface
}

// current lists what this announcer has in the kernel: routes of our
// protocol in our table, or the addresses it added to the interface.
func (a *Announcer) current() ([]netip.Prefix, error) {
	if a.cfg.Table != 0 {
		var out []netip.Prefix
		for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			rs, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: a.cfg.Table, Protocol: netlink.RouteProtocol(a.cfg.Protocol)},
				netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
			if err != nil {
				return nil, fmt.Errorf("list routes of table %d: %w", a.cfg.Table, err)
			}
			for _, r := range rs {
				if p, ok := prefixOf(r.Dst); ok {
					out = append(out, p)
				}
			}
		}
		return out, nil
	}
	link, err := netlink.LinkByName(a.cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", a.cfg.Interface, err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", a.cfg.Interface, err)
	}
	var out []netip.Prefix
	for _, ad := range addrs {
		p, ok := prefixOf(ad.IPNet)
		// IPv4 addresses carry our label, so a restarted anycastd knows
		// them; IPv6 has no labels: only what this process added.
		if ok && (a.added[p] || (p.Addr().Is4() && ad.Label == a.label())) {
			out = append(out, p)
		}
	}
	return out, nil
}

// label marks the IPv4 addresses this announcer adds ("IF:vip", at most
// 15 bytes as the kernel requires).
func (a *Announcer) label() string {
	l := a.cfg.Interface + ":vip"
	if len(l) > 15 {
		l = l[:15]
	}
	return l
}

func (a *Announcer) add(p netip.Prefix) error {
	lo, err := netlink.LinkByName(cmp.Or(a.cfg.Interface, "lo"))
	if err != nil {
		return err
	}
	if a.cfg.Table != 0 {
		r := &netlink.Route{Dst: ipNet(p), LinkIndex: lo.Attrs().Index, Table: a.cfg.Table,
			Protocol: netlink.RouteProtocol(a.cfg.Protocol), Priority: a.cfg.Metric, Scope: netlink.SCOPE_LINK}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("add route %s to table %d: %w", p, a.cfg.Table, err)
		}
		return nil
	}
	ad := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is6() {
		ad.Flags = syscall.IFA_F_NODAD
	} else {
		ad.Label = a.label()
	}
	if err := netlink.AddrAdd(lo, ad); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("add %s to %s: %w", p, a.cfg.Interface, err)
	}
	a.added[p] = true
	return nil
}

func (a *Announcer) del(p netip.Prefix) error {
	if a.cfg.Table != 0 {
		// The kernel matches scope too: delete what add made.
		r := &netlink.Route{Dst: ipNet(p), Table: a.cfg.Table, Protocol: netlink.RouteProtocol(a.cfg.Protocol),
			Scope: netlink.SCOPE_LINK}
		if err := netlink.RouteDel(r); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("delete route %s from table %d: %w", p, a.cfg.Table, err)
		}
		return nil
	}
	link, err := netlink.LinkByName(a.cfg.Interface)
	if err != nil {
		return err
	}
	if err := netlink.AddrDel(link, &netlink.Addr{IPNet: ipNet(p)}); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
		return fmt.Errorf("remove %s from %s: %w", p, a.cfg.Interface, err)
	}
	delete(a.added, p)
	return nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, _ := n.Mask.Size()
	if ones != a.BitLen() {
		return netip.Prefix{}, false // only host routes are ours
	}
	return netip.PrefixFrom(a, ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
