package configs

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Schedulers are the IPVS schedulers a service may use.
var Schedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh"}

// SchedulerFlags are the scheduler flags, each valid only with the
// scheduler its name starts with.
var SchedulerFlags = []string{"sh-fallback", "sh-port", "mh-fallback", "mh-port"}

var (
	nameRE      = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	ifnameRE    = regexp.MustCompile(`^[^/\s:]{1,15}$`)
	dnsLabelRE  = regexp.MustCompile(`^([A-Za-z0-9_]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)$`)
	httpTokenRE = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
)

type checker struct {
	errs []*FieldError
}

func (c *checker) add(path, format string, args ...any) {
	c.errs = append(c.errs, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// Validate checks a Config built in code (tests, the cluster's replicated
// documents) the way Load checks a file: every problem, joined.
func Validate(c *Config) error {
	errs := validate(c)
	if len(errs) == 0 {
		return nil
	}
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = e
	}
	return errors.Join(out...)
}

// ValidateServices checks the cluster-wide part of a config on its own, as
// a director does with a services document it receives from the cluster:
// the same checks Validate makes of services, every problem at once.
func ValidateServices(ss []Service) error {
	c := &checker{}
	c.services(ss)
	if len(c.errs) == 0 {
		return nil
	}
	sortFieldErrors(c.errs)
	out := make([]error, len(c.errs))
	for i, e := range c.errs {
		out[i] = e
	}
	return errors.Join(out...)
}

func validate(cfg *Config) []*FieldError {
	c := &checker{}
	c.node("node", &cfg.Node)
	c.cluster("cluster", &cfg.Cluster)
	c.routing("routing", &cfg.Routing)
	c.api("api", &cfg.API)
	c.health("health", &cfg.Health)
	c.services(cfg.Services)
	sortFieldErrors(c.errs)
	return c.errs
}

func (c *checker) node(p string, n *Node) {
	if n.Name == "" {
		c.add(p+".name", "required (the host name could not be read)")
	} else if !nameRE.MatchString(n.Name) {
		c.add(p+".name", "%q is not a valid name (letters, digits, '.', '_', '-'; at most 63)", n.Name)
	}
	seen := map[netip.Addr]int{}
	for i, a := range n.Addresses {
		ap := fmt.Sprintf("%s.addresses[%d]", p, i)
		if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
			c.add(ap, "%s is not a usable unicast address", a)
		}
		if j, ok := seen[a]; ok {
			c.add(ap, "%s is listed twice (also addresses[%d])", a, j)
		}
		seen[a] = i
	}
	if !filepath.IsAbs(n.StateDir) {
		c.add(p+".state_dir", "%q is not an absolute path", n.StateDir)
	}
	if n.Dataplane != DataplaneKernel && n.Dataplane != DataplaneMemory {
		c.add(p+".dataplane", "%q is not kernel or memory", n.Dataplane)
	}
	c.connSync(p+".conn_sync", &n.ConnSync)
	if n.ConnSync.Enabled && n.Dataplane != DataplaneKernel {
		c.add(p+".conn_sync.enabled", "needs node.dataplane: kernel (the memory dataplane has no connections to share)")
	}
}

func (c *checker) connSync(p string, s *ConnSync) {
	if !s.Enabled {
		return
	}
	if !ifnameRE.MatchString(s.Interface) {
		c.add(p+".interface", "%q is not an interface name (required: the directors' segment)", s.Interface)
	}
	if s.SyncID < 0 || s.SyncID > 255 {
		c.add(p+".sync_id", "%d is not 0-255", s.SyncID)
	}
	if s.Group.IsValid() && !s.Group.IsMulticast() {
		c.add(p+".group", "%s is not a multicast address", s.Group)
	}
	if s.Port < 1 || s.Port > 65535 {
		c.add(p+".port", "%d is not a port (1-65535)", s.Port)
	}
	if s.TTL < 1 || s.TTL > 255 {
		c.add(p+".ttl", "%d is not 1-255", s.TTL)
	}
	if s.MaxLen != 0 && (s.MaxLen < 576 || s.MaxLen > 65507) {
		c.add(p+".max_len", "%d is not 0 (from the MTU) or 576-65507", s.MaxLen)
	}
}

func (c *checker) cluster(p string, cl *Cluster) {
	c.port(p+".port", cl.Port)
	for i, s := range cl.Seeds {
		sp := fmt.Sprintf("%s.seeds[%d]", p, i)
		host, port := s, ""
		if h, pt, err := net.SplitHostPort(s); err == nil {
			host, port = h, pt
		}
		if host == "" || (!isIP(host) && !isDomain(host)) {
			c.add(sp, "%q is not a host or host:port", s)
			continue
		}
		if port != "" {
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
				c.add(sp, "%q has no valid port (1..65535)", s)
			}
		}
	}
	keys := map[string]int{}
	for i, k := range cl.Keys {
		kp := fmt.Sprintf("%s.keys[%d]", p, i)
		raw, err := base64.StdEncoding.DecodeString(k)
		switch {
		case err != nil:
			c.add(kp, "not valid base64 (the key itself is not shown)")
		case len(raw) != 16 && len(raw) != 24 && len(raw) != 32:
			c.add(kp, "decodes to %d bytes; an AES key is 16, 24 or 32 bytes", len(raw))
		}
		if j, ok := keys[k]; ok {
			c.add(kp, "the same key as keys[%d]", j)
		}
		keys[k] = i
	}
	if len(cl.Keys) == 0 && !cl.Insecure {
		c.add(p+".keys", "required: gossip is encrypted; set cluster.insecure: true to run without a key")
	}
	if cl.MaxActive < 1 || cl.MaxActive > 256 {
		c.add(p+".max_active", "%d is out of range (1..256)", cl.MaxActive)
	}
	if cl.Priority < 0 || cl.Priority > 65535 {
		c.add(p+".priority", "%d is out of range (0..65535)", cl.Priority)
	}
}

