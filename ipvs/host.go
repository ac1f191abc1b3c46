package ipvs

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
)

// HostChange is one change anycastd made to the host, recorded before it
// was made so that Restore can undo it.
type HostChange struct {
	// Kind is "sysctl", "address", "local-route" or "link-up".
	Kind string `json:"kind"`
	// Name is the sysctl (net.ipv4.vs.sloppy_tcp) or the interface.
	Name string `json:"name"`
	// Addr is the address added, for Kind "address", or the destination
	// of the local route, for Kind "local-route".
	Addr netip.Prefix `json:"addr,omitzero"`
	// Before and After are a sysctl's values.
	Before string `json:"before,omitempty"`
	After  string `json:"after,omitempty"`
}

func (c HostChange) String() string {
	switch c.Kind {
	case "sysctl":
		return fmt.Sprintf("sysctl %s %s -> %s", c.Name, c.Before, c.After)
	case "address":
		return fmt.Sprintf("address %s on %s", c.Addr, c.Name)
	case "local-route":
		return fmt.Sprintf("local route %s dev %s", c.Addr, c.Name)
	default:
		return fmt.Sprintf("link %s up", c.Name)
	}
}

// Host changes sysctls, addresses and links of the network namespace the
// process runs in, and journals each change in a state file before making
// it, so that Restore puts the host back as it was, also from another
// process run later (anycastd after a crash, `anyctl realserver down`).
// Every method is idempotent: a setting that already has the wanted value
// is reported unchanged and not journaled. Not safe for concurrent use.
type Host struct {
	path    string
	changes []HostChange
	// SysctlRoot is /proc/sys; tests of parsing may point it elsewhere.
	SysctlRoot string
}

// OpenHost loads the journal at statePath (absent means nothing changed
// yet). A corrupt journal is an error: restoring from a guess could break
// the host.
func OpenHost(statePath string) (*Host, error) {
	h := &Host{path: statePath, SysctlRoot: "/proc/sys"}
	data, err := os.ReadFile(statePath)
	if errors.Is(err, fs.ErrNotExist) {
		return h, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read host journal: %w", err)
	}
	if err := json.Unmarshal(data, &h.changes); err != nil {
		return nil, fmt.Errorf("host journal %s is corrupt: %w", statePath, err)
	}
	return h, nil
}

// Changes returns what the journal holds, oldest first.
func (h *Host) Changes() []HostChange { return slices.Clone(h.changes) }

// record journals c; the change may be made only if it returns nil. A
// change whose record could not be saved is not kept in memory either:
// the next attempt records it again instead of making the change with
// nothing on disk to undo it by.
func (h *Host) record(c HostChange) error {
	h.changes = append(h.changes, c)
	if err := h.save(); err != nil {
		h.changes = h.changes[:len(h.changes)-1]
		return err
	}
	return nil
}

