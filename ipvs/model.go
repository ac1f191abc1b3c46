// Package ipvs is the IPVS (LVS) side of a director: the table model, the
// diff of two tables into an ordered plan of operations, the Dataplane that
// applies plans (the kernel through moby/ipvs, or memory for tests), the
// reconciler that adopts existing entries without ever flushing, and the
// host settings IPVS needs (VIP binding, sysctls) recorded so they can be
// put back.
package ipvs

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Protocol is an IP protocol number.
type Protocol uint16

// Protocols IPVS balances.
const (
	TCP  Protocol = 6
	UDP  Protocol = 17
	SCTP Protocol = 132
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case SCTP:
		return "sctp"
	case 0:
		return "any"
	}
	return fmt.Sprintf("proto-%d", uint16(p))
}

// ParseProtocol parses "tcp", "udp" or "sctp".
func ParseProtocol(s string) (Protocol, error) {
	switch s {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	case "sctp":
		return SCTP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q", s)
}

// Family is an address family as the kernel numbers it.
type Family uint16

// Address families.
const (
	IPv4 Family = 2  // AF_INET
	IPv6 Family = 10 // AF_INET6
)

// FamilyOf returns the family of a; a v4-mapped address is IPv4.
func FamilyOf(a netip.Addr) Family {
	if a.Unmap().Is4() {
		return IPv4
	}
	return IPv6
}

// Forward is a forwarding method, numbered as the kernel's
// IP_VS_CONN_F_* values.
type Forward uint32

// Forwarding methods.
const (
	NAT Forward = 0 // masquerading
	TUN Forward = 2 // IP-in-IP tunnel
	DR  Forward = 3 // direct routing
)

func (f Forward) String() string {
	switch f {
	case NAT:
		return "nat"
	case TUN:
		return "tun"
	case DR:
		return "dr"
	}
	return fmt.Sprintf("fwd-%d", uint32(f))
}

// ParseForward parses "dr", "nat" or "tun".
func ParseForward(s string) (Forward, error) {
	switch s {
	case "dr":
		return DR, nil
	case "nat":
		return NAT, nil
	case "tun":
		return TUN, nil
	}
	return 0, fmt.Errorf("unknown forwarding method %q", s)
}

// Flags are IPVS service flags (IP_VS_SVC_F_*) that anycastd manages.
type Flags uint32

// Service flags. SchedFlag1..3 mean different things per scheduler:
// sh-fallback and mh-fallback are SchedFlag1, sh-port and mh-port SchedFlag2.
const (
	FlagPersistent Flags = 0x0001
	FlagHashed     Flags = 0x0002 // set by the kernel on every service; never ours
	FlagOnePacket  Flags = 0x0004
	SchedFlag1     Flags = 0x0008
	SchedFlag2     Flags = 0x0010
	SchedFlag3     Flags = 0x0020
)

// managedFlags are the flags a Service carries; others the kernel reports
// (FlagHashed) are ignored when tables are compared.
const managedFlags = FlagOnePacket | SchedFlag1 | SchedFlag2 | SchedFlag3

// ParseSchedFlags turns scheduler flag names ("mh-port") into Flags.
func ParseSchedFlags(scheduler string, names []string) (Flags, error) {
	var f Flags
	for _, n := range names {
		sched, flag, ok := strings.Cut(n, "-")
		if !ok || sched != scheduler {
			return 0, fmt.Errorf("flag %q is not a flag of scheduler %s", n, scheduler)
		}
		switch flag {
		case "fallback":
			f |= SchedFlag1
		case "port":
			f |= SchedFlag2
		default:
			return 0, fmt.Errorf("unknown scheduler flag %q", n)
		}
	}
	return f, nil
}

// Fallback is the flag that makes a hashing scheduler (mh, sh) send a new
// connection whose slot belongs to a destination at weight 0 to another
// destination; zero for the other schedulers. mh and sh keep a weight-0
// destination's slots (its last non-zero weight fills the table), so
// without it every new connection hashing to a down real server is
// refused ("no destination available", an ICMP port unreachable the kernel
// rate-limits): about 1/N of new clients fail while one of N is down.
// Measured in the VM: 55 of 200 new connections failed without it, 0 with
// it. The fallback choice is itself a hash, the same on every director.
func Fallback(scheduler string) Flags {
	if scheduler == "mh" || scheduler == "sh" {
		return SchedFlag1
	}
	return 0
}

// OrderSensitive reports whether a scheduler's choice depends on the order
// of the service's destinations in the kernel (mh builds its Maglev table,
// sh and dh their hash buckets, by walking that list). For these, every
// director must insert the same destinations in the same order to pick the
// same real server for a flow.
func OrderSensitive(scheduler string) bool {
	switch scheduler {
	case "mh", "sh", "dh":
		return true
	}
	return false
}

// ServiceKey identifies a virtual service: by address, protocol and port,
// or by firewall mark (then Addr, Protocol and Port are zero).
type ServiceKey struct {
	Family   Family
	FWMark   uint32
	Protocol Protocol
	Addr     netip.Addr
	Port     uint16
}

func (k ServiceKey) String() string {
	if k.FWMark != 0 {
		if k.Family == IPv6 {
			return fmt.Sprintf("fwmark %d (ipv6)", k.FWMark)
		}
		return fmt.Sprintf("fwmark %d", k.FWMark)
	}
	return fmt.Sprintf("%s %s", k.Protocol, netip.AddrPortFrom(k.Addr, k.Port))
}

// Compare orders keys deterministically: fwmark services after address
// services, then by family, address, protocol, port.
func (k ServiceKey) Compare(o ServiceKey) int {
	return cmp.Or(
		cmp.Compare(k.FWMark, o.FWMark),
		cmp.Compare(k.Family, o.Family),
		k.Addr.Compare(o.Addr),
		cmp.Compare(k.Protocol, o.Protocol),
		cmp.Compare(k.Port, o.Port),
	)
}

// Service is a virtual service and its destinations.
type Service struct {
	ServiceKey
	Scheduler string
	Flags     Flags
	// Timeout is the persistence timeout in seconds; 0 is not persistent.
	Timeout uint32
	// PersistBits is the persistence netmask as a prefix length; 0 means
	// the whole address (32 or 128).
	PersistBits int
	// DrainTimeout is how long a destination removed from the service
	// stays at weight 0 while its connections end (see Drainer); 0
	// removes it at once. Not a kernel setting.
	DrainTimeout time.Duration
	// Stats are the kernel's counters, read by Table; ignored by Diff.
	Stats Stats
	// Destinations in insertion order. For an order-sensitive scheduler
	// this order is part of the service: two directors with the same
	// destinations in the same order pick the same real server.
	Destinations []Destination
}

// persistBits is PersistBits with its default made explicit.
func (s *Service) persistBits() int {
	if s.PersistBits > 0 {
		return s.PersistBits
	}
	return s.persistFull()
}

func (s *Service) persistFull() int {
	if s.Family == IPv6 {
		return 128
	}
	return 32
}

// sameSettings reports whether two services have the same settings
// (what UpdateService changes), ignoring destinations.
func (s *Service) sameSettings(o *Service) bool {
	return s.Scheduler == o.Scheduler && s.Flags&managedFlags == o.Flags&managedFlags &&
		s.Timeout == o.Timeout && (s.Timeout == 0 || s.persistBits() == o.persistBits())
}

// DestKey identifies a destination within its service.
type DestKey struct {
	Addr netip.Addr
	Port uint16
}

func (k DestKey) String() string { return netip.AddrPortFrom(k.Addr, k.Port).String() }

// Destination is a real server of a service.
type Destination struct {
	DestKey
	Weight         int
	Forward        Forward
	UpperThreshold uint32
	LowerThreshold uint32

	// Read from the kernel, ignored by Diff.
	ActiveConns   int
	InactiveConns int
	Stats         Stats
}

// Stats are IPVS traffic counters since the entry was created. In DR and
// TUN the replies bypass the director, so OutPkts and OutBytes stay 0.
type Stats struct {
	Conns    uint64
	InPkts   uint64
	OutPkts  uint64
	InBytes  uint64
	OutBytes uint64
}

// sameSettings reports whether two destinations have the same settings
// (what UpdateDestination changes).
func (d *Destination) sameSettings(o *Destination) bool {
	return d.Weight == o.Weight && d.Forward == o.Forward &&
		d.UpperThreshold == o.UpperThreshold && d.LowerThreshold == o.LowerThreshold
}

// Table is a set of services. Services with the same key must not repeat.
type Table struct {
	Services []Service
}

// Index returns the services by key.
func (t Table) Index() map[ServiceKey]*Service {
	m := make(map[ServiceKey]*Service, len(t.Services))
	for i := range t.Services {
		m[t.Services[i].ServiceKey] = &t.Services[i]
	}
	return m
}

// Sorted returns a copy of t with services in key order (destinations keep
// their order). Two equal tables are identical once sorted.
func (t Table) Sorted() Table {
	out := Table{Services: slices.Clone(t.Services)}
	slices.SortFunc(out.Services, func(a, b Service) int { return a.Compare(b.ServiceKey) })
	return out
}

// Problems reports the services of t that cannot be applied, each with
// its reason: a key that repeats (every copy of it), no scheduler, an
// address not of the service's family, a destination that repeats or is of
// another family. The rest of t can be applied without them: one bad
// service costs that service, not the table. nil when t is sound.
func (t Table) Problems() map[ServiceKey]error {
	var out map[ServiceKey]error
	bad := func(k ServiceKey, format string, args ...any) {
		if out == nil {
			out = map[ServiceKey]error{}
		}
		if _, ok := out[k]; !ok {
			out[k] = fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
		}
	}
	seen := make(map[ServiceKey]bool, len(t.Services))
	for i := range t.Services {
		s := &t.Services[i]
		if seen[s.ServiceKey] {
			bad(s.ServiceKey, "service %s appears twice", s.ServiceKey)
			continue
		}
		seen[s.ServiceKey] = true
		if s.Scheduler == "" {
			bad(s.ServiceKey, "service %s has no scheduler", s.ServiceKey)
		}
		if s.FWMark == 0 && (!s.Addr.IsValid() || FamilyOf(s.Addr) != s.Family) {
			bad(s.ServiceKey, "service %s: address does not match family %d", s.ServiceKey, s.Family)
		}
		if d, ok := repeatedDest(s.Destinations); ok {
			bad(s.ServiceKey, "service %s: destination %s appears twice", s.ServiceKey, d)
		}
		for _, d := range s.Destinations {
			if !d.Addr.IsValid() || FamilyOf(d.Addr) != s.Family {
				bad(s.ServiceKey, "service %s: destination %s is not of the service's family", s.ServiceKey, d.DestKey)
				break
			}
		}
	}
	return out
}

// ErrInvalid is the reason of a service that Problems refuses.
var ErrInvalid = errors.New("invalid service")

// Check reports a table that cannot be applied whole: Problems, joined
// in key order (nil when t is sound).
func (t Table) Check() error {
	p := t.Problems()
	keys := slices.SortedFunc(maps.Keys(p), ServiceKey.Compare)
	errs := make([]error, 0, len(keys))
	for _, k := range keys {
		errs = append(errs, p[k])
	}
	return errors.Join(errs...)
}

// repeatedDest returns a destination key that ds holds twice: by scanning
// the usual handful (Check runs on every loop turn), with a map beyond.
func repeatedDest(ds []Destination) (DestKey, bool) {
	if len(ds) > destScanMax {
		seen := make(map[DestKey]bool, len(ds))
		for _, d := range ds {
			if seen[d.DestKey] {
				return d.DestKey, true
			}
			seen[d.DestKey] = true
		}
		return DestKey{}, false
	}
	for i := range ds {
		for j := range i {
			if ds[j].DestKey == ds[i].DestKey {
				return ds[i].DestKey, true
			}
		}
	}
	return DestKey{}, false
}
