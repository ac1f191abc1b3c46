package keepalived

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/anycastd/anycastd/configs"
)

// Skipped is a statement that was not translated, and why.
type Skipped struct {
	// File is the included file the statement is in, "" for the main one.
	File string
	Line int
	What string
	Why  string
}

// String is "line N: what: why", or "FILE:line N: what: why" for a
// statement in an included file.
func (s Skipped) String() string {
	return fmt.Sprintf("%s: %s: %s", where(s.File, s.Line), s.What, s.Why)
}

// Result is a translation.
type Result struct {
	Services []configs.Service
	VRRP     *configs.VRRP
	Skipped  []Skipped
}

type tr struct {
	res    Result
	groups map[string][]groupEntry
	// vmac holds the use_vmac statements, one per instance that has one.
	vmac []*Node
	// vrrpVersion is global_defs' vrrp_version (0: not set, keepalived's
	// default 2); auth holds each instance's authentication block until
	// its version is known.
	vrrpVersion int
	auth        map[int]*Node
}

type groupEntry struct {
	vip    netip.Addr
	port   int
	fwmark uint32
	line   int
}

func (t *tr) skip(n *Node, why string) {
	what := n.Key
	if len(n.Args) > 0 {
		what += " " + strings.Join(n.Args, " ")
	}
	sk := Skipped{File: n.File, Line: n.Line, What: what, Why: why}
	// A file included twice (a shared check) would report its lines twice.
	if !slices.Contains(t.res.Skipped, sk) {
		t.res.Skipped = append(t.res.Skipped, sk)
	}
}

// Translate turns keepalived statements into anycastd services and VRRP
// instances.
func Translate(nodes []*Node) Result {
	t := &tr{groups: map[string][]groupEntry{}, auth: map[int]*Node{}}
	for _, n := range nodes {
		if n.Key == "virtual_server_group" {
			t.group(n)
		}
	}
	for _, n := range nodes {
		switch n.Key {
		case "virtual_server_group":
		case "virtual_server":
			t.virtualServer(n)
		case "vrrp_instance":
			t.vrrpInstance(n)
		case "global_defs":
			for _, c := range n.Children {
				switch c.Key {
				case "vrrp_version":
					if len(c.Args) == 1 && (c.Args[0] == "2" || c.Args[0] == "3") {
						t.vrrpVersion, _ = strconv.Atoi(c.Args[0])
					} else {
						t.skip(c, "not 2 or 3")
					}
				case "router_id", "notification_email", "notification_email_from", "smtp_server", "smtp_connect_timeout",
					"enable_script_security", "script_user":
					// Identity and mail settings: anycastd has its own
					// (node.name) or none.
				default:
					t.skip(c, "global setting with no anycastd equivalent")
				}
			}
		case "vrrp_script":
			t.skip(n, "vrrp_script: use health.self.checks (exec) in anycastd")
		case "include", "includer", "includem", "includew", "includeb":
			// ParseFile follows includes; Parse (text alone) cannot.
			t.skip(n, "include not followed: the text was parsed without its file")
		default:
			t.skip(n, "not translated")
		}
	}
	t.versions()
	t.virtualMAC()
	return t.res
}

// versions gives each instance keepalived's VRRP version for it: its own
// "version", else global_defs' vrrp_version, else keepalived's default 2;
// IPv6 instances always 3 (keepalived switches them too). Then the
// authentication it sends in that version: a VRRPv2 PASS password is
// carried, VRRPv3 has none.
func (t *tr) versions() {
	if t.res.VRRP == nil {
		return
	}
	for i := range t.res.VRRP.Instances {
		in := &t.res.VRRP.Instances[i]
		if in.Version == 0 {
			in.Version = t.vrrpVersion
		}
		if in.Version == 0 {
			in.Version = 2
		}
		if len(in.VIPs) > 0 && in.VIPs[0].Is6() && !in.VIPs[0].Is4In6() {
			in.Version = 3
		}
		n := t.auth[i]
		if n == nil {
			continue
		}
		if in.Version == 3 {
			t.skip(n, "VRRPv3 has no authentication (RFC 5798); keepalived ignores it in v3 too")
			continue
		}
		var typ, pass string
		for _, c := range n.Children {
			if len(c.Args) == 0 {
				continue
			}
			switch c.Key {
			case "auth_type":
				typ = c.Args[0]
			case "auth_pass":
				pass = c.Args[0]
			}
		}
		switch {
		case typ != "PASS":
			t.skip(n, fmt.Sprintf("auth_type %s is not supported (PASS is; RFC 3768 removed AH)", typ))
		case pass == "":
			t.skip(n, "auth_type PASS without auth_pass")
		default:
			if len(pass) > 8 {
				// keepalived sends the first 8 bytes; so must we.
				pass = pass[:8]
			}
			in.Authentication = &configs.VRRPAuth{Type: "pass", Password: pass}
		}
	}
}