func (h *Host) save() error {
	data, err := json.MarshalIndent(h.changes, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(h.path, data, 0o600); err != nil {
		return fmt.Errorf("write host journal: %w", err)
	}
	return nil
}

func (h *Host) journaled(kind, name string, addr netip.Prefix) int {
	return slices.IndexFunc(h.changes, func(c HostChange) bool {
		return c.Kind == kind && c.Name == name && c.Addr == addr
	})
}

// sysctlPath turns net.ipv4.conf.eth0.arp_ignore into its /proc/sys path.
// An interface name with dots is written with slashes, as sysctl(8) does:
// net.ipv4.conf.eth0/100.arp_ignore.
func (h *Host) sysctlPath(name string) string {
	parts := strings.Split(name, ".")
	for i := range parts {
		parts[i] = strings.ReplaceAll(parts[i], "/", ".")
	}
	return filepath.Join(append([]string{h.SysctlRoot}, parts...)...)
}

// ReadSysctl returns a sysctl's value. A sysctl the kernel does not have is
// an error that names it.
func (h *Host) ReadSysctl(name string) (string, error) {
	b, err := os.ReadFile(h.sysctlPath(name))
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("sysctl %s does not exist on this kernel (module not loaded, or kernel too old)", name)
	}
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Sysctl sets name to value, journaling the value it had.
func (h *Host) Sysctl(name, value string) (string, error) {
	cur, err := h.ReadSysctl(name)
	if err != nil {
		return "", err
	}
	if cur == value {
		return fmt.Sprintf("unchanged: sysctl %s = %s", name, value), nil
	}
	if h.journaled("sysctl", name, netip.Prefix{}) < 0 {
		if err := h.record(HostChange{Kind: "sysctl", Name: name, Before: cur, After: value}); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(h.sysctlPath(name), []byte(value+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("set sysctl %s = %s: %w", name, value, err)
	}
	return fmt.Sprintf("set sysctl %s %s -> %s", name, cur, value), nil
}

// AddAddress puts p on interface ifname (a VIP as /32 or /128).
func (h *Host) AddAddress(ifname string, p netip.Prefix) (string, error) {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return "", fmt.Errorf("interface %s: %w", ifname, err)
	}
	has, err := hasAddress(link, p)
	if err != nil {
		return "", err
	}
	if has {
		return fmt.Sprintf("unchanged: %s on %s", p, ifname), nil
	}
	if h.journaled("address", ifname, p) < 0 {
		if err := h.record(HostChange{Kind: "address", Name: ifname, Addr: p}); err != nil {
			return "", err
		}
	}
	a := &netlink.Addr{IPNet: prefixNet(p)}
	if p.Addr().Is6() {
		a.Flags = syscall.IFA_F_NODAD
	}
	if err := netlink.AddrAdd(link, a); err != nil && !errors.Is(err, syscall.EEXIST) {
		return "", fmt.Errorf("add %s to %s: %w", p, ifname, err)
	}
	return fmt.Sprintf("added %s to %s", p, ifname), nil
}

// LocalRouteProtocol marks the local routes a director adds (rtm_protocol
// 251; routing/kernel's routes default to 250).
const LocalRouteProtocol = 251

// AddLocalRoute makes the host accept packets to p as its own, with a
// route of type local in the local table (ip route add local P dev IF
// table local), not an interface address: IPVS sees them, while the
// addresses of the interface stay free for a routing daemon to advertise
// (BIRD's protocol direct exports addresses, not routes), so that a
// withdrawal removes the route upstream while this host still takes the
// flows that ECMP keeps sending it meanwhile. The host does not answer ARP
// for p either way (arp_ignore=1).
func (h *Host) AddLocalRoute(ifname string, p netip.Prefix) (string, error) {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return "", fmt.Errorf("interface %s: %w", ifname, err)
	}
	has, err := hasLocalRoute(p)
	if err != nil {
		return "", err
	}
	if has {
		return fmt.Sprintf("unchanged: local route %s", p), nil
	}
	if h.journaled("local-route", ifname, p) < 0 {
		if err := h.record(HostChange{Kind: "local-route", Name: ifname, Addr: p}); err != nil {
			return "", err
		}
	}
	// Appended: beside the kernel's own local route of an address p on
	// an interface (proto kernel), which goes when that address does.
	if err := netlink.RouteAppend(localRoute(link.Attrs().Index, p)); err != nil && !errors.Is(err, syscall.EEXIST) {
		return "", fmt.Errorf("add local route %s dev %s: %w", p, ifname, err)
	}
	return fmt.Sprintf("added local route %s dev %s", p, ifname), nil
}

func localRoute(ifindex int, p netip.Prefix) *netlink.Route {
	return &netlink.Route{Dst: prefixNet(p), LinkIndex: ifindex, Table: syscall.RT_TABLE_LOCAL,
		Type: syscall.RTN_LOCAL, Scope: netlink.SCOPE_HOST, Protocol: LocalRouteProtocol}
}

// hasLocalRoute reports whether the local table has our local route to p.
func hasLocalRoute(p netip.Prefix) (bool, error) {
	fam := netlink.FAMILY_V4
	if p.Addr().Is6() {
		fam = netlink.FAMILY_V6
	}
	rs, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: syscall.RT_TABLE_LOCAL, Protocol: LocalRouteProtocol, Dst: prefixNet(p)},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_DST)
	if err != nil {
		return false, fmt.Errorf("list local routes: %w", err)
	}
	return len(rs) > 0, nil
}