func (c *checker) routing(p string, r *Routing) {
	switch r.Mode {
	case ModeBGP:
		c.bgp(p+".bgp", &r.BGP)
	case ModeKernel:
		c.kernel(p+".kernel", &r.Kernel)
	case ModeVRRP:
		c.vrrp(p+".vrrp", &r.VRRP)
	case ModeDNS:
		// Per-director VIPs are not modelled: on its own it would give
		// out every VIP whatever holds it. The daemon refuses it; so
		// must validate and --check-config (the unit's ExecStartPre).
		c.add(p+".mode", "dns on its own is not supported: use vrrp with routing.dns.enabled: true (the fallback mode)")
	default:
		c.add(p+".mode", "%q is not a routing mode (bgp, kernel, vrrp, dns)", r.Mode)
	}
	if r.Mode == ModeDNS || r.DNS.Enabled {
		c.dns(p+".dns", &r.DNS)
	}
}

func (c *checker) bgp(p string, b *BGP) {
	if b.ASN == 0 {
		c.add(p+".asn", "required (1..4294967295)")
	}
	if !b.RouterID.IsValid() {
		c.add(p+".router_id", "required (an IPv4 address)")
	} else if !b.RouterID.Is4() || b.RouterID.IsUnspecified() {
		c.add(p+".router_id", "%s is not a valid router id (a non-zero IPv4 address)", b.RouterID)
	}
	if b.ListenPort != -1 && (b.ListenPort < 1 || b.ListenPort > 65535) {
		c.add(p+".listen_port", "%d is not a port (1..65535, or -1 to not listen)", b.ListenPort)
	}
	if b.NextHopIPv4.IsValid() && !b.NextHopIPv4.Is4() {
		c.add(p+".next_hop_ipv4", "%s is not an IPv4 address", b.NextHopIPv4)
	}
	if b.NextHopIPv6.IsValid() && (!b.NextHopIPv6.Is6() || b.NextHopIPv6.Is4In6()) {
		c.add(p+".next_hop_ipv6", "%s is not an IPv6 address", b.NextHopIPv6)
	}
	for i, cm := range b.Communities {
		if !validCommunity(cm, 2, 0xffff) {
			c.add(fmt.Sprintf("%s.communities[%d]", p, i), "%q is not a community (ASN:value, each 0..65535)", cm)
		}
	}
	for i, cm := range b.LargeCommunities {
		if !validCommunity(cm, 3, 0xffffffff) {
			c.add(fmt.Sprintf("%s.large_communities[%d]", p, i), "%q is not a large community (ASN:value:value, each 0..4294967295)", cm)
		}
	}
	if b.GracefulShutdown < 0 || b.GracefulShutdown > 10*time.Minute {
		c.add(p+".graceful_shutdown", "%s is out of range (0s..10m)", b.GracefulShutdown)
	}
	if len(b.Neighbors) == 0 {
		c.add(p+".neighbors", "at least one neighbour is required in mode bgp")
	}
	seen := map[netip.Addr]int{}
	for i := range b.Neighbors {
		n := &b.Neighbors[i]
		np := fmt.Sprintf("%s.neighbors[%d]", p, i)
		if !n.Address.IsValid() {
			c.add(np+".address", "required")
		} else {
			if j, ok := seen[n.Address]; ok {
				c.add(np+".address", "%s is also neighbors[%d]", n.Address, j)
			}
			seen[n.Address] = i
			if n.LocalAddress.IsValid() && n.LocalAddress.Is4() != n.Address.Is4() {
				c.add(np+".local_address", "%s is not of the neighbour's address family", n.LocalAddress)
			}
		}
		if n.ASN == 0 {
			c.add(np+".asn", "required: the neighbour's AS number (1..4294967295)")
		}
		if len(n.Password) > 80 {
			c.add(np+".password", "longer than the 80 bytes TCP MD5 allows")
		}
		if n.HoldTime < 3*time.Second || n.HoldTime > 65535*time.Second || n.HoldTime%time.Second != 0 {
			c.add(np+".hold_time", "%s is out of range (whole seconds, 3s..65535s)", n.HoldTime)
		}
		if n.Keepalive < time.Second || n.Keepalive%time.Second != 0 || n.Keepalive >= n.HoldTime {
			c.add(np+".keepalive", "%s must be whole seconds, at least 1s and less than hold_time %s", n.Keepalive, n.HoldTime)
		}
		if n.ConnectRetry < time.Second || n.ConnectRetry%time.Second != 0 {
			c.add(np+".connect_retry", "%s must be whole seconds, at least 1s", n.ConnectRetry)
		}
		if n.Multihop < 0 || n.Multihop > 255 {
			c.add(np+".multihop", "%d is not a TTL (0..255)", n.Multihop)
		}
		for j, f := range n.Families {
			if f != "ipv4" && f != "ipv6" {
				c.add(fmt.Sprintf("%s.families[%d]", np, j), "%q is not a family (ipv4, ipv6)", f)
			}
		}
		if n.BFD.Enabled {
			if n.BFD.MinTx < 10*time.Millisecond || n.BFD.MinTx > time.Minute {
				c.add(np+".bfd.min_tx", "%s is out of range (10ms..1m)", n.BFD.MinTx)
			}
			if n.BFD.MinRx < 10*time.Millisecond || n.BFD.MinRx > time.Minute {
				c.add(np+".bfd.min_rx", "%s is out of range (10ms..1m)", n.BFD.MinRx)
			}
			if n.BFD.Multiplier < 1 || n.BFD.Multiplier > 255 {
				c.add(np+".bfd.multiplier", "%d is out of range (1..255)", n.BFD.Multiplier)
			}
		}
	}
}

