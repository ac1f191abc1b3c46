package configs

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// doc builds a document from the base sections with some of them replaced
// or added; keys are top-level keys, values their YAML bodies (indented).
func doc(over map[string]string) []byte {
	sections := map[string]string{
		"node":    "  name: t1\n  addresses: [10.0.1.1]\n",
		"cluster": "  insecure: true\n",
		"routing": "  mode: kernel\n  kernel: {table: 100}\n",
	}
	for k, v := range over {
		sections[k] = v
	}
	var b strings.Builder
	keys := make([]string, 0, len(sections))
	for k := range sections {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if sections[k] == "-" {
			continue
		}
		b.WriteString(k + ":\n" + sections[k])
	}
	return []byte(b.String())
}

const webService = `  - name: web
    vip: 198.51.100.10
    port: 80
    backends:
      - {address: 10.0.2.11}
      - {address: 10.0.2.12}
`

func TestExamplesValidate(t *testing.T) {
	files, err := filepath.Glob("examples/*.yaml")
	if err != nil || len(files) < 3 {
		t.Fatalf("examples: %v (found %d)", err, len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			c, err := Load(f)
			if err != nil {
				t.Fatalf("Load(%s):\n%v", f, err)
			}
			if len(c.Services) < 2 {
				t.Errorf("%s has %d services, want at least 2", f, len(c.Services))
			}
			if err := Validate(c); err != nil {
				t.Errorf("Validate after Load: %v", err)
			}
		})
	}
}