// virtualMAC maps use_vmac, which keepalived sets per instance, onto
// anycastd's routing.vrrp.virtual_mac, which is one setting for all:
// translated when every instance has it, reported otherwise.
func (t *tr) virtualMAC() {
	if len(t.vmac) == 0 || t.res.VRRP == nil {
		return
	}
	if n := len(t.res.VRRP.Instances); len(t.vmac) < n {
		for _, c := range t.vmac {
			t.skip(c, fmt.Sprintf("anycastd's virtual_mac is one setting for every instance and %d of %d instances use it: left off", len(t.vmac), n))
		}
		return
	}
	t.res.VRRP.VirtualMAC = true
	for _, c := range t.vmac {
		if len(c.Args) > 0 {
			t.skip(c, "translated as virtual_mac: true, but anycastd names the interface vrrp.VRID, not "+c.Args[0])
		}
	}
}

func (t *tr) group(n *Node) {
	if len(n.Args) != 1 {
		t.skip(n, "a group needs one name")
		return
	}
	for _, c := range n.Children {
		switch {
		case c.Key == "fwmark" && len(c.Args) == 1:
			m, err := strconv.ParseUint(c.Args[0], 10, 32)
			if err != nil {
				t.skip(c, "not a firewall mark")
				continue
			}
			t.groups[n.Args[0]] = append(t.groups[n.Args[0]], groupEntry{fwmark: uint32(m), line: c.Line})
		case len(c.Args) == 1:
			if strings.Contains(c.Key, "-") {
				t.skip(c, "address ranges in groups are not supported: list the addresses")
				continue
			}
			a, err := netip.ParseAddr(c.Key)
			p, err2 := strconv.Atoi(c.Args[0])
			if err != nil || err2 != nil {
				t.skip(c, "not an address and port")
				continue
			}
			t.groups[n.Args[0]] = append(t.groups[n.Args[0]], groupEntry{vip: a, port: p, line: c.Line})
		default:
			t.skip(c, "not an address and port")
		}
	}
}

// number parses a statement's argument as an unsigned integer of at most
// bits bits; anything else is reported, not translated (a weight that
// silently became 0 would take a real server out of service).
func (t *tr) number(c *Node, arg string, bits int) (int, bool) {
	v, err := strconv.ParseUint(arg, 10, bits)
	if err != nil {
		t.skip(c, fmt.Sprintf("%q is not a number (0 to %d)", arg, uint64(1)<<bits-1))
		return 0, false
	}
	return int(v), true
}

func seconds(s string) (time.Duration, error) {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("not a number of seconds")
	}
	return time.Duration(f * float64(time.Second)), nil
}