func validCommunity(s string, parts int, max uint64) bool {
	fs := strings.Split(s, ":")
	if len(fs) != parts {
		return false
	}
	for _, f := range fs {
		n, err := strconv.ParseUint(f, 10, 64)
		if err != nil || n > max {
			return false
		}
	}
	return true
}

func (c *checker) kernel(p string, k *Kernel) {
	switch {
	case k.Table == 0 && k.Interface == "":
		c.add(p, "set table or interface: where the VIP goes for the routing daemon to pick up")
	case k.Table != 0 && k.Interface != "":
		c.add(p, "set table or interface, not both")
	}
	if k.Table < 0 || k.Table == 255 {
		c.add(p+".table", "%d is not a usable routing table (1..2147483647, not 255 local)", k.Table)
	}
	if k.Interface != "" && !ifnameRE.MatchString(k.Interface) {
		c.add(p+".interface", "%q is not an interface name", k.Interface)
	}
	if k.Protocol < 5 || k.Protocol > 255 {
		c.add(p+".protocol", "%d is out of range (5..255; 0..4 belong to the kernel)", k.Protocol)
	}
	if k.Metric < 0 {
		c.add(p+".metric", "%d is negative", k.Metric)
	}
}

func (c *checker) vrrp(p string, v *VRRP) {
	if v.Interface == "" {
		c.add(p+".interface", "required in mode vrrp")
	} else if !ifnameRE.MatchString(v.Interface) {
		c.add(p+".interface", "%q is not an interface name", v.Interface)
	}
	if v.AdvertInterval < 10*time.Millisecond || v.AdvertInterval > 40950*time.Millisecond || v.AdvertInterval%(10*time.Millisecond) != 0 {
		c.add(p+".advert_interval", "%s is out of range (10ms..40.95s in steps of 10ms)", v.AdvertInterval)
	}
	for i, a := range v.UnicastPeers {
		if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
			c.add(fmt.Sprintf("%s.unicast_peers[%d]", p, i), "%s is not a unicast address", a)
		}
	}
	if len(v.Instances) == 0 {
		c.add(p+".instances", "at least one instance is required in mode vrrp")
	}
	vrids := map[[2]int]int{}
	for i := range v.Instances {
		in := &v.Instances[i]
		ip := fmt.Sprintf("%s.instances[%d]", p, i)
		if in.VRID < 1 || in.VRID > 255 {
			c.add(ip+".vrid", "%d is out of range (1..255)", in.VRID)
		}
		if len(in.VIPs) == 0 {
			c.add(ip+".vips", "at least one VIP is required")
		}
		fam := 0
		for j, a := range in.VIPs {
			vp := fmt.Sprintf("%s.vips[%d]", ip, j)
			if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
				c.add(vp, "%s is not a unicast address", a)
				continue
			}
			f := family(a)
			if j == 0 {
				fam = f
			} else if f != fam {
				c.add(vp, "%s mixes address families; VRRPv3 carries one family per instance", a)
			}
			if in.Version == 2 && f == 6 {
				c.add(vp, "%s is IPv6; VRRPv2 (version: 2) carries IPv4 only", a)
			}
		}
		switch in.Version {
		case 3:
			if in.Authentication != nil {
				c.add(ip+".authentication", "VRRPv3 has no authentication (RFC 5798); only version: 2 has (keepalived's auth_type PASS)")
			}
		case 2:
			if v.AdvertInterval%time.Second != 0 || v.AdvertInterval > 255*time.Second {
				c.add(p+".advert_interval", "%s: instances[%d] is VRRPv2, which carries whole seconds (1s..255s)", v.AdvertInterval, i)
			}
			if a := in.Authentication; a != nil {
				if a.Type != "pass" {
					c.add(ip+".authentication.type", "%q is not supported (pass: simple text, as keepalived's auth_type PASS)", a.Type)
				}
				if len(a.Password) < 1 || len(a.Password) > 8 {
					c.add(ip+".authentication.password", "%d bytes (1..8: VRRPv2 sends 8)", len(a.Password))
				}
			}
		default:
			c.add(ip+".version", "%d is not a VRRP version (2 or 3)", in.Version)
		}
		// The same VRID may be used once per address family (RFC 5798 5.2.3).
		key := [2]int{in.VRID, fam}
		if j, ok := vrids[key]; ok {
			c.add(ip+".vrid", "%d is also instances[%d] for the same address family", in.VRID, j)
		}
		vrids[key] = i
		if in.Priority < 1 || in.Priority > 255 {
			c.add(ip+".priority", "%d is out of range (1..254; 255 for the address owner)", in.Priority)
		}
		if in.UnhealthyPriority < 0 || in.UnhealthyPriority >= in.Priority {
			c.add(ip+".unhealthy_priority", "%d must be 0..%d (below priority)", in.UnhealthyPriority, max(in.Priority-1, 0))
		}
		if in.PreemptDelay < 0 || in.PreemptDelay > time.Hour {
			c.add(ip+".preempt_delay", "%s is out of range (0s..1h)", in.PreemptDelay)
		}
	}
}