// LinkUp sets an interface up.
func (h *Host) LinkUp(ifname string) (string, error) {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return "", fmt.Errorf("interface %s: %w", ifname, err)
	}
	if link.Attrs().Flags&net.FlagUp != 0 {
		return fmt.Sprintf("unchanged: %s is up", ifname), nil
	}
	if h.journaled("link-up", ifname, netip.Prefix{}) < 0 {
		if err := h.record(HostChange{Kind: "link-up", Name: ifname}); err != nil {
			return "", err
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return "", fmt.Errorf("set %s up: %w", ifname, err)
	}
	return fmt.Sprintf("set %s up", ifname), nil
}

// Restore undoes every journaled change, newest first, and empties the
// journal. What is already as it was is skipped; what fails is reported
// and kept in the journal for another try.
func (h *Host) Restore() ([]string, error) {
	var done []string
	var errs []error
	var keep []HostChange
	for _, c := range slices.Backward(h.changes) {
		msg, err := h.undo(c)
		if err != nil {
			errs = append(errs, err)
			keep = append([]HostChange{c}, keep...)
			continue
		}
		done = append(done, msg)
	}
	h.changes = keep
	if len(keep) == 0 {
		if err := os.Remove(h.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	} else if err := h.save(); err != nil {
		errs = append(errs, err)
	}
	return done, errors.Join(errs...)
}

func (h *Host) undo(c HostChange) (string, error) {
	switch c.Kind {
	case "sysctl":
		cur, err := h.ReadSysctl(c.Name)
		if err != nil {
			return "", err
		}
		if cur == c.Before {
			return fmt.Sprintf("unchanged: sysctl %s = %s", c.Name, cur), nil
		}
		if err := os.WriteFile(h.sysctlPath(c.Name), []byte(c.Before+"\n"), 0o644); err != nil {
			return "", fmt.Errorf("restore sysctl %s = %s: %w", c.Name, c.Before, err)
		}
		return fmt.Sprintf("restored sysctl %s %s -> %s", c.Name, cur, c.Before), nil
	case "address":
		link, err := netlink.LinkByName(c.Name)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				return fmt.Sprintf("unchanged: %s is gone", c.Name), nil
			}
			return "", fmt.Errorf("interface %s: %w", c.Name, err)
		}
		has, label, err := addressOn(link, c.Addr)
		if err != nil {
			return "", err
		}
		if !has {
			return fmt.Sprintf("unchanged: %s not on %s", c.Addr, c.Name), nil
		}
		if label != "" && label != c.Name {
			// Someone else's now (routing/kernel labels its own
			// IF:vip): not ours to remove.
			return fmt.Sprintf("left: %s on %s has label %s, not ours", c.Addr, c.Name, label), nil
		}
		if err := netlink.AddrDel(link, &netlink.Addr{IPNet: prefixNet(c.Addr)}); err != nil {
			return "", fmt.Errorf("remove %s from %s: %w", c.Addr, c.Name, err)
		}
		return fmt.Sprintf("removed %s from %s", c.Addr, c.Name), nil
	case "local-route":
		has, err := hasLocalRoute(c.Addr)
		if err != nil {
			return "", err
		}
		if !has {
			return fmt.Sprintf("unchanged: no local route %s", c.Addr), nil
		}
		r := localRoute(0, c.Addr)
		if err := netlink.RouteDel(r); err != nil && !errors.Is(err, syscall.ESRCH) {
			return "", fmt.Errorf("remove local route %s: %w", c.Addr, err)
		}
		return fmt.Sprintf("removed local route %s", c.Addr), nil
	case "link-up":
		link, err := netlink.LinkByName(c.Name)
		if err != nil {
			return fmt.Sprintf("unchanged: %s is gone", c.Name), nil
		}
		if err := netlink.LinkSetDown(link); err != nil {
			return "", fmt.Errorf("set %s down: %w", c.Name, err)
		}
		return fmt.Sprintf("set %s down", c.Name), nil
	}
	return "", fmt.Errorf("unknown journal entry kind %q", c.Kind)
}

func hasAddress(link netlink.Link, p netip.Prefix) (bool, error) {
	has, _, err := addressOn(link, p)
	return has, err
}

// addressOn reports whether link has p, and its label (IPv4 only).
func addressOn(link netlink.Link, p netip.Prefix) (bool, string, error) {
	fam := netlink.FAMILY_V4
	if p.Addr().Is6() {
		fam = netlink.FAMILY_V6
	}
	addrs, err := netlink.AddrList(link, fam)
	if err != nil {
		return false, "", fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		if ip.Unmap() == p.Addr() && ones == p.Bits() {
			return true, a.Label, nil
		}
	}
	return false, "", nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)}
}