func (t *tr) virtualServer(n *Node) {
	var keys []groupEntry
	name := ""
	switch {
	case len(n.Args) == 2 && n.Args[0] == "fwmark":
		m, err := strconv.ParseUint(n.Args[1], 10, 32)
		if err != nil {
			t.skip(n, "not a firewall mark")
			return
		}
		keys = []groupEntry{{fwmark: uint32(m), line: n.Line}}
		name = "fwmark-" + n.Args[1]
	case len(n.Args) == 2 && n.Args[0] == "group":
		keys = t.groups[n.Args[1]]
		if len(keys) == 0 {
			t.skip(n, "no such virtual_server_group (or it is empty)")
			return
		}
		name = n.Args[1]
	case len(n.Args) == 2:
		a, err := netip.ParseAddr(n.Args[0])
		p, err2 := strconv.Atoi(n.Args[1])
		if err != nil || err2 != nil {
			t.skip(n, "not an address and port")
			return
		}
		keys = []groupEntry{{vip: a, port: p, line: n.Line}}
		name = fmt.Sprintf("%s-%d", a, p)
	default:
		t.skip(n, "virtual_server needs ADDRESS PORT, fwmark N or group NAME")
		return
	}
	s := configs.Service{Protocol: configs.ProtoTCP, Scheduler: "wlc", Forwarding: configs.ForwardNAT, OnDown: configs.OnDownRemove}
	var check *configs.Check
	checkFrom := 0
	var interval time.Duration
	retries := 0
	for _, c := range n.Children {
		arg := ""
		if len(c.Args) > 0 {
			arg = c.Args[0]
		}
		switch c.Key {
		case "lb_algo", "lvs_sched":
			s.Scheduler = arg
		case "lb_kind", "lvs_method":
			if f, ok := forwarding(arg); ok {
				s.Forwarding = f
			} else {
				t.skip(c, "unknown forwarding method")
			}
		case "protocol":
			s.Protocol = strings.ToLower(arg)
		case "persistence_timeout":
			d, err := seconds(arg)
			if err != nil {
				t.skip(c, err.Error())
				continue
			}
			s.Persistence.Timeout = d
		case "persistence_granularity":
			m, err := netip.ParseAddr(arg)
			if err != nil || !m.Is4() {
				t.skip(c, "not an IPv4 netmask")
				continue
			}
			b := m.As4()
			bits := 0
			for _, x := range b {
				for x&0x80 != 0 {
					bits++
					x <<= 1
				}
			}
			s.Persistence.Netmask = bits
		case "delay_loop":
			d, err := seconds(arg)
			if err != nil {
				t.skip(c, err.Error())
				continue
			}
			interval = d
		case "retry", "retries":
			if v, ok := t.number(c, arg, 31); ok {
				retries = v
			}
		case "quorum":
			q, err := strconv.Atoi(arg)
			if err != nil {
				t.skip(c, "not a number")
				continue
			}
			s.Quorum = q
		case "ops":
			s.Flags = append(s.Flags, "one-packet")
		case "real_server":
			b, ck, ok := t.realServer(c)
			if !ok {
				continue
			}
			s.Backends = append(s.Backends, b)
			if ck != nil && check == nil {
				check, checkFrom = ck, c.Line
			} else if ck != nil && !sameCheck(*ck, *check) {
				why := fmt.Sprintf("its health check differs from the one of line %d: anycastd checks every backend of a service the same way (that one is used)", checkFrom)
				if ck.Type == configs.CheckExec {
					why += "; an exec check finds its backend in ANYCASTD_TARGET_ADDR and ANYCASTD_TARGET_PORT"
				}
				t.skip(c, why)
			}
			if ck == nil && check != nil {
				t.skip(c, "no health check, unlike the others: it gets the service's check")
			}
		case "virtualhost":
			// Used by HTTP_GET below when given at this level.
		case "sorry_server", "sorry_server_inhibit", "alpha", "omega", "quorum_up", "quorum_down", "hysteresis", "ha_suspend", "inhibit_on_failure":
			if c.Key == "inhibit_on_failure" {
				s.OnDown = configs.OnDownWeightZero
				continue
			}
			t.skip(c, "no anycastd equivalent")
		default:
			t.skip(c, "not translated")
		}
	}
	if check == nil {
		s.Health = configs.Check{Type: configs.CheckNone}
	} else {
		s.Health = *check
	}
	if interval > 0 {
		s.Health.Interval = interval
	}
	if retries > 0 && s.Health.Fall == 0 {
		s.Health.Fall = retries
	}
	if s.Health.Type != configs.CheckNone && s.Health.Timeout > 0 && s.Health.Interval > 0 && s.Health.Timeout > s.Health.Interval {
		s.Health.Timeout = s.Health.Interval
	}
	for _, k := range keys {
		svc := s
		svc.Backends = slices.Clone(s.Backends)
		svc.Name = sanitize(name)
		if len(keys) > 1 {
			svc.Name = sanitize(fmt.Sprintf("%s-%s-%d", name, k.vip, k.port))
		}
		if k.fwmark != 0 {
			svc.FWMark = k.fwmark
			svc.Name = sanitize(fmt.Sprintf("%s-fwmark-%d", name, k.fwmark))
			if len(keys) == 1 {
				svc.Name = sanitize(name)
			}
			// An fwmark service still needs a VIP to announce: the
			// first real server's family is all keepalived tells us.
			t.res.Skipped = append(t.res.Skipped, Skipped{Line: k.line, What: fmt.Sprintf("fwmark %d", k.fwmark),
				Why: "set the service's vip by hand: anycastd announces a VIP for every service, keepalived's fwmark services have none"})
		} else {
			svc.VIP, svc.Port = k.vip, k.port
		}
		t.res.Services = append(t.res.Services, svc)
	}
}