func (c *checker) dns(p string, d *DNS) {
	zone := strings.ToLower(fqdn(d.Zone))
	if d.Zone == "" {
		c.add(p+".zone", "required when DNS is served")
	} else if !isDomain(d.Zone) {
		c.add(p+".zone", "%q is not a domain name", d.Zone)
	}
	for i, ap := range d.Listen {
		if ap.Port() == 0 {
			c.add(fmt.Sprintf("%s.listen[%d]", p, i), "%s has no port", ap)
		}
	}
	if len(d.NS) == 0 {
		c.add(p+".ns", "at least one name server is required for the zone's NS records")
	}
	for i, n := range d.NS {
		if !isDomain(n) {
			c.add(fmt.Sprintf("%s.ns[%d]", p, i), "%q is not a domain name", n)
		}
	}
	if d.Hostmaster != "" && !isDomain(d.Hostmaster) {
		c.add(p+".hostmaster", "%q is not a mailbox in domain form (hostmaster.example.com.)", d.Hostmaster)
	}
	if d.TTL < time.Second || d.TTL > time.Hour || d.TTL%time.Second != 0 {
		c.add(p+".ttl", "%s is out of range (whole seconds, 1s..1h)", d.TTL)
	}
	if len(d.Names) == 0 {
		c.add(p+".names", "at least one name is required when DNS is served")
	}
	ns := map[string]bool{}
	for _, n := range d.NS {
		ns[strings.ToLower(fqdn(n))] = true
	}
	glue := map[string]int{}
	for i, g := range d.Glue {
		gp := fmt.Sprintf("%s.glue[%d]", p, i)
		full := inZone(g.Name, zone)
		switch {
		case !c.zoneName(gp+".name", g.Name, full):
		case !ns[full]:
			c.add(gp+".name", "%q is none of the name servers in %s.ns", g.Name, p)
		case zone != "" && !strings.HasSuffix(full, "."+zone):
			c.add(gp+".name", "%q is outside the zone %s (glue is for the zone's own name servers)", g.Name, zone)
		}
		if j, ok := glue[full]; ok && g.Name != "" {
			c.add(gp+".name", "%q is also glue[%d]", g.Name, j)
		}
		glue[full] = i
		if len(g.Addresses) == 0 {
			c.add(gp+".addresses", "at least one address is required")
		}
		for j, a := range g.Addresses {
			if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || a.Zone() != "" {
				c.add(fmt.Sprintf("%s.addresses[%d]", gp, j), "%s is not a unicast address", a)
			}
		}
	}
	seen := map[string]int{}
	for i, n := range d.Names {
		np := fmt.Sprintf("%s.names[%d]", p, i)
		full := inZone(n.Name, zone)
		switch {
		case !c.zoneName(np+".name", n.Name, full):
		case zone != "" && full != zone && !strings.HasSuffix(full, "."+zone):
			c.add(np+".name", "%q is outside the zone %s", n.Name, zone)
		}
		if j, ok := seen[full]; ok && n.Name != "" {
			c.add(np+".name", "%q is also names[%d]", n.Name, j)
		}
		if j, ok := glue[full]; ok && n.Name != "" {
			c.add(np+".name", "%q is also glue[%d] (a name server's name is not a service name)", n.Name, j)
		}
		seen[full] = i
		if len(n.VIPs) == 0 {
			c.add(np+".vips", "at least one VIP is required")
		}
		for j, a := range n.VIPs {
			if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
				c.add(fmt.Sprintf("%s.vips[%d]", np, j), "%s is not a unicast address", a)
			}
		}
	}
}

// inZone is a DNS name made fully qualified (lower case): a name without
// the final dot is relative to zone.
func inZone(name, zone string) string {
	full := strings.ToLower(name)
	if !strings.HasSuffix(full, ".") {
		full = full + "." + zone
	}
	return full
}

// zoneName checks a name given at path (full is inZone's form of it): it
// is required and a domain name. It reports whether it is.
func (c *checker) zoneName(path, name, full string) bool {
	switch {
	case name == "":
		c.add(path, "required")
	case !isDomain(full):
		c.add(path, "%q is not a domain name", name)
	default:
		return true
	}
	return false
}