func TestValid(t *testing.T) {
	cases := []struct {
		name  string
		over  map[string]string
		check func(t *testing.T, c *Config)
	}{
		{"minimal", nil, func(t *testing.T, c *Config) {
			if c.Cluster.MaxActive != 8 || c.Cluster.Port != 7946 || c.Routing.Kernel.Protocol != DefaultKernelProtocol {
				t.Errorf("defaults not filled: %+v %+v", c.Cluster, c.Routing.Kernel)
			}
		}},
		{"service defaults", map[string]string{"services": webService}, func(t *testing.T, c *Config) {
			s := c.Services[0]
			if s.Scheduler != "mh" || s.Forwarding != "dr" || s.Protocol != "tcp" || s.Quorum != 1 ||
				s.OnDown != OnDownWeightZero || s.DrainTimeout != DefaultDrainTimeout {
				t.Errorf("service defaults: %+v", s)
			}
			if b := s.Backends[0]; b.Port != 80 || b.Weight != 1 {
				t.Errorf("backend defaults: %+v", b)
			}
			if h := s.Health; h.Type != "tcp" || h.Interval != 2*time.Second || h.Rise != 2 || h.Fall != 3 {
				t.Errorf("check defaults: %+v", h)
			}
		}},
		{"explicit zeros kept", map[string]string{"services": `  - name: web
    vip: 198.51.100.10
    port: 80
    quorum: 0
    drain_timeout: 0s
    backends: [{address: 10.0.2.11, weight: 0}]
`}, func(t *testing.T, c *Config) {
			s := c.Services[0]
			if s.Quorum != 0 || s.DrainTimeout != 0 || s.Backends[0].Weight != 0 {
				t.Errorf("explicit zero replaced by a default: quorum %d drain %s weight %d", s.Quorum, s.DrainTimeout, s.Backends[0].Weight)
			}
		}},
		{"health defaults inherited", map[string]string{
			"health":   "  interval: 5s\n  timeout: 2s\n  rise: 4\n",
			"services": webService,
		}, func(t *testing.T, c *Config) {
			if h := c.Services[0].Health; h.Interval != 5*time.Second || h.Timeout != 2*time.Second || h.Rise != 4 || h.Fall != 3 {
				t.Errorf("check did not inherit health defaults: %+v", h)
			}
		}},
		{"bgp defaults", map[string]string{"routing": `  mode: bgp
  bgp:
    asn: 65001
    neighbors: [{address: 10.0.1.254, asn: 65000}, {address: "2001:db8::1", asn: 65000}]
`}, func(t *testing.T, c *Config) {
			b := c.Routing.BGP
			if b.RouterID.String() != "10.0.1.1" || b.ListenPort != 179 {
				t.Errorf("router id %s listen %d", b.RouterID, b.ListenPort)
			}
			n := b.Neighbors[0]
			if n.HoldTime != 9*time.Second || n.Keepalive != 3*time.Second || !slices.Equal(n.Families, []string{"ipv4"}) {
				t.Errorf("neighbour defaults: %+v", n)
			}
			if !slices.Equal(b.Neighbors[1].Families, []string{"ipv6"}) {
				t.Errorf("v6 neighbour families %v", b.Neighbors[1].Families)
			}
		}},
		{"bgp no listen", map[string]string{"routing": `  mode: bgp
  bgp: {asn: 65001, listen_port: -1, neighbors: [{address: 10.0.1.254, asn: 65000}]}
`}, func(t *testing.T, c *Config) {
			if c.Routing.BGP.ListenPort != -1 {
				t.Errorf("listen_port %d", c.Routing.BGP.ListenPort)
			}
		}},
		{"vrrp preempt false kept", map[string]string{"routing": `  mode: vrrp
  vrrp:
    interface: eth1
    instances: [{vrid: 1, vips: [192.0.2.1], preempt: false}]
`}, func(t *testing.T, c *Config) {
			in := c.Routing.VRRP.Instances[0]
			if in.Preempt || in.Priority != 100 || in.Name != "vrid1" {
				t.Errorf("instance %+v", in)
			}
		}},
		{"fwmark backend port 0", map[string]string{"services": `  - name: m
    vip: 198.51.100.10
    fwmark: 7
    backends: [{address: 10.0.2.11}]
`}, nil},
		{"tun ipip", map[string]string{"services": `  - name: t
    vip: 198.51.100.10
    port: 80
    forwarding: tun
    backends: [{address: 10.0.2.11}]
`}, func(t *testing.T, c *Config) {
			if tu := c.Services[0].Tunnel; tu.Type != "ipip" || tu.Checksum != "none" {
				t.Errorf("tunnel defaults: %+v", tu)
			}
		}},
		{"nat port translation", map[string]string{"services": `  - name: n
    vip: 198.51.100.10
    port: 80
    forwarding: nat
    backends: [{address: 10.0.2.11, port: 8080}]
`}, nil},
		{"conn_sync defaults", map[string]string{"node": "  name: t1\n  conn_sync: {enabled: true, interface: eth1, sync_id: 3}\n"}, func(t *testing.T, c *Config) {
			if cs := c.Node.ConnSync; cs.Group.String() != "224.0.0.81" || cs.Port != 8848 || cs.TTL != 1 || cs.MaxLen != 0 || cs.SyncID != 3 {
				t.Errorf("conn_sync defaults: %+v", cs)
			}
		}},
		{"same vip different protocol", map[string]string{"services": webService + `  - name: web-udp
    vip: 198.51.100.10
    port: 80
    protocol: udp
    backends: [{address: 10.0.2.11}]
`}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(doc(tc.over))
			if err != nil {
				t.Fatalf("Parse: %v\n%s", err, doc(tc.over))
			}
			if tc.check != nil {
				tc.check(t, c)
			}
		})
	}
}

