// Package dns is the fallback mode's health-aware authoritative DNS: it
// answers the configured names in a delegated zone with the VIPs that
// healthy directors hold right now, rotated per query, with a short TTL,
// so that clients spread over the VIPs and leave one whose director
// failed. Every director can run it; answers agree because the director
// feeds them from the same cluster view (SetLive).
package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anycastd/anycastd/configs"
	mdns "github.com/miekg/dns"
)

// Server is the authoritative server. Safe for concurrent use.
type Server struct {
	zone   string
	ttl    uint32
	ns     []string
	mbox   string
	names  map[string][]netip.Addr // fqdn -> configured VIPs, in config order
	glue   map[string][]netip.Addr // in-zone name server fqdn -> its addresses
	log    *slog.Logger
	serial uint32
	listen []netip.AddrPort

	mu   sync.RWMutex
	live map[netip.Addr]bool
	turn atomic.Uint64

	started chan struct{}
	once    sync.Once
	addrs   []net.Addr
}

// New makes a server for a valid config (configs validated it).
func New(cfg configs.DNS, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	zone := mdns.CanonicalName(cfg.Zone)
	if _, ok := mdns.IsDomainName(zone); !ok || zone == "." {
		return nil, fmt.Errorf("dns.zone %q is not a domain name", cfg.Zone)
	}
	s := &Server{zone: zone, ttl: uint32(max(cfg.TTL, time.Second) / time.Second), mbox: mdns.CanonicalName(cfg.Hostmaster),
		names: map[string][]netip.Addr{}, log: log, listen: cfg.Listen, live: map[netip.Addr]bool{},
		serial: uint32(time.Now().Unix()), started: make(chan struct{})}
	for _, n := range cfg.NS {
		s.ns = append(s.ns, mdns.CanonicalName(n))
	}
	if len(s.ns) == 0 {
		return nil, errors.New("dns.ns: at least one name server is needed for the SOA and NS records")
	}
	if s.mbox == "." {
		s.mbox = "hostmaster." + zone
	}
	s.glue = map[string][]netip.Addr{}
	for _, g := range cfg.Glue {
		fq := mdns.CanonicalName(g.Name)
		if !strings.HasSuffix(g.Name, ".") {
			fq = mdns.CanonicalName(g.Name + "." + zone)
		}
		if !slices.Contains(s.ns, fq) || !mdns.IsSubDomain(zone, fq) {
			return nil, fmt.Errorf("dns.glue: %s is none of the zone's own name servers", g.Name)
		}
		for _, a := range g.Addresses {
			s.glue[fq] = append(s.glue[fq], a.Unmap())
		}
	}
	for _, n := range cfg.Names {
		fq := mdns.CanonicalName(n.Name)
		if !strings.HasSuffix(n.Name, ".") {
			fq = mdns.CanonicalName(n.Name + "." + zone)
		}
		if !mdns.IsSubDomain(zone, fq) {
			return nil, fmt.Errorf("dns.names: %s is not in the zone %s", n.Name, zone)
		}
		s.names[fq] = append(s.names[fq], n.VIPs...)
	}
	return s, nil
}

// SetLive sets the VIPs that may be answered now: those held by healthy
// directors. A configured VIP not in live is left out of answers.
func (s *Server) SetLive(vips []netip.Addr) {
	live := make(map[netip.Addr]bool, len(vips))
	for _, v := range vips {
		live[v.Unmap()] = true
	}
	s.mu.Lock()
	s.live = live
	s.mu.Unlock()
}

// Addrs returns the addresses the server listens on (after it started).
func (s *Server) Addrs() []net.Addr {
	<-s.started
	return s.addrs
}

// Run serves on every listen address, UDP and TCP, until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	var servers []*mdns.Server
	defer s.once.Do(func() { close(s.started) })
	fail := func(err error) error {
		for _, srv := range servers {
			srv.Shutdown()
		}
		return err
	}
	for _, ap := range s.listen {
		var pc net.PacketConn
		var tl net.Listener
		for try := 0; ; try++ {
			var err error
			if pc, err = net.ListenPacket("udp", ap.String()); err != nil {
				return fail(fmt.Errorf("dns listen udp %s: %w", ap, err))
			}
			// TCP on the port UDP got (it matters when the config says 0,
			// where another program may hold that port for TCP: try again).
			if tl, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
				break
			}
			pc.Close()
			if ap.Port() != 0 || try == 20 {
				return fail(fmt.Errorf("dns listen tcp %s: %w", ap, err))
			}
		}
		s.addrs = append(s.addrs, pc.LocalAddr())
		servers = append(servers, &mdns.Server{PacketConn: pc, Handler: s}, &mdns.Server{Listener: tl, Handler: s})
	}
	errc := make(chan error, len(servers))
	for _, srv := range servers {
		go func() { errc <- srv.ActivateAndServe() }()
	}
	s.once.Do(func() { close(s.started) })
	s.log.Info("DNS serving", "zone", s.zone, "listen", s.addrs)
	select {
	case <-ctx.Done():
		return fail(nil)
	case err := <-errc:
		return fail(fmt.Errorf("dns server: %w", err))
	}
}