func (c *checker) api(p string, a *API) {
	if !filepath.IsAbs(a.Socket) {
		c.add(p+".socket", "%q is not an absolute path", a.Socket)
	}
	if a.Metrics.IsValid() && a.Metrics.Port() == 0 {
		c.add(p+".metrics", "%s has no port", a.Metrics)
	}
	t := &a.TCP
	tp := p + ".tcp"
	if !t.Listen.IsValid() {
		for name, v := range map[string]string{"cert": t.Cert, "key": t.Key, "client_ca": t.ClientCA, "token_file": t.TokenFile} {
			if v != "" {
				c.add(tp+"."+name, "only used with %s.listen, which is not set", tp)
			}
		}
		return
	}
	if t.Listen.Port() == 0 {
		c.add(tp+".listen", "%s has no port", t.Listen)
	}
	if t.Cert == "" || t.Key == "" {
		c.add(tp, "cert and key are required: the TCP listener serves TLS only")
	}
	if t.ClientCA == "" && t.TokenFile == "" {
		c.add(tp, "client_ca or token_file is required: remote clients must authenticate")
	}
}

// Floors and ceilings of check timing: a probe every nanosecond (which
// was accepted) burns a core per target; one timing out after a day never
// reports.
const (
	MinCheckInterval = 100 * time.Millisecond
	MaxCheckInterval = time.Hour
	MinCheckTimeout  = 10 * time.Millisecond
)

func (c *checker) checkTiming(p string, interval, timeout time.Duration) {
	if interval < MinCheckInterval || interval > MaxCheckInterval {
		c.add(p+".interval", "%s is out of range (%s..%s)", interval, MinCheckInterval, MaxCheckInterval)
	}
	switch {
	case timeout < MinCheckTimeout || timeout > MaxCheckInterval:
		c.add(p+".timeout", "%s is out of range (%s..%s)", timeout, MinCheckTimeout, MaxCheckInterval)
	case interval >= MinCheckInterval && timeout > interval:
		c.add(p+".timeout", "%s is longer than the interval %s", timeout, interval)
	}
}

func (c *checker) health(p string, h *Health) {
	c.checkTiming(p, h.Interval, h.Timeout)
	if h.Rise < 1 || h.Rise > 100 {
		c.add(p+".rise", "%d is out of range (1..100)", h.Rise)
	}
	if h.Fall < 1 || h.Fall > 100 {
		c.add(p+".fall", "%d is out of range (1..100)", h.Fall)
	}
	if h.Concurrency < 1 {
		c.add(p+".concurrency", "%d must be at least 1", h.Concurrency)
	}
	if h.Verdict != VerdictCluster && h.Verdict != VerdictLocal {
		c.add(p+".verdict", "%q is not a verdict (cluster, local)", h.Verdict)
	}
	if h.LocalHold < time.Second || h.LocalHold > time.Hour {
		c.add(p+".local_hold", "%s is out of range (1s..1h)", h.LocalHold)
	}
	if h.Self.Uplink != "" && !ifnameRE.MatchString(h.Self.Uplink) {
		c.add(p+".self.uplink", "%q is not an interface name", h.Self.Uplink)
	}
	names := map[string]int{}
	for i := range h.Self.Checks {
		sc := &h.Self.Checks[i]
		sp := fmt.Sprintf("%s.self.checks[%d]", p, i)
		if j, ok := names[sc.Name]; ok {
			c.add(sp+".name", "%q is also checks[%d]", sc.Name, j)
		}
		names[sc.Name] = i
		switch sc.Type {
		case CheckExec:
			if sc.Target != "" {
				c.add(sp+".target", "not used by exec checks")
			}
		case CheckTCP, CheckHTTP, CheckHTTPS:
			if _, _, err := net.SplitHostPort(sc.Target); err != nil {
				c.add(sp+".target", "%q is not host:port", sc.Target)
			}
		default:
			c.add(sp+".type", "%q is not a self check type (exec, tcp, http, https)", sc.Type)
			continue
		}
		c.check(sp, &sc.Check, "")
	}
}

