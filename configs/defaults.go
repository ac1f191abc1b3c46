package configs

import (
	"fmt"
	"net/netip"
	"os"
	"time"
)

// Defaults. Every default of the document is filled in applyDefaults and
// nowhere else; these constants name the ones other packages show or test.
const (
	DefaultStateDir         = "/var/lib/anycastd"
	DefaultSocket           = "/run/anycastd/anycastd.sock"
	DefaultGossipPort       = 7946
	DefaultMaxActive        = 8
	DefaultScheduler        = "mh"
	DefaultBGPPort          = 179
	DefaultKernelProtocol   = 250
	DefaultHoldTime         = 9 * time.Second
	DefaultKeepalive        = 3 * time.Second
	DefaultConnectRetry     = 5 * time.Second
	DefaultGracefulShutdown = 10 * time.Second
	DefaultDrainTimeout     = 30 * time.Second
	DefaultAdvertInterval   = time.Second
	DefaultDNSTTL           = 5 * time.Second
	// DefaultLocalHold (health.local_hold) is longer than every episode
	// of one director's checks timing out on a saturated machine that the
	// soak lab saw (up to 8 s), and short enough to bound what a director
	// whose own path to a real server broke sends there.
	DefaultLocalHold = 30 * time.Second
)

// applyDefaults fills every field the document left out. isSet reports
// whether the document set a field (by its path, e.g. "services[0].quorum"),
// so a value that is zero on purpose (quorum: 0, preempt: false) is kept.
func applyDefaults(c *Config, isSet func(path string) bool) {
	if c.Node.Name == "" {
		if h, err := os.Hostname(); err == nil {
			c.Node.Name = h
		}
	}
	if c.Node.Dataplane == "" {
		c.Node.Dataplane = DataplaneKernel
	}
	if c.Node.ConnSync.Enabled {
		cs := &c.Node.ConnSync
		if !cs.Group.IsValid() {
			cs.Group = netip.AddrFrom4([4]byte{224, 0, 0, 81})
		}
		if cs.Port == 0 {
			cs.Port = 8848
		}
		if cs.TTL == 0 {
			cs.TTL = 1
		}
	}
	if c.Node.StateDir == "" {
		c.Node.StateDir = DefaultStateDir
	}

	if !c.Cluster.Bind.IsValid() {
		c.Cluster.Bind = netip.IPv4Unspecified()
	}
	if c.Cluster.Port == 0 {
		c.Cluster.Port = DefaultGossipPort
	}
	if !isSet("cluster.max_active") {
		c.Cluster.MaxActive = DefaultMaxActive
	}

	r := &c.Routing
	if r.Mode == "" {
		r.Mode = ModeBGP
	}
	if !r.BGP.RouterID.IsValid() {
		for _, a := range c.Node.Addresses {
			if a.Is4() {
				r.BGP.RouterID = a
				break
			}
		}
	}
	if !isSet("routing.bgp.listen_port") {
		r.BGP.ListenPort = DefaultBGPPort
	}
	if !isSet("routing.bgp.graceful_shutdown") {
		r.BGP.GracefulShutdown = DefaultGracefulShutdown
	}
	for i := range r.BGP.Neighbors {
		n := &r.BGP.Neighbors[i]
		if n.HoldTime == 0 {
			n.HoldTime = DefaultHoldTime
		}
		if n.Keepalive == 0 {
			n.Keepalive = n.HoldTime / 3
		}
		if n.ConnectRetry == 0 {
			n.ConnectRetry = DefaultConnectRetry
		}
		if len(n.Families) == 0 && n.Address.IsValid() {
			if n.Address.Unmap().Is4() {
				n.Families = []string{"ipv4"}
			} else {
				n.Families = []string{"ipv6"}
			}
		}
		if n.BFD.MinTx == 0 {
			n.BFD.MinTx = 300 * time.Millisecond
		}
		if n.BFD.MinRx == 0 {
			n.BFD.MinRx = 300 * time.Millisecond
		}
		if n.BFD.Multiplier == 0 {
			n.BFD.Multiplier = 3
		}
	}
	if r.Kernel.Protocol == 0 {
		r.Kernel.Protocol = DefaultKernelProtocol
	}
	if r.VRRP.AdvertInterval == 0 {
		r.VRRP.AdvertInterval = DefaultAdvertInterval
	}
	for i := range r.VRRP.Instances {
		in := &r.VRRP.Instances[i]
		p := fmt.Sprintf("routing.vrrp.instances[%d].", i)
		if in.Name == "" {
			in.Name = fmt.Sprintf("vrid%d", in.VRID)
		}
		if !isSet(p + "priority") {
			in.Priority = 100
		}
		if !isSet(p + "preempt") {
			in.Preempt = true
		}
		if in.Version == 0 {
			in.Version = 3
		}
	}
	if len(r.DNS.Listen) == 0 {
		r.DNS.Listen = []netip.AddrPort{netip.AddrPortFrom(netip.IPv6Unspecified(), 53)}
	}
	if r.DNS.TTL == 0 {
		r.DNS.TTL = DefaultDNSTTL
	}
	if r.DNS.Hostmaster == "" && r.DNS.Zone != "" {
		r.DNS.Hostmaster = "hostmaster." + fqdn(r.DNS.Zone)
	}

	if c.API.Socket == "" {
		c.API.Socket = DefaultSocket
	}

	h := &c.Health
	if h.Interval == 0 {
		h.Interval = 2 * time.Second
	}
	if h.Timeout == 0 {
		h.Timeout = time.Second
	}
	if h.Rise == 0 {
		h.Rise = 2
	}
	if h.Fall == 0 {
		h.Fall = 3
	}
	if h.Concurrency == 0 {
		h.Concurrency = 1024
	}
	if h.Verdict == "" {
		h.Verdict = VerdictCluster
	}
	if h.LocalHold == 0 {
		h.LocalHold = DefaultLocalHold
	}
	for i := range h.Self.Checks {
		sc := &h.Self.Checks[i]
		if sc.Name == "" {
			sc.Name = fmt.Sprintf("check%d", i)
		}
		defaultCheck(&sc.Check, h)
	}

	for i := range c.Services {
		s := &c.Services[i]
		p := fmt.Sprintf("services[%d].", i)
		if s.Protocol == "" {
			s.Protocol = ProtoTCP
		}
		if s.Scheduler == "" {
			s.Scheduler = DefaultScheduler
		}
		if s.Forwarding == "" {
			s.Forwarding = ForwardDR
		}
		usesTun := s.Forwarding == ForwardTUN
		for _, b := range s.Backends {
			usesTun = usesTun || b.Forwarding == ForwardTUN
		}
		if usesTun && s.Tunnel.Type == "" {
			s.Tunnel.Type = "ipip"
		}
		if s.Tunnel.Type != "" && s.Tunnel.Checksum == "" {
			s.Tunnel.Checksum = "none"
		}
		if s.Persistence.Timeout > 0 && s.Persistence.Netmask == 0 {
			s.Persistence.Netmask = 32
			if s.VIP.Is6() && !s.VIP.Is4In6() {
				s.Persistence.Netmask = 128
			}
		}
		if !isSet(p + "quorum") {
			s.Quorum = 1
		}
		if s.OnDown == "" {
			s.OnDown = OnDownWeightZero
		}
		if !isSet(p + "drain_timeout") {
			s.DrainTimeout = DefaultDrainTimeout
		}
		for j := range s.Backends {
			b := &s.Backends[j]
			if b.Port == 0 {
				b.Port = s.Port
			}
			if !isSet(fmt.Sprintf("%sbackends[%d].weight", p, j)) {
				b.Weight = 1
			}
		}
		if s.Health.Type == "" {
			s.Health.Type = CheckTCP
		}
		defaultCheck(&s.Health, h)
	}
}