// HostPrefix is a VIP as a host prefix: /32 or /128.
func HostPrefix(vip netip.Addr) netip.Prefix {
	vip = vip.Unmap()
	return netip.PrefixFrom(vip, vip.BitLen())
}

// DirectorSettings says what a director needs of its host.
type DirectorSettings struct {
	// VIPs to take as local (local routes) so IPVS sees their packets.
	VIPs []netip.Addr
	// Interface is the local routes' device; "lo" by default.
	Interface string
	// NAT: some service forwards by NAT (conntrack, forwarding).
	NAT bool
}

// SetupDirector makes the host accept the VIPs' packets (a local route
// each: see AddLocalRoute) and sets the IPVS sysctls a director needs:
// sloppy_tcp and sloppy_sctp (pick up flows mid-way after an ECMP change),
// expire_nodest_conn and expire_quiescent_template (drop state of removed
// servers), arp_ignore/arp_announce so the host does not answer ARP for
// the VIPs, and conntrack and forwarding only for NAT. The local routes of
// VIPs no longer listed go, after the new ones are in; so do the VIP
// addresses that earlier versions bound on the interface (journaled), as
// the address is the routing daemon's to add and remove in kernel mode.
// It stops at the first error, after journaling what it did.
func (h *Host) SetupDirector(s DirectorSettings) ([]string, error) {
	ifname := cmp.Or(s.Interface, "lo")
	sysctls := [][2]string{
		{"net.ipv4.vs.sloppy_tcp", "1"},
		{"net.ipv4.vs.sloppy_sctp", "1"},
		{"net.ipv4.vs.expire_nodest_conn", "1"},
		{"net.ipv4.vs.expire_quiescent_template", "1"},
		{"net.ipv4.conf.all.arp_ignore", "1"},
		{"net.ipv4.conf.all.arp_announce", "2"},
	}
	if s.NAT {
		sysctls = append(sysctls,
			[2]string{"net.ipv4.vs.conntrack", "1"},
			[2]string{"net.ipv4.ip_forward", "1"},
			[2]string{"net.ipv6.conf.all.forwarding", "1"},
		)
	}
	var out []string
	for _, v := range s.VIPs {
		msg, err := h.AddLocalRoute(ifname, HostPrefix(v))
		if err != nil {
			return out, err
		}
		out = append(out, msg)
	}
	more, err := h.unrouteExcept(ifname, s.VIPs)
	out = append(out, more...)
	if err != nil {
		return out, err
	}
	more, err = h.UnbindExcept(ifname, nil)
	out = append(out, more...)
	if err != nil {
		return out, err
	}
	more, err = h.apply(sysctls, ifname, nil)
	return append(out, more...), err
}

// unrouteExcept removes the journaled local routes on ifname that are not
// host prefixes of keep.
func (h *Host) unrouteExcept(ifname string, keep []netip.Addr) ([]string, error) {
	var out []string
	for _, c := range slices.Clone(h.changes) {
		if c.Kind != "local-route" || c.Name != ifname || slices.ContainsFunc(keep, func(v netip.Addr) bool { return HostPrefix(v) == c.Addr }) {
			continue
		}
		msg, err := h.undo(c)
		if err != nil {
			return out, err
		}
		i := h.journaled("local-route", ifname, c.Addr)
		h.changes = slices.Delete(h.changes, i, i+1)
		if err := h.save(); err != nil {
			h.changes = slices.Insert(h.changes, i, c)
			return out, err
		}
		out = append(out, msg)
	}
	return out, nil
}

// UnbindExcept removes from ifname the addresses this Host added there
// (the journaled ones) that are not host prefixes of keep: the VIPs of
// services that went away. An address anycastd did not add is never
// touched.
func (h *Host) UnbindExcept(ifname string, keep []netip.Addr) ([]string, error) {
	var out []string
	for _, c := range slices.Clone(h.changes) {
		if c.Kind != "address" || c.Name != ifname || slices.ContainsFunc(keep, func(v netip.Addr) bool { return HostPrefix(v) == c.Addr }) {
			continue
		}
		msg, err := h.RemoveAddress(ifname, c.Addr)
		if err != nil {
			return out, err
		}
		out = append(out, msg)
	}
	return out, nil
}