// forwarding maps keepalived's lb_kind to a forwarding method.
func forwarding(kind string) (string, bool) {
	switch strings.ToUpper(kind) {
	case "NAT":
		return configs.ForwardNAT, true
	case "DR":
		return configs.ForwardDR, true
	case "TUN":
		return configs.ForwardTUN, true
	}
	return "", false
}

func sanitize(s string) string {
	r := strings.NewReplacer(":", "-", "/", "-", " ", "-")
	s = r.Replace(s)
	if len(s) > 63 {
		s = s[:63]
	}
	return s
}

func sameCheck(a, b configs.Check) bool {
	return a.Type == b.Type && a.Port == b.Port && a.Path == b.Path && slices.Equal(a.Status, b.Status) &&
		slices.Equal(a.Command, b.Command) && a.Timeout == b.Timeout
}

func (t *tr) realServer(n *Node) (configs.Backend, *configs.Check, bool) {
	if len(n.Args) < 1 || len(n.Args) > 2 {
		t.skip(n, "real_server needs ADDRESS [PORT]")
		return configs.Backend{}, nil, false
	}
	a, err := netip.ParseAddr(n.Args[0])
	if err != nil {
		t.skip(n, "not an address")
		return configs.Backend{}, nil, false
	}
	b := configs.Backend{Address: a, Weight: 1}
	if len(n.Args) == 2 {
		if b.Port, err = strconv.Atoi(n.Args[1]); err != nil {
			t.skip(n, "not a port")
			return configs.Backend{}, nil, false
		}
	}
	var check *configs.Check
	for _, c := range n.Children {
		arg := ""
		if len(c.Args) > 0 {
			arg = c.Args[0]
		}
		switch c.Key {
		case "weight":
			if v, ok := t.number(c, arg, 31); ok {
				b.Weight = v
			}
		case "lvs_method", "lb_kind":
			if f, ok := forwarding(arg); ok {
				b.Forwarding = f
			} else {
				t.skip(c, "unknown forwarding method")
			}
		case "uthreshold":
			if v, ok := t.number(c, arg, 32); ok {
				b.UpperThreshold = uint32(v)
			}
		case "lthreshold":
			if v, ok := t.number(c, arg, 32); ok {
				b.LowerThreshold = uint32(v)
			}
		case "TCP_CHECK", "HTTP_GET", "SSL_GET", "MISC_CHECK", "DNS_CHECK":
			if check != nil {
				t.skip(c, "a second check on one real server: anycastd runs one per service")
				continue
			}
			check = t.check(c)
		case "inhibit_on_failure":
		default:
			t.skip(c, "not translated")
		}
	}
	return b, check, true
}

func (t *tr) check(n *Node) *configs.Check {
	ck := &configs.Check{}
	switch n.Key {
	case "TCP_CHECK":
		ck.Type = configs.CheckTCP
	case "HTTP_GET":
		ck.Type = configs.CheckHTTP
	case "SSL_GET":
		ck.Type = configs.CheckHTTPS
		ck.Insecure = true // keepalived's SSL_GET does not verify certificates
	case "MISC_CHECK":
		ck.Type = configs.CheckExec
	case "DNS_CHECK":
		ck.Type = configs.CheckDNS
	}
	urls := 0
	for _, c := range n.Children {
		arg := ""
		if len(c.Args) > 0 {
			arg = c.Args[0]
		}
		switch c.Key {
		case "connect_port":
			if v, ok := t.number(c, arg, 16); ok {
				ck.Port = v
			}
		case "connect_timeout", "misc_timeout", "dns_timeout":
			d, err := seconds(arg)
			if err != nil {
				t.skip(c, err.Error())
				continue
			}
			ck.Timeout = d
		case "retry", "nb_get_retry":
			if v, ok := t.number(c, arg, 31); ok {
				ck.Fall = v
			}
		case "delay_before_retry":
			t.skip(c, "anycastd retries on the check's interval: fall failures in a row take a backend down")
		case "virtualhost":
			ck.Host = arg
		case "url":
			urls++
			if urls > 1 {
				t.skip(c, "only the first url is checked")
				continue
			}
			for _, u := range c.Children {
				ua := ""
				if len(u.Args) > 0 {
					ua = u.Args[0]
				}
				switch u.Key {
				case "path":
					ck.Path = ua
				case "status_code":
					ck.Status = append(ck.Status, ua)
				case "digest":
					t.skip(u, "digest of the body is not checked (use health.body, a regular expression)")
				default:
					t.skip(u, "not translated")
				}
			}
		case "misc_path":
			ck.Command = splitCommand(arg)
		case "misc_dynamic":
			t.skip(c, "dynamic weights from the exit code are not supported: exit 0 is up, anything else down")
		case "type":
			ck.QueryType = strings.ToUpper(arg)
		case "name":
			ck.Query = arg
		case "bindto", "bind_port", "connect_ip", "warmup", "fwmark":
			t.skip(c, "not translated")
		default:
			t.skip(c, "not translated")
		}
	}
	return ck
}

