package ipvs

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"

	mobyipvs "github.com/moby/ipvs"
)

// Kernel is the Dataplane of the Linux kernel's IPVS, over generic netlink
// (github.com/moby/ipvs). It is safe for concurrent use.
type Kernel struct {
	mu  sync.Mutex
	h   *mobyipvs.Handle
	b   *batcher // Apply's socket: requests in batches
	b2  *batcher // a second one: large plans go out on both at once
	ops int
	// nodest is net.ipv4.vs.expire_nodest_conn of the namespace, opened
	// there (nil if it could not be): see Apply.
	nodest *os.File
	log    *slog.Logger // nil: nothing logged
}

// OpenKernel opens IPVS in the network namespace at nsPath
// (/run/netns/NAME, /proc/PID/ns/net), or in the caller's namespace when
// nsPath is "". It fails when the kernel has no IPVS.
func OpenKernel(nsPath string) (*Kernel, error) {
	h, err := mobyipvs.New(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open IPVS netlink (namespace %q): %w", nsPath, err)
	}
	k := &Kernel{h: h}
	// A handle opens even where the IPVS family is missing; the first
	// request tells.
	if _, err := h.GetServices(); err != nil {
		h.Close()
		return nil, fmt.Errorf("IPVS not available (is the ip_vs module loaded?): %w", err)
	}
	if k.b, err = openBatcher(nsPath); err != nil {
		h.Close()
		return nil, fmt.Errorf("open IPVS netlink for batches (namespace %q): %w", nsPath, err)
	}
	if k.b2, err = openBatcher(nsPath); err != nil {
		h.Close()
		k.b.close()
		return nil, fmt.Errorf("open IPVS netlink for batches (namespace %q): %w", nsPath, err)
	}
	// Without it a plan that moves destinations is applied as before
	// (flows may be reset while they are missing): not worth failing for.
	k.nodest, _ = openInNetns(nsPath, expireNodestPath)
	return k, nil
}

// Close releases the netlink socket. The kernel's table stays as it is.
func (k *Kernel) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.h.Close()
	k.b.close()
	k.b2.close()
	if k.nodest != nil {
		k.nodest.Close()
	}
	return nil
}

// Ops returns how many netlink operations Apply has sent.
func (k *Kernel) Ops() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.ops
}

// Table implements Dataplane.
func (k *Kernel) Table(ctx context.Context) (Table, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	svcs, err := k.h.GetServices()
	if err != nil {
		return Table{}, fmt.Errorf("read IPVS services: %w", err)
	}
	var t Table
	for _, ms := range svcs {
		if err := ctx.Err(); err != nil {
			return Table{}, err
		}
		s, err := fromMobyService(ms)
		if err != nil {
			return Table{}, err
		}
		ds, err := k.h.GetDestinations(ms)
		if err != nil {
			return Table{}, fmt.Errorf("read destinations of %s: %w", s.ServiceKey, err)
		}
		// The kernel keeps destinations newest first; the model keeps
		// insertion order.
		for _, md := range slices.Backward(ds) {
			d, err := fromMobyDest(md)
			if err != nil {
				return Table{}, fmt.Errorf("service %s: %w", s.ServiceKey, err)
			}
			s.Destinations = append(s.Destinations, d)
		}
		t.Services = append(t.Services, s)
	}
	return t.Sorted(), nil
}

// Destinations implements DestReader: one service's destinations with
// their counters, in insertion order.
func (k *Kernel) Destinations(ctx context.Context, key ServiceKey) ([]Destination, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	ds, err := k.h.GetDestinations(toMobyService(&Service{ServiceKey: key}))
	if err != nil {
		return nil, fmt.Errorf("read destinations of %s: %w", key, err)
	}
	var out []Destination
	for _, md := range slices.Backward(ds) {
		d, err := fromMobyDest(md)
		if err != nil {
			return nil, fmt.Errorf("service %s: %w", key, err)
		}
		out = append(out, d)
	}
	return out, nil
}

// Ping implements DestReader: it reads IPVS's timeouts, one request.
func (k *Kernel) Ping(ctx context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, err := k.h.GetConfig(); err != nil {
		return fmt.Errorf("IPVS does not answer: %w", err)
	}
	return nil
}

// Apply implements Dataplane. The operations go out in batches (see
// batcher), with applyPlan's semantics.
//
// A plan of many services is split in two by service (each service's
// operations stay in order, on one socket) and the halves go out on two
// sockets at once: the kernel takes IPVS requests one at a time whatever
// the socket, so what overlaps is one half's encoding and acknowledgement
// reading with the other's kernel work.
//
// A plan that moves destinations (Reorder pairs, for mh's order) is applied
// with net.ipv4.vs.expire_nodest_conn at 0 when it was 1 (as the director's
// host settings make it), and 1 again after: a packet of a moved
// destination's connection that arrives while it is missing is then
// dropped (TCP sends it again) and the connection kept, which is what the
// kernel's documentation gives that setting 0 for ("the connections to the
// server can continue" when a server is deleted and added back). With 1 the
// connection is expired and the packet scheduled anew: a reset. The VM lab
// saw 7-71 of 300 flows reset over eight such changes, none with this.
func (k *Kernel) Apply(ctx context.Context, p Plan) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.nodest != nil && slices.ContainsFunc(p, func(o Op) bool { return o.Reorder }) {
		return withNodestHold(k.nodest, k.log, func() error { return k.apply(ctx, p) })
	}
	return k.apply(ctx, p)
}

// SetLogger gives the kernel a logger for what is not an error of a plan
// (the expire_nodest_conn hold around one, see Apply).
func (k *Kernel) SetLogger(l *slog.Logger) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.log = l
}