func (c *checker) services(ss []Service) {
	names := map[string]int{}
	type vkey struct {
		vip   netip.Addr
		proto string
		port  int
	}
	vkeys := map[vkey]int{}
	type mkey struct {
		mark uint32
		fam  int
	}
	marks := map[mkey]int{}
	for i := range ss {
		s := &ss[i]
		p := fmt.Sprintf("services[%d]", i)
		if s.Name == "" {
			c.add(p+".name", "required")
		} else if !nameRE.MatchString(s.Name) {
			c.add(p+".name", "%q is not a valid name (letters, digits, '.', '_', '-'; at most 63)", s.Name)
		} else if j, ok := names[s.Name]; ok {
			c.add(p+".name", "%q is also services[%d]", s.Name, j)
		}
		names[s.Name] = i

		switch {
		case !s.VIP.IsValid():
			c.add(p+".vip", "required")
		case s.VIP.Zone() != "":
			c.add(p+".vip", "%s has a zone: a VIP is routed, not bound to a link", s.VIP)
		case s.VIP.IsUnspecified() || s.VIP.IsMulticast():
			c.add(p+".vip", "%s is not a unicast address", s.VIP)
		case s.VIP.IsLoopback():
			c.add(p+".vip", "%s is a loopback address: it never leaves the host", s.VIP)
		case s.VIP.IsLinkLocalUnicast():
			c.add(p+".vip", "%s is link-local: it cannot be announced beyond the link", s.VIP)
		}
		switch s.Protocol {
		case ProtoTCP, ProtoUDP, ProtoSCTP:
		default:
			c.add(p+".protocol", "%q is not a protocol (tcp, udp, sctp)", s.Protocol)
		}
		if s.FWMark != 0 {
			if s.Port != 0 {
				c.add(p+".port", "%d: a fwmark service has no port (fwmark %d selects the packets)", s.Port, s.FWMark)
			}
			k := mkey{s.FWMark, family(s.VIP)}
			if j, ok := marks[k]; ok {
				c.add(p+".fwmark", "%d is also the fwmark of services[%d]", s.FWMark, j)
			}
			marks[k] = i
		} else {
			if s.Port < 1 || s.Port > 65535 {
				c.add(p+".port", "%d is not a port (1..65535); set port or fwmark", s.Port)
			}
			if s.VIP.IsValid() {
				// Compared unmapped: ::ffff:198.51.100.10 is
				// 198.51.100.10 to the kernel (Load canonicalizes;
				// a Config built in code may not be).
				k := vkey{s.VIP.Unmap(), s.Protocol, s.Port}
				if j, ok := vkeys[k]; ok {
					c.add(p, "%s %s:%d is also services[%d]", s.Protocol, s.VIP, s.Port, j)
				}
				vkeys[k] = i
			}
		}
		if !slices.Contains(Schedulers, s.Scheduler) {
			c.add(p+".scheduler", "%q is not a scheduler (%s)", s.Scheduler, strings.Join(Schedulers, " "))
		}
		flags := map[string]bool{}
		for j, f := range s.Flags {
			fp := fmt.Sprintf("%s.flags[%d]", p, j)
			switch {
			case !slices.Contains(SchedulerFlags, f):
				c.add(fp, "%q is not a scheduler flag (%s)", f, strings.Join(SchedulerFlags, " "))
			case !strings.HasPrefix(f, s.Scheduler+"-"):
				c.add(fp, "%q is a flag of the %s scheduler, not of %s", f, strings.SplitN(f, "-", 2)[0], s.Scheduler)
			case flags[f]:
				c.add(fp, "%q is listed twice", f)
			}
			flags[f] = true
		}
		if !validForwarding(s.Forwarding) {
			c.add(p+".forwarding", "%q is not a forwarding method (dr, nat, tun)", s.Forwarding)
		}
		c.persistence(p+".persistence", s)
		switch s.OnDown {
		case OnDownWeightZero, OnDownRemove:
		default:
			c.add(p+".on_down", "%q is not a policy (weight0, remove)", s.OnDown)
		}
		if s.DrainTimeout < 0 || s.DrainTimeout > 24*time.Hour {
			c.add(p+".drain_timeout", "%s is out of range (0s..24h)", s.DrainTimeout)
		}
		if s.Quorum < 0 {
			c.add(p+".quorum", "%d is negative", s.Quorum)
		} else if s.Quorum > len(s.Backends) {
			c.add(p+".quorum", "%d is more than the number of backends (%d): the VIP could never be announced", s.Quorum, len(s.Backends))
		}
		usesTun := s.Forwarding == ForwardTUN
		seen := map[netip.AddrPort]int{}
		for j := range s.Backends {
			b := &s.Backends[j]
			bp := fmt.Sprintf("%s.backends[%d]", p, j)
			fwd := s.Forwarding
			if b.Forwarding != "" {
				fwd = b.Forwarding
				if !validForwarding(fwd) {
					c.add(bp+".forwarding", "%q is not a forwarding method (dr, nat, tun)", fwd)
				}
			}
			usesTun = usesTun || fwd == ForwardTUN
			if !b.Address.IsValid() {
				c.add(bp+".address", "required")
			} else {
				switch {
				case b.Address.Zone() != "":
					c.add(bp+".address", "%s has a zone: IPVS takes a plain address", b.Address)
				case b.Address.IsUnspecified() || b.Address.IsMulticast():
					c.add(bp+".address", "%s is not a unicast address", b.Address)
				case s.VIP.IsValid() && family(b.Address) != family(s.VIP):
					c.add(bp+".address", "%s is not of the VIP's address family (%s)", b.Address, s.VIP)
				case fwd == ForwardNAT && b.Address.Unmap() == s.VIP.Unmap():
					c.add(bp+".address", "%s is the VIP itself: a NAT backend must be another host", b.Address)
				}
				ap := netip.AddrPortFrom(b.Address.Unmap(), uint16(max(0, min(b.Port, 65535))))
				if k, ok := seen[ap]; ok {
					c.add(bp, "%s port %d is also backends[%d]", b.Address, b.Port, k)
				}
				seen[ap] = j
			}
			switch {
			case s.FWMark != 0 && (b.Port < 0 || b.Port > 65535):
				c.add(bp+".port", "%d is not a port (0..65535)", b.Port)
			case s.FWMark == 0 && (b.Port < 1 || b.Port > 65535):
				c.add(bp+".port", "%d is not a port (1..65535)", b.Port)
			case s.FWMark == 0 && (fwd == ForwardDR || fwd == ForwardTUN) && b.Port != s.Port:
				c.add(bp+".port", "%d differs from the service port %d: %s forwarding cannot translate ports (use nat)", b.Port, s.Port, fwd)
			}
			if b.Weight < 0 || b.Weight > 65535 {
				c.add(bp+".weight", "%d is out of range (0..65535)", b.Weight)
			}
			if b.UpperThreshold > 0 && b.LowerThreshold > b.UpperThreshold {
				c.add(bp+".lower_threshold", "%d is above upper_threshold %d", b.LowerThreshold, b.UpperThreshold)
			}
		}
		c.tunnel(p+".tunnel", &s.Tunnel, usesTun)
		c.check(p+".health", &s.Health, s.Forwarding)
	}
}