// splitCommand splits misc_path's command line on spaces (keepalived runs
// it without a shell unless it names one).
func splitCommand(s string) []string { return strings.Fields(s) }

func (t *tr) vrrpInstance(n *Node) {
	if t.res.VRRP == nil {
		t.res.VRRP = &configs.VRRP{}
	}
	v := t.res.VRRP
	in := configs.VRRPInstance{Preempt: true}
	if len(n.Args) > 0 {
		in.Name = sanitize(n.Args[0])
	}
	for _, c := range n.Children {
		arg := ""
		if len(c.Args) > 0 {
			arg = c.Args[0]
		}
		switch c.Key {
		case "interface":
			if v.Interface != "" && v.Interface != arg {
				t.skip(c, fmt.Sprintf("anycastd runs VRRP on one interface (%s, from the first instance)", v.Interface))
				continue
			}
			v.Interface = arg
		case "virtual_router_id":
			if v, ok := t.number(c, arg, 8); ok {
				in.VRID = v
			}
		case "priority":
			if v, ok := t.number(c, arg, 8); ok {
				in.Priority = v
			}
		case "advert_int":
			d, err := seconds(arg)
			if err != nil {
				t.skip(c, err.Error())
				continue
			}
			if v.AdvertInterval != 0 && v.AdvertInterval != d {
				t.skip(c, fmt.Sprintf("anycastd uses one advert interval (%v, from the first instance)", v.AdvertInterval))
				continue
			}
			v.AdvertInterval = d
		case "state":
			// MASTER/BACKUP: the priorities decide in anycastd, as they do
			// in keepalived once running.
		case "nopreempt":
			in.Preempt = false
		case "preempt_delay":
			d, err := seconds(arg)
			if err != nil {
				t.skip(c, err.Error())
				continue
			}
			in.PreemptDelay = d
		case "virtual_ipaddress":
			for _, a := range c.Children {
				p, err := netip.ParsePrefix(a.Key)
				var addr netip.Addr
				if err == nil {
					addr = p.Addr()
				} else if addr, err = netip.ParseAddr(a.Key); err != nil {
					t.skip(a, "not an address")
					continue
				}
				if len(a.Args) > 0 {
					t.skip(a, "options after the address (dev, label, scope) are not translated: the VIP goes on routing.vrrp.interface as a host address")
				}
				in.VIPs = append(in.VIPs, addr)
			}
		case "unicast_peer":
			for _, a := range c.Children {
				addr, err := netip.ParseAddr(a.Key)
				if err != nil {
					t.skip(a, "not an address")
					continue
				}
				if !slices.Contains(v.UnicastPeers, addr) {
					v.UnicastPeers = append(v.UnicastPeers, addr)
				}
			}
		case "unicast_src_ip":
			t.skip(c, "anycastd sends from the interface's first address")
		case "use_vmac":
			t.vmac = append(t.vmac, c)
		case "authentication":
			t.auth[len(v.Instances)] = c
		case "version":
			if arg == "2" || arg == "3" {
				in.Version, _ = strconv.Atoi(arg)
			} else {
				t.skip(c, "not 2 or 3")
			}
		case "track_script", "track_interface", "notify", "notify_master", "notify_backup", "notify_fault", "smtp_alert",
			"garp_master_delay", "virtual_routes", "virtual_rules", "dont_track_primary":
			t.skip(c, "not translated (anycastd's own health decides the priority: health.self and unhealthy_priority)")
		default:
			t.skip(c, "not translated")
		}
	}
	if in.Priority == 0 {
		in.Priority = 100 // keepalived's default
	}
	v.Instances = append(v.Instances, in)
}