func (k *Kernel) apply(ctx context.Context, p Plan) error {
	a, b := splitPlan(p, parallelFrom)
	if len(b) == 0 {
		return k.b.apply(ctx, a, func(n int) { k.ops += n })
	}
	var nb int
	errb := make(chan error, 1)
	go func() { errb <- k.b2.apply(ctx, b, func(n int) { nb += n }) }()
	erra := k.b.apply(ctx, a, func(n int) { k.ops += n })
	err := <-errb
	k.ops += nb
	return errors.Join(erra, err)
}

// parallelFrom is the plan size from which Apply uses both sockets.
const parallelFrom = 512

// splitPlan splits p into two plans of about half the operations each,
// every service's operations whole and in order in one of them; b is
// empty for a plan shorter than from or of one service.
func splitPlan(p Plan, from int) (a, b Plan) {
	if len(p) < from {
		return p, nil
	}
	count := map[ServiceKey]int{}
	var order []ServiceKey
	for _, op := range p {
		k := op.Service.ServiceKey
		if count[k] == 0 {
			order = append(order, k)
		}
		count[k]++
	}
	half := map[ServiceKey]bool{} // services whose operations go to b
	nb := 0
	for _, k := range order[1:] {
		if nb >= len(p)/2 {
			break
		}
		half[k] = true
		nb += count[k]
	}
	for _, op := range p {
		if half[op.Service.ServiceKey] {
			b = append(b, op)
		} else {
			a = append(a, op)
		}
	}
	return a, b
}

func toMobyService(s *Service) *mobyipvs.Service {
	ms := &mobyipvs.Service{
		Protocol:      uint16(s.Protocol),
		Port:          s.Port,
		FWMark:        s.FWMark,
		SchedName:     s.Scheduler,
		Flags:         uint32(s.Flags & managedFlags),
		Timeout:       s.Timeout,
		AddressFamily: uint16(s.Family),
	}
	if s.FWMark == 0 {
		ms.Address = net.IP(s.Addr.AsSlice())
	}
	if s.Timeout > 0 {
		ms.Flags |= uint32(FlagPersistent)
	}
	bits := s.persistBits()
	if s.Family == IPv4 {
		// The kernel keeps an IPv4 netmask as a __be32 mask, an IPv6 one
		// as a prefix length; the attribute is sent in host order.
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], ^uint32(0)<<(32-bits))
		ms.Netmask = binary.NativeEndian.Uint32(b[:])
	} else {
		ms.Netmask = uint32(bits)
	}
	return ms
}

func fromMobyService(ms *mobyipvs.Service) (Service, error) {
	s := Service{
		ServiceKey: ServiceKey{
			Family:   Family(ms.AddressFamily),
			FWMark:   ms.FWMark,
			Protocol: Protocol(ms.Protocol),
			Port:     ms.Port,
		},
		Scheduler: ms.SchedName,
		Flags:     Flags(ms.Flags) & managedFlags,
		Timeout:   ms.Timeout,
		Stats:     fromMobyStats(ms.Stats),
	}
	if s.FWMark != 0 {
		// The kernel reports a zero address and protocol for fwmark
		// services; the key has none.
		s.Protocol, s.Port = 0, 0
	} else {
		a, ok := netip.AddrFromSlice(ms.Address)
		if !ok {
			return Service{}, fmt.Errorf("service with unreadable address %v", ms.Address)
		}
		if s.Family == IPv4 {
			a = a.Unmap()
		}
		s.Addr = a
	}
	if s.Family == IPv4 {
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], ms.Netmask)
		m := binary.BigEndian.Uint32(b[:])
		bits := 0
		for m&0x80000000 != 0 {
			bits++
			m <<= 1
		}
		s.PersistBits = bits
	} else {
		s.PersistBits = int(ms.Netmask)
	}
	if s.Timeout == 0 || s.PersistBits == s.persistFull() {
		s.PersistBits = 0
	}
	return s, nil
}

func toMobyDest(d *Destination) *mobyipvs.Destination {
	return &mobyipvs.Destination{
		Address:         net.IP(d.Addr.AsSlice()),
		Port:            d.Port,
		Weight:          d.Weight,
		ConnectionFlags: uint32(d.Forward),
		AddressFamily:   uint16(FamilyOf(d.Addr)),
		UpperThreshold:  d.UpperThreshold,
		LowerThreshold:  d.LowerThreshold,
	}
}

func fromMobyDest(md *mobyipvs.Destination) (Destination, error) {
	a, ok := netip.AddrFromSlice(md.Address)
	if !ok {
		return Destination{}, fmt.Errorf("destination with unreadable address %v", md.Address)
	}
	if md.AddressFamily == uint16(IPv4) {
		a = a.Unmap()
	}
	return Destination{
		DestKey:        DestKey{Addr: a, Port: md.Port},
		Weight:         md.Weight,
		Forward:        Forward(md.ConnectionFlags & mobyipvs.ConnectionFlagFwdMask),
		UpperThreshold: md.UpperThreshold,
		LowerThreshold: md.LowerThreshold,
		ActiveConns:    md.ActiveConnections,
		InactiveConns:  md.InactiveConnections,
		Stats:          fromMobyStats(mobyipvs.SvcStats(md.Stats)),
	}, nil
}

func fromMobyStats(s mobyipvs.SvcStats) Stats {
	return Stats{Conns: uint64(s.Connections), InPkts: uint64(s.PacketsIn), OutPkts: uint64(s.PacketsOut),
		InBytes: s.BytesIn, OutBytes: s.BytesOut}
}