func validForwarding(f string) bool {
	return f == ForwardDR || f == ForwardNAT || f == ForwardTUN
}

func (c *checker) persistence(p string, s *Service) {
	ps := &s.Persistence
	if ps.Timeout == 0 {
		if ps.Netmask != 0 {
			c.add(p+".netmask", "only used with persistence.timeout, which is not set")
		}
		return
	}
	if ps.Timeout < time.Second || ps.Timeout%time.Second != 0 || ps.Timeout > 31*24*time.Hour {
		c.add(p+".timeout", "%s is out of range (whole seconds, 1s..744h)", ps.Timeout)
	}
	bits := 32
	if s.VIP.Is6() && !s.VIP.Is4In6() {
		bits = 128
	}
	if ps.Netmask < 1 || ps.Netmask > bits {
		c.add(p+".netmask", "%d is not a prefix length for %s (1..%d)", ps.Netmask, s.VIP, bits)
	}
}

func (c *checker) tunnel(p string, t *Tunnel, usesTun bool) {
	if !usesTun {
		if t.Type != "" || t.Port != 0 {
			c.add(p, "only used with forwarding tun")
		}
		return
	}
	// IPVS also has GUE and GRE encapsulation, but the netlink library in
	// use (moby/ipvs v1.1.0) cannot send its tunnel attributes: refuse them
	// here rather than fail when applying.
	if t.Type != "ipip" {
		c.add(p+".type", "%q is not supported: only ipip (IPVS's gue and gre need netlink attributes anycastd cannot send yet)", t.Type)
	}
	if t.Port != 0 {
		c.add(p+".port", "only used by gue tunnels, which are not supported")
	}
	if t.Checksum != "none" {
		c.add(p+".checksum", "%q: checksums are for gue and gre tunnels, which are not supported", t.Checksum)
	}
}

// ValidateCheck checks one health check on its own (anyctl probe), as it
// would be checked in a service with the given forwarding method; problems
// are reported under path.
func ValidateCheck(path string, k *Check, forwarding string) error {
	c := &checker{}
	c.check(path, k, forwarding)
	if len(c.errs) == 0 {
		return nil
	}
	errs := make([]error, len(c.errs))
	for i, e := range c.errs {
		errs[i] = e
	}
	return errors.Join(errs...)
}

// checkFields says which check types use each type-specific field, so a
// field set for another type (a path on a tcp check) is reported instead of
// silently doing nothing.
var checkFields = []struct {
	name  string
	types []string
	set   func(*Check) bool
}{
	{"send", []string{CheckTCP, CheckUDP}, func(k *Check) bool { return k.Send != "" }},
	{"expect", []string{CheckTCP, CheckUDP}, func(k *Check) bool { return k.Expect != "" }},
	{"method", []string{CheckHTTP, CheckHTTPS}, func(k *Check) bool { return k.Method != "" }},
	{"path", []string{CheckHTTP, CheckHTTPS}, func(k *Check) bool { return k.Path != "" }},
	{"host", []string{CheckHTTP, CheckHTTPS}, func(k *Check) bool { return k.Host != "" }},
	{"status", []string{CheckHTTP, CheckHTTPS}, func(k *Check) bool { return len(k.Status) > 0 }},
	{"body", []string{CheckHTTP, CheckHTTPS}, func(k *Check) bool { return k.Body != "" }},
	{"follow_redirects", []string{CheckHTTP, CheckHTTPS}, func(k *Check) bool { return k.FollowRedirects }},
	{"server_name", []string{CheckHTTPS}, func(k *Check) bool { return k.ServerName != "" }},
	{"insecure", []string{CheckHTTPS}, func(k *Check) bool { return k.Insecure }},
	{"ca_cert", []string{CheckHTTPS}, func(k *Check) bool { return k.CACert != "" }},
	{"client_cert", []string{CheckHTTPS}, func(k *Check) bool { return k.ClientCert != "" }},
	{"client_key", []string{CheckHTTPS}, func(k *Check) bool { return k.ClientKey != "" }},
	{"query", []string{CheckDNS}, func(k *Check) bool { return k.Query != "" }},
	{"query_type", []string{CheckDNS}, func(k *Check) bool { return k.QueryType != "" }},
	{"transport", []string{CheckDNS}, func(k *Check) bool { return k.Transport != "" }},
	{"rcode", []string{CheckDNS}, func(k *Check) bool { return k.Rcode != "" }},
	{"answer", []string{CheckDNS}, func(k *Check) bool { return k.Answer != "" }},
	{"command", []string{CheckExec}, func(k *Check) bool { return len(k.Command) > 0 }},
}