// CheckDefaults fills a check built outside a document (anyctl probe) the
// way a service's check in a document is filled, with the default health
// settings.
func CheckDefaults(c *Check) {
	var cfg Config
	applyDefaults(&cfg, func(string) bool { return false })
	if c.Type == "" {
		c.Type = CheckTCP
	}
	defaultCheck(c, &cfg.Health)
}

// defaultCheck fills a check's timing from the health defaults and the
// type-specific fields every probe of that type needs.
func defaultCheck(c *Check, h *Health) {
	if c.Interval == 0 {
		c.Interval = h.Interval
	}
	if c.Timeout == 0 {
		c.Timeout = h.Timeout
	}
	if c.Rise == 0 {
		c.Rise = h.Rise
	}
	if c.Fall == 0 {
		c.Fall = h.Fall
	}
	switch c.Type {
	case CheckHTTP, CheckHTTPS:
		if c.Method == "" {
			c.Method = "GET"
		}
		if c.Path == "" {
			c.Path = "/"
		}
		if len(c.Status) == 0 {
			c.Status = []string{"200-299"}
		}
	case CheckDNS:
		if c.QueryType == "" {
			c.QueryType = "A"
		}
		if c.Transport == "" {
			c.Transport = "udp"
		}
		if c.Rcode == "" {
			c.Rcode = "NOERROR"
		}
	}
}

// fqdn adds the trailing dot of a fully qualified name if it is missing.
func fqdn(name string) string {
	if name == "" || name[len(name)-1] == '.' {
		return name
	}
	return name + "."
}