// RemoveAddress takes p off ifname, if this Host added it (journaled),
// and drops it from the journal. An address it did not add is an error:
// it belongs to someone else.
func (h *Host) RemoveAddress(ifname string, p netip.Prefix) (string, error) {
	i := h.journaled("address", ifname, p)
	if i < 0 {
		return "", fmt.Errorf("%s on %s was not added by anycastd: left in place", p, ifname)
	}
	msg, err := h.undo(h.changes[i])
	if err != nil {
		return "", err
	}
	h.changes = slices.Delete(h.changes, i, i+1)
	if err := h.save(); err != nil {
		return "", err
	}
	return msg, nil
}

// RealServerMode is how a real server receives a director's packets.
type RealServerMode string

// Real-server modes.
const (
	RealServerDR  RealServerMode = "dr"
	RealServerTUN RealServerMode = "tun"
)

// SetupRealServer does what the classic LVS real-server script does: the
// VIPs as host addresses on the loopback (DR) or on the IPIP tunnel
// interface tunl0 (TUN, IPv4 only), and arp_ignore=1 / arp_announce=2 on lo
// and all so the real server never answers ARP for a VIP or uses it as the
// source of its own ARP requests. TUN also turns off rp_filter on tunl0 and
// all: the tunnelled packets carry the client's source address.
func (h *Host) SetupRealServer(mode RealServerMode, vips []netip.Addr) ([]string, error) {
	if len(vips) == 0 {
		return nil, errors.New("no VIP given")
	}
	sysctls := [][2]string{
		{"net.ipv4.conf.all.arp_ignore", "1"},
		{"net.ipv4.conf.all.arp_announce", "2"},
		{"net.ipv4.conf.lo.arp_ignore", "1"},
		{"net.ipv4.conf.lo.arp_announce", "2"},
	}
	ifname := "lo"
	var out []string
	switch mode {
	case RealServerDR:
	case RealServerTUN:
		for _, v := range vips {
			if !v.Unmap().Is4() {
				return nil, fmt.Errorf("VIP %s: tun mode supports IPv4 VIPs only (IPIP)", v)
			}
		}
		ifname = "tunl0"
		msg, err := ensureTunl0()
		if err != nil {
			return nil, err
		}
		if msg != "" {
			out = append(out, msg)
		}
		m, err := h.LinkUp(ifname)
		if err != nil {
			return out, err
		}
		out = append(out, m)
		sysctls = append(sysctls,
			[2]string{"net.ipv4.conf.tunl0.rp_filter", "0"},
			[2]string{"net.ipv4.conf.all.rp_filter", "0"},
		)
	default:
		return nil, fmt.Errorf("unknown real-server mode %q (dr, tun)", mode)
	}
	more, err := h.apply(sysctls, ifname, vips)
	return append(out, more...), err
}

// ensureTunl0 makes the IPIP fallback device tunl0 exist: it appears when
// the ipip module loads, which creating an ipip link triggers.
func ensureTunl0() (string, error) {
	if _, err := netlink.LinkByName("tunl0"); err == nil {
		return "", nil
	}
	err := netlink.LinkAdd(&netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: "tunl0"}})
	if err != nil && !errors.Is(err, syscall.EEXIST) {
		return "", fmt.Errorf("create IPIP device tunl0 (is the ipip module available?): %w", err)
	}
	if _, err := netlink.LinkByName("tunl0"); err != nil {
		return "", fmt.Errorf("IPIP device tunl0 did not appear: %w", err)
	}
	return "loaded IPIP: tunl0 exists", nil
}

func (h *Host) apply(sysctls [][2]string, ifname string, vips []netip.Addr) ([]string, error) {
	var out []string
	for _, v := range vips {
		msg, err := h.AddAddress(ifname, HostPrefix(v))
		if err != nil {
			return out, err
		}
		out = append(out, msg)
	}
	for _, kv := range sysctls {
		msg, err := h.Sysctl(kv[0], kv[1])
		if err != nil {
			return out, err
		}
		out = append(out, msg)
	}
	return out, nil
}