func (s *Server) soa() *mdns.SOA {
	return &mdns.SOA{Hdr: mdns.RR_Header{Name: s.zone, Rrtype: mdns.TypeSOA, Class: mdns.ClassINET, Ttl: s.ttl},
		Ns: s.ns[0], Mbox: s.mbox, Serial: s.serial, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: s.ttl}
}

// ServeDNS answers one query.
func (s *Server) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	m := s.answer(r)
	size := uint16(mdns.MinMsgSize)
	if _, udp := w.RemoteAddr().(*net.UDPAddr); !udp {
		size = mdns.MaxMsgSize
	} else if opt := r.IsEdns0(); opt != nil {
		size = max(opt.UDPSize(), mdns.MinMsgSize)
	}
	m.Truncate(int(size))
	if err := w.WriteMsg(m); err != nil {
		s.log.Debug("dns reply", "err", err)
	}
}

// answer builds the reply to r.
func (s *Server) answer(r *mdns.Msg) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetReply(r)
	m.Compress = true
	if opt := r.IsEdns0(); opt != nil {
		if opt.Version() != 0 {
			m.SetRcode(r, mdns.RcodeBadVers)
			m.SetEdns0(4096, false)
			return m
		}
		m.SetEdns0(4096, false)
	}
	if r.Opcode != mdns.OpcodeQuery {
		m.SetRcode(r, mdns.RcodeNotImplemented)
		return m
	}
	if len(r.Question) != 1 {
		m.SetRcode(r, mdns.RcodeFormatError)
		return m
	}
	q := r.Question[0]
	name := mdns.CanonicalName(q.Name)
	if q.Qclass != mdns.ClassINET && q.Qclass != mdns.ClassANY {
		m.SetRcode(r, mdns.RcodeRefused)
		return m
	}
	if !mdns.IsSubDomain(s.zone, name) {
		m.SetRcode(r, mdns.RcodeRefused)
		return m
	}
	m.Authoritative = true
	switch {
	case name == s.zone && q.Qtype == mdns.TypeSOA:
		m.Answer = append(m.Answer, s.soa())
	case name == s.zone && q.Qtype == mdns.TypeNS:
		for _, n := range s.ns {
			m.Answer = append(m.Answer, &mdns.NS{Hdr: mdns.RR_Header{Name: s.zone, Rrtype: mdns.TypeNS, Class: mdns.ClassINET, Ttl: s.ttl}, Ns: n})
			m.Extra = append(m.Extra, s.glueRRs(n, mdns.TypeANY)...)
		}
	case s.glue[name] != nil:
		m.Answer = s.glueRRs(name, q.Qtype)
	case s.names[name] != nil:
		m.Answer = s.addresses(name, q.Qtype)
	case name != s.zone:
		m.SetRcode(r, mdns.RcodeNameError)
	}
	if len(m.Answer) == 0 {
		m.Ns = append(m.Ns, s.soa()) // NODATA or NXDOMAIN: the SOA says how long to remember it
	}
	return m
}

// glueRRs are an in-zone name server's addresses of the asked type (A,
// AAAA, or both for ANY), in config order.
func (s *Server) glueRRs(name string, qtype uint16) []mdns.RR {
	var out []mdns.RR
	for _, a := range s.glue[name] {
		hdr := mdns.RR_Header{Name: name, Class: mdns.ClassINET, Ttl: s.ttl}
		switch {
		case a.Is4() && (qtype == mdns.TypeA || qtype == mdns.TypeANY):
			hdr.Rrtype = mdns.TypeA
			out = append(out, &mdns.A{Hdr: hdr, A: a.AsSlice()})
		case a.Is6() && (qtype == mdns.TypeAAAA || qtype == mdns.TypeANY):
			hdr.Rrtype = mdns.TypeAAAA
			out = append(out, &mdns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	return out
}

// addresses are name's live VIPs of the asked type, rotated one step per
// query so that clients spread over them.
func (s *Server) addresses(name string, qtype uint16) []mdns.RR {
	want4, want6 := qtype == mdns.TypeA || qtype == mdns.TypeANY, qtype == mdns.TypeAAAA || qtype == mdns.TypeANY
	s.mu.RLock()
	var vips []netip.Addr
	for _, v := range s.names[name] {
		if s.live[v.Unmap()] && ((v.Is4() || v.Is4In6()) && want4 || v.Is6() && !v.Is4In6() && want6) {
			vips = append(vips, v.Unmap())
		}
	}
	s.mu.RUnlock()
	if len(vips) == 0 {
		return nil
	}
	k := int(s.turn.Add(1) % uint64(len(vips)))
	vips = append(slices.Clone(vips[k:]), vips[:k]...)
	var out []mdns.RR
	for _, v := range vips {
		hdr := mdns.RR_Header{Name: name, Class: mdns.ClassINET, Ttl: s.ttl}
		if v.Is4() {
			hdr.Rrtype = mdns.TypeA
			out = append(out, &mdns.A{Hdr: hdr, A: v.AsSlice()})
		} else {
			hdr.Rrtype = mdns.TypeAAAA
			out = append(out, &mdns.AAAA{Hdr: hdr, AAAA: v.AsSlice()})
		}
	}
	return out
}
