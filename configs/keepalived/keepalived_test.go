package keepalived

import (
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/configs"
)

func TestParse(t *testing.T) {
	nodes, err := Parse("a 1 2 { b 3\n c { d }\n}\n e\n \"f g\" h # comment\n!all comment\ni {\n j\n}\n")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, n := range nodes {
		keys = append(keys, n.Key)
	}
	if !slices.Equal(keys, []string{"a", "e", "f g", "i"}) || nodes[0].Line != 1 || nodes[3].Line != 7 {
		t.Fatalf("statements %v", keys)
	}
	a := nodes[0]
	if !slices.Equal(a.Args, []string{"1", "2"}) || len(a.Children) != 2 || a.Children[1].Key != "c" || a.Children[1].Children[0].Key != "d" {
		t.Errorf("block %+v", a)
	}
	if nodes[2].Args[0] != "h" || len(nodes[3].Children) != 1 {
		t.Errorf("quotes or a brace on its own line: %+v %+v", nodes[2], nodes[3])
	}
	for _, bad := range []string{"a {\n b\n", "}\n", "a \"b\n"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestImportLVSDR(t *testing.T) {
	text, err := os.ReadFile("testdata/lvs-dr.conf")
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := Parse(string(text))
	if err != nil {
		t.Fatal(err)
	}
	res := Translate(nodes)
	out, err := Render(res, "testdata/lvs-dr.conf")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := configs.Parse([]byte("node: {name: lvs1}\n" + out))
	if err != nil {
		t.Fatalf("the imported config does not validate: %v\n%s", err, out)
	}
	byName := map[string]configs.Service{}
	for _, s := range cfg.Services {
		byName[s.Name] = s
	}
	web := byName["192.168.200.16-80"]
	if web.Scheduler != "wrr" || web.Forwarding != "dr" || web.Persistence.Timeout != 50*time.Second || web.Persistence.Netmask != 24 ||
		web.Quorum != 2 || len(web.Backends) != 3 || web.Backends[0].Weight != 3 || web.Backends[2].Weight != 0 ||
		web.Health.Type != "http" || web.Health.Path != "/healthz" || !slices.Equal(web.Health.Status, []string{"200"}) ||
		web.Health.Interval != 6*time.Second || web.Health.Timeout != 3*time.Second || web.Health.Fall != 3 {
		t.Errorf("web service: %+v", web)
	}
	tls := byName["192.168.200.17-443"]
	if tls.Health.Type != "https" || !tls.Health.Insecure || tls.Scheduler != "sh" || tls.Backends[0].Weight != 1 {
		t.Errorf("https service: %+v", tls)
	}
	dns := byName["DNS"]
	if dns.Protocol != "udp" || dns.Port != 53 || dns.Health.Type != "exec" ||
		!slices.Equal(dns.Health.Command, []string{"/usr/local/bin/check-dns", "192.168.201.110"}) {
		t.Errorf("dns service (from a group): %+v", dns)
	}
	db := byName["192.168.200.18-3306"]
	if db.Forwarding != "nat" || db.Health.Type != "tcp" || db.Health.Port != 3306 || db.Scheduler != "lc" {
		t.Errorf("nat service: %+v", db)
	}
	v := cfg.Routing.VRRP
	if cfg.Routing.Mode != "vrrp" || v.Interface != "eth0" || v.AdvertInterval != time.Second || len(v.Instances) != 2 ||
		v.Instances[0].VRID != 51 || v.Instances[0].Priority != 150 || !v.Instances[0].Preempt || len(v.Instances[0].VIPs) != 2 ||
		v.Instances[1].Preempt {
		t.Errorf("vrrp: %+v", v)
	}
	// No vrrp_version: keepalived's default VRRPv2, and its PASS password
	// carried, so the imported director and the unchanged keepalived box
	// hear each other.
	if in := v.Instances[0]; in.Version != 2 || in.Authentication == nil || *in.Authentication != (configs.VRRPAuth{Type: "pass", Password: "s3cret"}) {
		t.Errorf("VI_WEB: version %d, authentication %+v", in.Version, in.Authentication)
	}
	if in := v.Instances[1]; in.Version != 2 || in.Authentication != nil {
		t.Errorf("VI_DNS: version %d, authentication %+v", in.Version, in.Authentication)
	}
	// Everything not translated is listed with its line.
	want := []string{
		"line 12: vrrp_skip_check_adv_addr",
		"line 15: vrrp_script chk_haproxy",
		"line 31: 192.168.200.16/32 dev eth0 label eth0:1",
		"line 34: track_script",
		"line 59: sorry_server",
		"line 68: url",
		"line 74: delay_before_retry",
		"line 141: real_server 192.168.201.111 53: its health check differs from the one of line 135",
	}
	var got []string
	for _, s := range res.Skipped {
		got = append(got, s.String())
	}
	for _, w := range want {
		if !slices.ContainsFunc(got, func(g string) bool { return strings.HasPrefix(g, w) }) {
			t.Errorf("not reported: %q\ngot:\n%s", w, strings.Join(got, "\n"))
		}
	}
	if !strings.Contains(out, "# Not translated") || !strings.Contains(out, "interval: 6s") {
		t.Errorf("rendering:\n%s", out)
	}
}

func importFile(t *testing.T, path string) (*configs.Config, Result, string, error) {
	t.Helper()
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := Parse(string(text))
	if err != nil {
		t.Fatal(err)
	}
	res := Translate(nodes)
	out, err := Render(res, path)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := configs.Parse([]byte("node: {name: lb-a}\n" + out))
	return cfg, res, out, err
}

func TestImportUnicastIPv6(t *testing.T) {
	cfg, res, out, err := importFile(t, "testdata/unicast-v6.conf")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	v := cfg.Routing.VRRP
	if v.Interface != "ens5" || !slices.Equal(v.UnicastPeers, []netip.Addr{netip.MustParseAddr("10.20.0.12")}) ||
		v.Instances[0].PreemptDelay != 30*time.Second || v.Instances[1].VIPs[0] != netip.MustParseAddr("2001:db8:20::100") {
		t.Errorf("vrrp %+v", v)
	}
	s := cfg.Services[0]
	if s.Scheduler != "mh" || s.Health.Type != "https" || s.Health.Host != "api.example.com" || s.Health.Fall != 2 ||
		!slices.Equal(s.Health.Status, []string{"204"}) || s.Backends[0].Weight != 10 {
		t.Errorf("https service %+v", s)
	}
	if s6 := cfg.Services[1]; s6.VIP != netip.MustParseAddr("2001:db8:20::100") || s6.Health.Type != "tcp" {
		t.Errorf("IPv6 service %+v", s6)
	}
	if !slices.ContainsFunc(res.Skipped, func(s Skipped) bool { return s.Line == 16 && strings.HasPrefix(s.What, "unicast_src_ip") }) {
		t.Errorf("unicast_src_ip not reported: %v", res.Skipped)
	}
	// IPv6 is VRRPv3 whatever keepalived's default.
	if in := v.Instances[1]; in.Version != 3 {
		t.Errorf("IPv6 instance: version %d, want 3", in.Version)
	}
}

// TestImportVRRPVersions: global_defs' vrrp_version, an instance's own
// version, and what each does with authentication.
func TestImportVRRPVersions(t *testing.T) {
	nodes, err := Parse(`global_defs {
    vrrp_version 3
}
vrrp_instance A {
    interface eth0
    virtual_router_id 1
    authentication {
        auth_type PASS
        auth_pass 1111
    }
    virtual_ipaddress {
        192.0.2.1
    }
}
vrrp_instance B {
    interface eth0
    virtual_router_id 2
    version 2
    authentication {
        auth_type AH
        auth_pass 1111
    }
    virtual_ipaddress {
        192.0.2.2
    }
}
vrrp_instance C {
    interface eth0
    virtual_router_id 3
    version 2
    authentication {
        auth_type PASS
        auth_pass 123456789
    }
    virtual_ipaddress {
        192.0.2.3
    }
}
`)
	if err != nil {
		t.Fatal(err)
	}
	res := Translate(nodes)
	ins := res.VRRP.Instances
	if ins[0].Version != 3 || ins[0].Authentication != nil || ins[1].Version != 2 || ins[1].Authentication != nil ||
		ins[2].Version != 2 || ins[2].Authentication == nil || ins[2].Authentication.Password != "12345678" {
		t.Errorf("instances %+v %+v %+v", ins[0], ins[1], ins[2])
	}
	var got []string
	for _, s := range res.Skipped {
		got = append(got, s.String())
	}
	want := []string{
		"line 7: authentication: VRRPv3 has no authentication (RFC 5798); keepalived ignores it in v3 too",
		"line 19: authentication: auth_type AH is not supported (PASS is; RFC 3768 removed AH)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("reported:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// keepalived's fwmark services have no VIP; anycastd announces one per
// service: the import says so and does not make one up.
func TestImportFWMarkNeedsAVIP(t *testing.T) {
	nodes, _ := Parse("virtual_server fwmark 7 {\n lb_algo rr\n lb_kind DR\n real_server 10.0.0.1 0 {\n weight 1\n }\n}\n")
	res := Translate(nodes)
	out, _ := Render(res, "x.conf")
	if _, err := configs.Parse([]byte("node: {name: a}\n" + out)); err == nil || !strings.Contains(err.Error(), "vip") {
		t.Errorf("a service without a VIP validated: %v", err)
	}
	if !slices.ContainsFunc(res.Skipped, func(s Skipped) bool { return s.Line == 1 && strings.Contains(s.Why, "set the service's vip by hand") }) {
		t.Errorf("not reported: %v", res.Skipped)
	}
}

// A config split over files: includes with a brace expression, a
// wildcard, a relative include inside a block (relative to the including
// file), and one that matches nothing; use_vmac on every instance.
func TestImportIncludes(t *testing.T) {
	nodes, skipped, err := ParseFile("testdata/split/keepalived.conf")
	if err != nil {
		t.Fatal(err)
	}
	res := Translate(nodes)
	res.Skipped = append(skipped, res.Skipped...)
	out, err := Render(res, "testdata/split/keepalived.conf")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := configs.Parse([]byte("node: {name: lb1}\n" + out))
	if err != nil {
		t.Fatalf("the imported config does not validate: %v\n%s", err, out)
	}
	if len(cfg.Services) != 2 {
		t.Fatalf("services %+v", cfg.Services)
	}
	web, dns := cfg.Services[0], cfg.Services[1]
	if web.VIP.String() != "198.51.100.80" || len(web.Backends) != 2 || web.Health.Type != configs.CheckHTTP ||
		web.Health.Path != "/healthz" || web.Health.Timeout != 2*time.Second {
		t.Errorf("web (checks from the included file): %+v", web)
	}
	if dns.VIP.String() != "198.51.100.53" || dns.Health.Type != configs.CheckExec {
		t.Errorf("dns: %+v", dns)
	}
	if cfg.Routing.Mode != configs.ModeVRRP || len(cfg.Routing.VRRP.Instances) != 2 || !cfg.Routing.VRRP.VirtualMAC {
		t.Errorf("vrrp (both instances use_vmac): %+v", cfg.Routing.VRRP)
	}
	var lines []string
	for _, s := range res.Skipped {
		lines = append(lines, s.String())
	}
	want := []string{
		"line 9: include /nonexistent/anycastd-test/*.conf: matches no file",
		"testdata/split/vrrp-dns.conf:line 6: use_vmac vrrp.dns: translated as virtual_mac: true, but anycastd names the interface vrrp.VRID, not vrrp.dns",
		"testdata/split/conf.d/20-dns.conf:line 6: hysteresis 1:",
		// Once, though the shared check is included twice.
		"testdata/split/checks/http.conf:line 8: delay_before_retry 1:",
	}
	for _, w := range want {
		found := false
		for _, l := range lines {
			found = found || strings.HasPrefix(l, w)
		}
		if !found {
			t.Errorf("not reported: %q\nreported:\n%s", w, strings.Join(lines, "\n"))
		}
	}
	if len(lines) != len(want) {
		t.Errorf("reported %d, want %d:\n%s", len(lines), len(want), strings.Join(lines, "\n"))
	}
	if !strings.Contains(out, "#   testdata/split/conf.d/20-dns.conf:line 6: hysteresis 1:") {
		t.Errorf("the output's comments should name the included file:\n%s", out)
	}
}

func TestImportIncludeErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := dir + "/" + name
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct{ name, main, want string }{
		{"cycle", "include b.conf\n", "include cycle"},
		{"two names", "include x.conf y.conf\n", "line 1: include x.conf y.conf: an include takes one file name"},
		{"no name", "include\n", "an include takes one file name"},
		{"bad file", "include bad.conf\n", "bad.conf: line 2: unterminated quote"},
		{"unbalanced", "virtual_server 192.0.2.1 80 {\ninclude close.conf\n", "close.conf:line 2: unexpected }"},
	}
	write("b.conf", "include c.conf\n")
	write("c.conf", "include b.conf\n")
	write("bad.conf", "global_defs {\n router_id \"lb1\n}\n")
	write("close.conf", "}\n}\n")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ParseFile(write("main.conf", tc.main))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	// Mixed use_vmac is reported, not translated.
	nodes, _, err := ParseFile(write("mixed.conf", "vrrp_instance A {\n interface eth0\n virtual_router_id 1\n use_vmac\n virtual_ipaddress {\n 192.0.2.1\n }\n}\n"+
		"vrrp_instance B {\n interface eth0\n virtual_router_id 2\n virtual_ipaddress {\n 192.0.2.2\n }\n}\n"))
	if err != nil {
		t.Fatal(err)
	}
	res := Translate(nodes)
	if res.VRRP.VirtualMAC || len(res.Skipped) != 1 || !strings.Contains(res.Skipped[0].String(), "line 4: use_vmac: anycastd's virtual_mac is one setting for every instance and 1 of 2") {
		t.Errorf("mixed use_vmac: %v %v", res.VRRP.VirtualMAC, res.Skipped)
	}
}

func TestExpandBraces(t *testing.T) {
	cases := map[string][]string{
		"a.conf":          {"a.conf"},
		"x{a,b}y":         {"xay", "xby"},
		"x{a,b{c,d}}y":    {"xay", "xbcy", "xbdy"},
		"{a,b}/{c,d}":     {"a/c", "a/d", "b/c", "b/d"},
		"x{a,b":           {"x{a,b"},
		"conf.d/{,old/}*": {"conf.d/*", "conf.d/old/*"},
	}
	for in, want := range cases {
		if got := expandBraces(in); !slices.Equal(got, want) {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

// A number that does not parse is reported, never turned into 0 (weight
// 0 would take the real server out of service without a word).
func TestImportBadNumbers(t *testing.T) {
	nodes, err := Parse(`virtual_server 192.0.2.1 80 {
    lb_kind DR
    real_server 10.0.0.1 80 {
        weight ten
        TCP_CHECK {
            connect_port 99999
            retry -1
        }
    }
}
vrrp_instance V {
    interface eth0
    virtual_router_id 300
    priority high
    virtual_ipaddress {
        192.0.2.1
    }
}
`)
	if err != nil {
		t.Fatal(err)
	}
	res := Translate(nodes)
	var got []string
	for _, s := range res.Skipped {
		got = append(got, s.String())
	}
	want := []string{
		`line 4: weight ten: "ten" is not a number (0 to 2147483647)`,
		`line 6: connect_port 99999: "99999" is not a number (0 to 65535)`,
		`line 7: retry -1: "-1" is not a number (0 to 2147483647)`,
		`line 13: virtual_router_id 300: "300" is not a number (0 to 255)`,
		`line 14: priority high: "high" is not a number (0 to 255)`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("reported:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if w := res.Services[0].Backends[0].Weight; w != 1 {
		t.Errorf("weight %d, want keepalived's default 1 kept", w)
	}
}