func TestInvalid(t *testing.T) {
	cases := []struct {
		name string
		over map[string]string
		want []string // each must appear as a whole error line
	}{
		{"backend port out of range", map[string]string{"services": `  - name: web
    vip: 198.51.100.10
    port: 80
    forwarding: nat
    backends: [{address: 10.0.2.11, port: 70000}]
`}, []string{"services[0].backends[0].port: 70000 is not a port (1..65535)"}},
		{"unknown key", map[string]string{"services": `  - name: web
    vip: 198.51.100.10
    port: 80
    schedular: rr
    backends: [{address: 10.0.2.11}]
`}, []string{"services[0].schedular: unknown key"}},
		{"unknown top-level key", map[string]string{"servics": "  []\n"}, []string{"servics: unknown key"}},
		{"bad ip", map[string]string{"services": `  - name: web
    vip: 198.51.100.300
    port: 80
    backends: [{address: 10.0.2.11}]
`}, []string{`services[0].vip: "198.51.100.300" is not a valid IP address`}},
		{"conn_sync settings", map[string]string{"node": "  name: t1\n  conn_sync: {enabled: true, interface: \"eth 0\", sync_id: 256, group: 10.0.0.1, ttl: 300, max_len: 100}\n"},
			[]string{`node.conn_sync.interface: "eth 0" is not an interface name (required: the directors' segment)`,
				"node.conn_sync.sync_id: 256 is not 0-255", "node.conn_sync.group: 10.0.0.1 is not a multicast address",
				"node.conn_sync.ttl: 300 is not 1-255", "node.conn_sync.max_len: 100 is not 0 (from the MTU) or 576-65507"}},
		{"conn_sync needs the kernel dataplane", map[string]string{"node": "  name: t1\n  dataplane: memory\n  conn_sync: {enabled: true, interface: eth0}\n"},
			[]string{"node.conn_sync.enabled: needs node.dataplane: kernel (the memory dataplane has no connections to share)"}},
		{"bare number duration", map[string]string{"health": "  interval: 2\n"},
			[]string{"health.interval: 2 is not a duration: give a unit, e.g. 2s"}},
		{"health verdict and local_hold", map[string]string{"health": "  verdict: mine\n  local_hold: 500ms\n"},
			[]string{`health.verdict: "mine" is not a verdict (cluster, local)`, "health.local_hold: 500ms is out of range (1s..1h)"}},
		{"wrong type", map[string]string{"cluster": "  insecure: true\n  port: [1]\n"},
			[]string{"cluster.port: a list is not a valid integer"}},
		{"duplicate service", map[string]string{"services": webService + webService},
			[]string{"services[1]: tcp 198.51.100.10:80 is also services[0]", `services[1].name: "web" is also services[0]`}},
		{"same vip spelled ipv4-mapped", map[string]string{"services": webService + `  - name: web6
    vip: '::ffff:198.51.100.10'
    port: 80
    backends: [{address: 10.0.2.11}]
`}, []string{"services[1]: tcp 198.51.100.10:80 is also services[0]"}},
		{"same backend spelled ipv4-mapped", map[string]string{"services": `  - name: web
    vip: 198.51.100.10
    port: 80
    backends: [{address: 10.0.2.12}, {address: '::ffff:10.0.2.12'}]
`}, []string{"services[0].backends[1]: 10.0.2.12 port 80 is also backends[0]"}},
		{"family mismatch", map[string]string{"services": `  - name: web
    vip: "2001:db8::10"
    port: 80
    backends: [{address: 10.0.2.11}]
`}, []string{"services[0].backends[0].address: 10.0.2.11 is not of the VIP's address family (2001:db8::10)"}},
		{"nat backend on vip", map[string]string{"services": `  - name: web
    vip: 198.51.100.10
    port: 80
    forwarding: nat
    backends: [{address: 198.51.100.10, port: 8080}]
`}, []string{"services[0].backends[0].address: 198.51.100.10 is the VIP itself: a NAT backend must be another host"}},
		{"quorum above backends", map[string]string{"services": `  - name: web
    vip: 198.51.100.10
    port: 80
    quorum: 3
    backends: [{address: 10.0.2.11}, {address: 10.0.2.12}]
`}, []string{"services[0].quorum: 3 is more than the number of backends (2): the VIP could never be announced"}},
		{"mh flag on rr", map[string]string{"services": `  - name: web
    vip: 198.51.100.10
    port: 80
    scheduler: rr
    flags: [mh-port]
    backends: [{address: 10.0.2.11}]
`}, []string{`services[0].flags[0]: "mh-port" is a flag of the mh scheduler, not of rr`}},
		{"dr port translation", map[string]string{"services": `  - name: web
    vip: 198.51.100.10
    port: 80
    backends: [{address: 10.0.2.11, port: 8080}]
`}, []string{"services[0].backends[0].port: 8080 differs from the service port 80: dr forwarding cannot translate ports (use nat)"}},
		{"port and fwmark", map[string]string{"services": `  - name: web
    vip: 198.51.100.10
    port: 80
    fwmark: 3
    backends: [{address: 10.0.2.11}]
`}, []string{"services[0].port: 80: a fwmark service has no port (fwmark 3 selects the packets)"}},
		{"unknown scheduler and forwarding", map[string]string{"services": `  - name: web
    vip: 198.51.100.10
    port: 80
    scheduler: fast
    forwarding: magic
    backends: [{address: 10.0.2.11}]
`}, []string{`services[0].scheduler: "fast" is not a scheduler (rr wrr lc wlc lblc lblcr dh sh sed nq fo ovf mh)`,
			`services[0].forwarding: "magic" is not a forwarding method (dr, nat, tun)`}},
		{"field of another check type", map[string]string{"services": `  - name: web
    vip: 198.51.100.10
    port: 80
    backends: [{address: 10.0.2.11}]
    health: {type: tcp, path: /healthz}
`}, []string{"services[0].health.path: only used by http/https checks, not tcp"}},
		{"bad http check", map[string]string{"services": `  - name: web
    vip: 198.51.100.10
    port: 80
    backends: [{address: 10.0.2.11}]
    health: {type: http, path: healthz, status: ["200-99"], body: "(", timeout: 5s, interval: 1s}
`}, []string{`services[0].health.path: "healthz" must start with /`,
			`services[0].health.status[0]: "200-99" is not a status code or range (200, 200-299; 100..599)`,
			"services[0].health.timeout: 5s is longer than the interval 1s"}},
		{"exec needs command", map[string]string{"services": `  - name: web
    vip: 198.51.100.10
    port: 80
    backends: [{address: 10.0.2.11}]
    health: {type: exec}
`}, []string{"services[0].health.command: required: the program and its arguments, as a list"}},
		{"through_vip on nat", map[string]string{"services": `  - name: web
    vip: 198.51.100.10
    port: 80
    forwarding: nat
    backends: [{address: 10.0.2.11}]
    health: {type: tcp, through_vip: true}
`}, []string{"services[0].health.through_vip: only for dr and tun services, where the real server holds the VIP"}},
		{"tunnel without tun", map[string]string{"services": `  - name: web
    vip: 198.51.100.10
    port: 80
    tunnel: {type: gue, port: 6080}
    backends: [{address: 10.0.2.11}]
`}, []string{"services[0].tunnel: only used with forwarding tun"}},
		{"gue not supported", map[string]string{"services": `  - name: web
    vip: 198.51.100.10
    port: 80
    forwarding: tun
    tunnel: {type: gue, port: 6080, checksum: remcsum}
    backends: [{address: 10.0.2.11}]
`}, []string{`services[0].tunnel.type: "gue" is not supported: only ipip (IPVS's gue and gre need netlink attributes anycastd cannot send yet)`,
			"services[0].tunnel.port: only used by gue tunnels, which are not supported"}},
		{"tun does not mix families", map[string]string{"services": `  - name: web
    vip: "2001:db8::10"
    port: 80
    forwarding: tun
    backends: [{address: 10.0.2.11}]
`}, []string{"services[0].backends[0].address: 10.0.2.11 is not of the VIP's address family (2001:db8::10)"}},
		{"persistence netmask", map[string]string{"services": `  - name: web
    vip: 198.51.100.10
    port: 80
    persistence: {timeout: 300s, netmask: 33}
    backends: [{address: 10.0.2.11}]
`}, []string{"services[0].persistence.netmask: 33 is not a prefix length for 198.51.100.10 (1..32)"}},
		{"bgp neighbour without asn", map[string]string{"routing": `  mode: bgp
  bgp:
    asn: 65001
    neighbors: [{address: 10.0.1.254}]
`}, []string{"routing.bgp.neighbors[0].asn: required: the neighbour's AS number (1..4294967295)"}},
		{"bgp without neighbours or asn", map[string]string{"routing": "  mode: bgp\n"},
			[]string{"routing.bgp.asn: required (1..4294967295)", "routing.bgp.neighbors: at least one neighbour is required in mode bgp"}},
		{"bgp bad timers and community", map[string]string{"routing": `  mode: bgp
  bgp:
    asn: 65001
    communities: ["65536:1"]
    neighbors: [{address: 10.0.1.254, asn: 65000, hold_time: 2s, bfd: {enabled: true, multiplier: 300}}]
`}, []string{`routing.bgp.communities[0]: "65536:1" is not a community (ASN:value, each 0..65535)`,
			"routing.bgp.neighbors[0].hold_time: 2s is out of range (whole seconds, 3s..65535s)",
			"routing.bgp.neighbors[0].bfd.multiplier: 300 is out of range (1..255)"}},
		{"vrrp priority range", map[string]string{"routing": `  mode: vrrp
  vrrp:
    interface: eth1
    instances: [{vrid: 1, vips: [192.0.2.1], priority: 300}, {vrid: 1, vips: [192.0.2.2], priority: 0}]
`}, []string{"routing.vrrp.instances[0].priority: 300 is out of range (1..254; 255 for the address owner)",
			"routing.vrrp.instances[1].priority: 0 is out of range (1..254; 255 for the address owner)",
			"routing.vrrp.instances[1].vrid: 1 is also instances[0] for the same address family"}},
		{"vrrp advert interval", map[string]string{"routing": `  mode: vrrp
  vrrp: {interface: eth1, advert_interval: 15ms, instances: [{vrid: 9, vips: [192.0.2.1]}]}
`}, []string{"routing.vrrp.advert_interval: 15ms is out of range (10ms..40.95s in steps of 10ms)"}},
		{"vrrp version 2 and authentication", map[string]string{"routing": `  mode: vrrp
  vrrp:
    interface: eth1
    advert_interval: 500ms
    instances:
      - {vrid: 9, vips: ["2001:db8::9"], version: 2}
      - {vrid: 10, vips: [192.0.2.10], version: 2, authentication: {type: ah, password: "a very long one"}}
      - {vrid: 11, vips: [192.0.2.11], authentication: {type: pass, password: "1111"}}
      - {vrid: 12, vips: [192.0.2.12], version: 4}
`}, []string{"routing.vrrp.instances[0].vips[0]: 2001:db8::9 is IPv6; VRRPv2 (version: 2) carries IPv4 only",
			"routing.vrrp.advert_interval: 500ms: instances[0] is VRRPv2, which carries whole seconds (1s..255s)",
			"routing.vrrp.advert_interval: 500ms: instances[1] is VRRPv2, which carries whole seconds (1s..255s)",
			`routing.vrrp.instances[1].authentication.type: "ah" is not supported (pass: simple text, as keepalived's auth_type PASS)`,
			"routing.vrrp.instances[1].authentication.password: 15 bytes (1..8: VRRPv2 sends 8)",
			"routing.vrrp.instances[2].authentication: VRRPv3 has no authentication (RFC 5798); only version: 2 has (keepalived's auth_type PASS)",
			"routing.vrrp.instances[3].version: 4 is not a VRRP version (2 or 3)"}},
		{"kernel needs one target", map[string]string{"routing": "  mode: kernel\n  kernel: {table: 100, interface: lo}\n"},
			[]string{"routing.kernel: set table or interface, not both"}},
		{"dns outside zone", map[string]string{"routing": `  mode: dns
  dns:
    zone: lb.example.com
    ns: [ns1.lb.example.com.]
    names: [{name: www.example.org., vips: [192.0.2.1]}]
`}, []string{`routing.dns.names[0].name: "www.example.org." is outside the zone lb.example.com.`}},
		{"unknown mode", map[string]string{"routing": "  mode: ospf\n"},
			[]string{`routing.mode: "ospf" is not a routing mode (bgp, kernel, vrrp, dns)`}},
		{"keys required", map[string]string{"cluster": "  max_active: 0\n"},
			[]string{"cluster.keys: required: gossip is encrypted; set cluster.insecure: true to run without a key",
				"cluster.max_active: 0 is out of range (1..256)"}},
		{"bad key", map[string]string{"cluster": "  keys: [\"c2hvcnQ=\", \"!!\"]\n"},
			[]string{"cluster.keys[0]: decodes to 5 bytes; an AES key is 16, 24 or 32 bytes",
				"cluster.keys[1]: not valid base64 (the key itself is not shown)"}},
		{"api tcp needs tls", map[string]string{"api": "  tcp: {listen: \"10.0.0.1:7947\"}\n"},
			[]string{"api.tcp: cert and key are required: the TCP listener serves TLS only",
				"api.tcp: client_ca or token_file is required: remote clients must authenticate"}},
		{"node name", map[string]string{"node": "  name: \"bad name\"\n  state_dir: relative\n"},
			[]string{`node.name: "bad name" is not a valid name (letters, digits, '.', '_', '-'; at most 63)`,
				`node.state_dir: "relative" is not an absolute path`}},
		{"not yaml", map[string]string{"node": "  name: [unclosed\n"}, []string{"not a valid YAML document"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(doc(tc.over))
			if err == nil {
				t.Fatalf("Parse accepted an invalid document:\n%s", doc(tc.over))
			}
			if c != nil {
				t.Errorf("Parse returned a config with its error")
			}
			var lines []string
			for _, fe := range FieldErrors(err) {
				lines = append(lines, fe.Error())
			}
			for _, w := range tc.want {
				found := false
				for _, l := range lines {
					if l == w || (strings.HasPrefix(w, "not a valid YAML") && strings.HasPrefix(l, w)) {
						found = true
					}
				}
				if !found {
					t.Errorf("missing error %q; got:\n  %s", w, strings.Join(lines, "\n  "))
				}
			}
		})
	}
}