var dnsTypes = []string{"A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "CAA"}
var dnsRcodes = []string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"}

// check validates a health check; forwarding is the service's forwarding
// method ("" for self checks).
func (c *checker) check(p string, k *Check, forwarding string) {
	switch k.Type {
	case CheckNone, CheckTCP, CheckHTTP, CheckHTTPS, CheckUDP, CheckDNS, CheckExec:
	default:
		c.add(p+".type", "%q is not a check type (tcp, http, https, udp, dns, exec, none)", k.Type)
		return
	}
	for _, f := range checkFields {
		if f.set(k) && !slices.Contains(f.types, k.Type) {
			c.add(p+"."+f.name, "only used by %s checks, not %s", strings.Join(f.types, "/"), k.Type)
		}
	}
	if k.Type == CheckNone {
		return
	}
	if k.Port < 0 || k.Port > 65535 {
		c.add(p+".port", "%d is not a port (1..65535)", k.Port)
	}
	c.checkTiming(p, k.Interval, k.Timeout)
	if k.Rise < 1 || k.Rise > 100 {
		c.add(p+".rise", "%d is out of range (1..100)", k.Rise)
	}
	if k.Fall < 1 || k.Fall > 100 {
		c.add(p+".fall", "%d is out of range (1..100)", k.Fall)
	}
	if k.ThroughVIP && forwarding != ForwardDR && forwarding != ForwardTUN {
		c.add(p+".through_vip", "only for dr and tun services, where the real server holds the VIP")
	}
	switch k.Type {
	case CheckUDP:
		if k.Send == "" {
			c.add(p+".send", "required: a udp check needs a payload to send")
		}
	case CheckHTTP, CheckHTTPS:
		if k.Method != "" && !httpTokenRE.MatchString(k.Method) {
			c.add(p+".method", "%q is not an HTTP method", k.Method)
		}
		if !strings.HasPrefix(k.Path, "/") {
			c.add(p+".path", "%q must start with /", k.Path)
		}
		for i, st := range k.Status {
			if _, _, ok := ParseStatusRange(st); !ok {
				c.add(fmt.Sprintf("%s.status[%d]", p, i), "%q is not a status code or range (200, 200-299; 100..599)", st)
			}
		}
		if k.Body != "" {
			if _, err := regexp.Compile(k.Body); err != nil {
				c.add(p+".body", "not a valid regular expression: %v", err)
			}
		}
		if (k.ClientCert == "") != (k.ClientKey == "") {
			c.add(p, "client_cert and client_key go together")
		}
	case CheckDNS:
		if k.Query == "" {
			c.add(p+".query", "required: the name to look up")
		} else if !isDomain(k.Query) {
			c.add(p+".query", "%q is not a domain name", k.Query)
		}
		if !slices.Contains(dnsTypes, strings.ToUpper(k.QueryType)) {
			c.add(p+".query_type", "%q is not a supported type (%s)", k.QueryType, strings.Join(dnsTypes, " "))
		}
		if k.Transport != "udp" && k.Transport != "tcp" {
			c.add(p+".transport", "%q is not a transport (udp, tcp)", k.Transport)
		}
		if !slices.Contains(dnsRcodes, strings.ToUpper(k.Rcode)) {
			c.add(p+".rcode", "%q is not an rcode (%s)", k.Rcode, strings.Join(dnsRcodes, " "))
		}
	case CheckExec:
		if len(k.Command) == 0 || k.Command[0] == "" {
			c.add(p+".command", "required: the program and its arguments, as a list")
		}
	}
}

// ParseStatusRange parses an HTTP status "200" or range "200-299".
func ParseStatusRange(s string) (lo, hi int, ok bool) {
	a, b, isRange := strings.Cut(s, "-")
	lo, err := strconv.Atoi(strings.TrimSpace(a))
	if err != nil {
		return 0, 0, false
	}
	hi = lo
	if isRange {
		if hi, err = strconv.Atoi(strings.TrimSpace(b)); err != nil {
			return 0, 0, false
		}
	}
	if lo < 100 || hi > 599 || lo > hi {
		return 0, 0, false
	}
	return lo, hi, true
}

// family is 4 or 6; a v4-mapped IPv6 address counts as IPv4.
func family(a netip.Addr) int {
	if a.Unmap().Is4() {
		return 4
	}
	return 6
}

func isIP(s string) bool {
	_, err := netip.ParseAddr(s)
	return err == nil
}

func isDomain(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for l := range strings.SplitSeq(s, ".") {
		if !dnsLabelRE.MatchString(l) {
			return false
		}
	}
	return true
}

func (c *checker) port(path string, n int) {
	if n < 1 || n > 65535 {
		c.add(path, "%d is not a port (1..65535)", n)
	}
}