func TestAllErrorsAtOnceInOrder(t *testing.T) {
	data, err := os.ReadFile("testdata/many-mistakes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Parse(data)
	errs := FieldErrors(err)
	if len(errs) < 8 {
		t.Fatalf("want every mistake reported, got %d:\n%v", len(errs), err)
	}
	for i := 1; i < len(errs); i++ {
		if pathLess(errs[i].Path, errs[i-1].Path) {
			t.Errorf("errors not in document order: %q before %q", errs[i-1].Path, errs[i].Path)
		}
	}
	want := []string{"cluster.keys", "cluster.max_active", "routing.bgp.neighbors[0].asn",
		"services[0].backends[0].port", "services[0].schedular", "services[0].vip",
		"services[1].backends[0].address", "services[1].flags[0]", "services[1].health.path",
		"services[1].name", "services[1].quorum"}
	var got []string
	for _, e := range errs {
		got = append(got, e.Path)
	}
	if !slices.Equal(got, want) {
		t.Errorf("paths:\n got %q\nwant %q", got, want)
	}
	// A value that could not be decoded is reported once, not again as
	// "required" by validation.
	for _, e := range errs {
		if e.Path == "services[0].vip" && strings.Contains(e.Msg, "required") {
			t.Errorf("undecodable VIP reported twice: %v", e)
		}
	}
}

func TestPathOrder(t *testing.T) {
	ps := []string{"services[10].port", "services[2].backends[0].port", "node.name", "services[2].backends", "cluster", "services[2]"}
	slices.SortFunc(ps, func(a, b string) int {
		if pathLess(a, b) {
			return -1
		}
		if pathLess(b, a) {
			return 1
		}
		return 0
	})
	want := []string{"cluster", "node.name", "services[2]", "services[2].backends", "services[2].backends[0].port", "services[10].port"}
	if !slices.Equal(ps, want) {
		t.Errorf("order %v, want %v", ps, want)
	}
}

func TestPrecedenceFileEnvFlags(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(path, doc(map[string]string{"services": webService}), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"ANYCASTD_NODE_NAME":          "from-env",
		"ANYCASTD_CLUSTER_PORT":       "8000",
		"ANYCASTD_CLUSTER_SEEDS":      "10.0.0.2, 10.0.0.3:7000",
		"ANYCASTD_CLUSTER_MAX_ACTIVE": "4",
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.String("name", "", "")
	fs.Int("gossip-port", 0, "")
	if err := fs.Parse([]string{"--gossip-port=9000"}); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path, WithEnv(lookup), WithFlags(fs, map[string]string{"name": "node.name", "gossip-port": "cluster.port"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Node.Name != "from-env" {
		t.Errorf("env did not override the file (flag unset): name %q", c.Node.Name)
	}
	if c.Cluster.Port != 9000 {
		t.Errorf("flag did not override env: port %d", c.Cluster.Port)
	}
	if !slices.Equal(c.Cluster.Seeds, []string{"10.0.0.2", "10.0.0.3:7000"}) || c.Cluster.MaxActive != 4 {
		t.Errorf("env lists/ints: seeds %q max_active %d", c.Cluster.Seeds, c.Cluster.MaxActive)
	}
	if len(c.Services) != 1 {
		t.Errorf("services from the file lost: %d", len(c.Services))
	}

	env["ANYCASTD_CLUSTER_MAX_ACTIVE"] = "many"
	if _, err := Load(path, WithEnv(lookup)); err == nil || !strings.Contains(err.Error(), "cluster.max_active") {
		t.Errorf("a bad env value must be an error naming the key, got %v", err)
	}
	if _, err := Load(path, WithFlags(fs, map[string]string{"name": "node.nmae"})); err == nil {
		t.Errorf("a flag bound to an unknown key must be an error")
	}
}

func TestEnvName(t *testing.T) {
	if got := EnvName("routing.bgp.asn"); got != "ANYCASTD_ROUTING_BGP_ASN" {
		t.Errorf("EnvName = %s", got)
	}
	keys := leafKeys()
	for _, k := range []string{"node.name", "routing.bgp.asn", "routing.kernel.table", "health.self.uplink", "cluster.keys"} {
		if _, ok := keys[k]; !ok {
			t.Errorf("%s not settable from env/flags", k)
		}
	}
	for _, k := range []string{"services", "routing.bgp.neighbors"} {
		if _, ok := keys[k]; ok {
			t.Errorf("%s is a list of mappings and must come from the file only", k)
		}
	}
}

func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("examples/*.yaml")
	more, _ := filepath.Glob("testdata/*.yaml")
	bad, _ := filepath.Glob("testdata/bad/*.yaml")
	more = append(more, bad...)
	for _, p := range append(files, more...) {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("services: [{name: a, vip: 1.2.3.4, port: 1, backends: [{address: 1.2.3.5}]}]"))
	f.Add([]byte("- 1\n- 2"))
	f.Add([]byte("routing: {mode: bgp, bgp: {neighbors: [{}]}}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if (c == nil) == (err == nil) {
			t.Fatalf("Parse must return a config or an error: %v %v", c, err)
		}
		if err != nil {
			for _, fe := range FieldErrors(err) {
				if fe.Error() == "" {
					t.Fatalf("empty error message")
				}
			}
			return
		}
		if err := Validate(c); err != nil {
			t.Fatalf("Parse accepted a document Validate rejects: %v", err)
		}
	})
}

// A backend that overrides its service's forwarding with tun gets the
// service's tunnel defaulted like a tun service would.
func TestTunBackendOverrideDefaultsTunnel(t *testing.T) {
	cfg, err := Parse([]byte(`node: {name: d1}
cluster: {insecure: true}
routing: {mode: kernel, kernel: {table: 100}}
services:
  - name: mixed
    vip: 192.0.2.1
    port: 80
    backends: [{address: 10.0.0.1}, {address: 10.0.0.2, forwarding: tun}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if tn := cfg.Services[0].Tunnel; tn.Type != "ipip" || tn.Checksum != "none" {
		t.Errorf("tunnel %+v, want ipip defaults", tn)
	}
}

func TestParseServices(t *testing.T) {
	ss, err := ParseServices([]byte(`health: {interval: 3s}
services:
  - name: web
    vip: 192.0.2.1
    port: 80
    backends: [{address: 10.0.0.1}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(ss) != 1 || ss[0].Health.Interval != 3*time.Second || ss[0].Scheduler == "" || ss[0].Backends[0].Weight != 1 {
		t.Errorf("services %+v: defaults not filled", ss)
	}
	_, err = ParseServices([]byte(`services:
  - name: web
    vip: 192.0.2.1
    port: 99999
    backends: [{address: 10.0.0.1}]
  - nmae: typo
`))
	if err == nil || !strings.Contains(err.Error(), "services[0].port") || !strings.Contains(err.Error(), "nmae") {
		t.Errorf("errors not reported with their paths: %v", err)
	}
}

func TestAddressesCanonicalAtLoad(t *testing.T) {
	c, err := Parse(doc(map[string]string{"services": `  - name: web
    vip: '::ffff:198.51.100.10'
    port: 80
    backends: [{address: '::ffff:10.0.2.11'}]
`, "node": "  name: t1\n  addresses: ['::ffff:10.0.1.1']\n"}))
	if err != nil {
		t.Fatal(err)
	}
	s := c.Services[0]
	if s.VIP.String() != "198.51.100.10" || s.Backends[0].Address.String() != "10.0.2.11" || c.Node.Addresses[0].String() != "10.0.1.1" {
		t.Errorf("addresses not canonical: vip %s backend %s node %s", s.VIP, s.Backends[0].Address, c.Node.Addresses[0])
	}
}

func TestValidateServicesComparesUnmapped(t *testing.T) {
	// A Config built in code (not through Load) with two spellings.
	mk := func(vip string) Service {
		c, err := Parse(doc(map[string]string{"services": webService}))
		if err != nil {
			t.Fatal(err)
		}
		s := c.Services[0]
		s.VIP = netipMust(vip)
		return s
	}
	a, b := mk("198.51.100.10"), mk("::ffff:198.51.100.10")
	b.Name = "web6"
	if err := ValidateServices([]Service{a, b}); err == nil || !strings.Contains(err.Error(), "is also services[0]") {
		t.Errorf("want the repeated service refused, got %v", err)
	}
}

func netipMust(s string) netip.Addr { return netip.MustParseAddr(s) }

// FuzzLoad is the whole loader as the daemon runs it: a file, the
// environment, the flags (none set), defaults, validation. Whatever the
// file holds, Load returns a config or errors with messages; a config it
// returns validates, has its addresses in canonical form, and its services
// make a document that validates as a director receiving it would.
func FuzzLoad(f *testing.F) {
	for _, g := range []string{"examples/*.yaml", "testdata/*.yaml", "testdata/bad/*.yaml"} {
		files, _ := filepath.Glob(g)
		for _, p := range files {
			if b, err := os.ReadFile(p); err == nil {
				f.Add(b)
			}
		}
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "anycastd.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
		fs.String("node-name", "", "")
		c, err := Load(path, WithEnv(func(string) (string, bool) { return "", false }), WithFlags(fs, map[string]string{"node-name": "node.name"}))
		if (c == nil) == (err == nil) {
			t.Fatalf("Load must return a config or an error: %v %v", c, err)
		}
		if err != nil {
			for _, fe := range FieldErrors(err) {
				if strings.TrimSpace(fe.Msg) == "" {
					t.Fatalf("an error without a message: %q", fe.Error())
				}
			}
			return
		}
		if err := Validate(c); err != nil {
			t.Fatalf("Load accepted a config Validate rejects: %v", err)
		}
		for _, s := range c.Services {
			if s.VIP.Is4In6() {
				t.Fatalf("VIP %s not canonical", s.VIP)
			}
			for _, b := range s.Backends {
				if b.Address.Is4In6() {
					t.Fatalf("backend %s not canonical", b.Address)
				}
			}
		}
		raw, err := json.Marshal(c.Services)
		if err != nil {
			t.Fatal(err)
		}
		var back []Service
		if err := json.Unmarshal(raw, &back); err != nil {
			t.Fatalf("the services do not decode as a director decodes a document: %v", err)
		}
		if err := ValidateServices(back); err != nil {
			t.Fatalf("the services do not validate as a director validates a document: %v", err)
		}
	})
}
