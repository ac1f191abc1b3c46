package dns

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/configs"
	mdns "github.com/miekg/dns"
)

func start(t *testing.T, names []configs.DNSName) (*Server, string) {
	t.Helper()
	return startCfg(t, configs.DNS{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, Zone: "lb.example.com",
		NS: []string{"ns1.lb.example.com.", "ns2.lb.example.com."}, Hostmaster: "hostmaster.example.com.", TTL: 5 * time.Second, Names: names})
}

func startCfg(t *testing.T, cfg configs.DNS) (*Server, string) {
	t.Helper()
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	addrs := s.Addrs()
	if len(addrs) == 0 {
		t.Fatal("the server did not start (its error is Run's)")
	}
	return s, addrs[0].String()
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func query(t *testing.T, server, name string, qtype uint16, tcp bool, edns uint16) *mdns.Msg {
	t.Helper()
	c := &mdns.Client{Timeout: 2 * time.Second}
	if tcp {
		c.Net = "tcp"
	}
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	if edns > 0 {
		m.SetEdns0(edns, false)
	}
	r, _, err := c.Exchange(m, server)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func answers(r *mdns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		switch x := rr.(type) {
		case *mdns.A:
			out = append(out, x.A.String())
		case *mdns.AAAA:
			out = append(out, x.AAAA.String())
		case *mdns.NS:
			out = append(out, x.Ns)
		case *mdns.SOA:
			out = append(out, "SOA "+x.Ns)
		}
	}
	return out
}

func TestAnswers(t *testing.T) {
	s, srv := start(t, []configs.DNSName{
		{Name: "www", VIPs: addrs("192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::1")},
		{Name: "api.lb.example.com.", VIPs: addrs("192.0.2.9")},
	})
	s.SetLive(addrs("192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::1", "192.0.2.9"))
	cases := []struct {
		name  string
		qname string
		qtype uint16
		rcode int
		want  []string // sorted
		auth  bool     // SOA in authority
	}{
		{"A of a name", "www.lb.example.com.", mdns.TypeA, mdns.RcodeSuccess, []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"}, false},
		{"case does not matter", "WWW.Lb.Example.COM.", mdns.TypeA, mdns.RcodeSuccess, []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"}, false},
		{"AAAA", "www.lb.example.com.", mdns.TypeAAAA, mdns.RcodeSuccess, []string{"2001:db8::1"}, false},
		{"fully qualified name in config", "api.lb.example.com.", mdns.TypeA, mdns.RcodeSuccess, []string{"192.0.2.9"}, false},
		{"NODATA: no AAAA for api", "api.lb.example.com.", mdns.TypeAAAA, mdns.RcodeSuccess, nil, true},
		{"NODATA: MX", "www.lb.example.com.", mdns.TypeMX, mdns.RcodeSuccess, nil, true},
		{"SOA at the apex", "lb.example.com.", mdns.TypeSOA, mdns.RcodeSuccess, []string{"SOA ns1.lb.example.com."}, false},
		{"NS at the apex", "lb.example.com.", mdns.TypeNS, mdns.RcodeSuccess, []string{"ns1.lb.example.com.", "ns2.lb.example.com."}, false},
		{"NXDOMAIN in the zone", "nope.lb.example.com.", mdns.TypeA, mdns.RcodeNameError, nil, true},
		{"REFUSED outside the zone", "www.example.org.", mdns.TypeA, mdns.RcodeRefused, nil, false},
		{"REFUSED for the parent", "example.com.", mdns.TypeA, mdns.RcodeRefused, nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, tcp := range []bool{false, true} {
				r := query(t, srv, c.qname, c.qtype, tcp, 0)
				got := answers(r)
				slices.Sort(got)
				if r.Rcode != c.rcode || !slices.Equal(got, c.want) {
					t.Errorf("tcp=%v: rcode %s answers %v, want %s %v", tcp, mdns.RcodeToString[r.Rcode], got, mdns.RcodeToString[c.rcode], c.want)
				}
				if c.rcode != mdns.RcodeRefused && !r.Authoritative {
					t.Errorf("not authoritative")
				}
				if hasSOA := len(r.Ns) == 1 && r.Ns[0].Header().Rrtype == mdns.TypeSOA; hasSOA != c.auth {
					t.Errorf("authority %v", r.Ns)
				}
				for _, rr := range r.Answer {
					if rr.Header().Ttl != 5 {
						t.Errorf("TTL %d", rr.Header().Ttl)
					}
				}
			}
		})
	}
}

func TestRotationAndLiveness(t *testing.T) {
	s, srv := start(t, []configs.DNSName{{Name: "www", VIPs: addrs("192.0.2.1", "192.0.2.2", "192.0.2.3")}})
	s.SetLive(addrs("192.0.2.1", "192.0.2.2", "192.0.2.3"))
	firsts := map[string]int{}
	for range 30 {
		a := answers(query(t, srv, "www.lb.example.com.", mdns.TypeA, false, 0))
		firsts[a[0]]++
	}
	if len(firsts) != 3 || firsts["192.0.2.1"] != 10 {
		t.Errorf("first answers over 30 queries: %v, want each VIP first 10 times", firsts)
	}
	// A director fails: its VIP leaves the answers.
	s.SetLive(addrs("192.0.2.1", "192.0.2.3"))
	for range 5 {
		a := answers(query(t, srv, "www.lb.example.com.", mdns.TypeA, false, 0))
		if slices.Contains(a, "192.0.2.2") || len(a) != 2 {
			t.Fatalf("answers %v after 192.0.2.2 failed", a)
		}
	}
	// None left: NODATA, not a stale address.
	s.SetLive(nil)
	r := query(t, srv, "www.lb.example.com.", mdns.TypeA, false, 0)
	if len(r.Answer) != 0 || r.Rcode != mdns.RcodeSuccess {
		t.Errorf("with no live VIP: %v", r)
	}
}

func TestTruncationAndEDNS(t *testing.T) {
	var many []netip.Addr
	for i := range 60 {
		many = append(many, netip.MustParseAddr(fmt.Sprintf("192.0.2.%d", i+1)))
	}
	s, srv := start(t, []configs.DNSName{{Name: "www", VIPs: many}})
	s.SetLive(many)
	// 60 A records do not fit in 512 bytes: over plain UDP the answer is
	// truncated (TC set), with EDNS0 4096 or over TCP it is whole.
	r := query(t, srv, "www.lb.example.com.", mdns.TypeA, false, 0)
	if !r.Truncated || len(r.Answer) >= 60 {
		t.Errorf("plain UDP: truncated %v with %d answers", r.Truncated, len(r.Answer))
	}
	r = query(t, srv, "www.lb.example.com.", mdns.TypeA, false, 4096)
	if r.Truncated || len(r.Answer) != 60 || r.IsEdns0() == nil {
		t.Errorf("EDNS0: truncated %v, %d answers, OPT %v", r.Truncated, len(r.Answer), r.IsEdns0())
	}
	r = query(t, srv, "www.lb.example.com.", mdns.TypeA, true, 0)
	if r.Truncated || len(r.Answer) != 60 {
		t.Errorf("TCP: truncated %v with %d answers", r.Truncated, len(r.Answer))
	}
}

// digAt runs dig against the server at srv ("host:port") and returns its
// output; dig failing fails the test.
func digAt(t *testing.T, dig, srv string) func(args ...string) string {
	host, port, _ := strings.Cut(srv, ":")
	return func(args ...string) string {
		t.Helper()
		out, err := exec.Command(dig, append([]string{"@" + host, "-p", port, "+time=2", "+tries=1"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("dig %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
}

// dig, the operator's tool, as the client.
func TestWithDig(t *testing.T) {
	dig, err := exec.LookPath("dig")
	if err != nil {
		t.Skip("dig is not installed (bind9-dnsutils; labs/install-deps.sh installs it)")
	}
	s, srv := start(t, []configs.DNSName{{Name: "www", VIPs: addrs("192.0.2.1", "192.0.2.2", "2001:db8::1")}})
	s.SetLive(addrs("192.0.2.1", "192.0.2.2", "2001:db8::1"))
	run := digAt(t, dig, srv)
	out := run("+short", "www.lb.example.com", "A")
	if got := strings.Fields(out); len(got) != 2 || !slices.Contains(got, "192.0.2.1") || !slices.Contains(got, "192.0.2.2") {
		t.Errorf("dig +short A: %q", out)
	}
	out = run("+short", "+tcp", "www.lb.example.com", "AAAA")
	if strings.TrimSpace(out) != "2001:db8::1" {
		t.Errorf("dig +tcp AAAA: %q", out)
	}
	out = run("nope.lb.example.com", "A")
	if !strings.Contains(out, "status: NXDOMAIN") || !strings.Contains(out, "flags: qr aa rd") || !strings.Contains(out, "SOA") {
		t.Errorf("dig NXDOMAIN:\n%s", out)
	}
	out = run("www.example.org", "A")
	if !strings.Contains(out, "status: REFUSED") {
		t.Errorf("dig outside the zone:\n%s", out)
	}
	out = run("+norec", "lb.example.com", "NS")
	if !strings.Contains(out, "ns1.lb.example.com.") || !strings.Contains(out, "ns2.lb.example.com.") || !strings.Contains(out, "EDNS: version: 0") {
		t.Errorf("dig NS:\n%s", out)
	}
}

// The zone's own name servers resolve from the zone (glue): dig of ns1
// gives its addresses, the NS answer carries them as additional records,
// a name server without glue (ns3, outside the zone) is not invented.
// Before, ns1.lb.example.com answered NXDOMAIN.
func TestGlueWithDig(t *testing.T) {
	dig, err := exec.LookPath("dig")
	if err != nil {
		t.Skip("dig is not installed (bind9-dnsutils; labs/install-deps.sh installs it)")
	}
	_, srv := startCfg(t, configs.DNS{Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}, Zone: "lb.example.com",
		NS: []string{"ns1.lb.example.com.", "ns2.lb.example.com.", "ns3.example.net."}, Hostmaster: "hostmaster.example.com.", TTL: 5 * time.Second,
		Names: []configs.DNSName{{Name: "www", VIPs: addrs("192.0.2.1")}},
		Glue: []configs.DNSGlue{{Name: "ns1", Addresses: addrs("198.51.100.53", "2001:db8::53")},
			{Name: "ns2.lb.example.com.", Addresses: addrs("198.51.100.54")}}})
	run := digAt(t, dig, srv)
	if out := run("+short", "ns1.lb.example.com", "A"); strings.TrimSpace(out) != "198.51.100.53" {
		t.Errorf("dig ns1 A: %q", out)
	}
	if out := run("+short", "ns1.lb.example.com", "AAAA"); strings.TrimSpace(out) != "2001:db8::53" {
		t.Errorf("dig ns1 AAAA: %q", out)
	}
	out := run("ns2.lb.example.com", "AAAA")
	if !strings.Contains(out, "status: NOERROR") || !strings.Contains(out, "ANSWER: 0") {
		t.Errorf("dig ns2 AAAA (no IPv6 glue: NODATA):\n%s", out)
	}
	out = run("+norec", "lb.example.com", "NS")
	for _, want := range []string{"ADDITIONAL SECTION", "ns1.lb.example.com.\t5\tIN\tA\t198.51.100.53", "ns1.lb.example.com.\t5\tIN\tAAAA\t2001:db8::53",
		"ns2.lb.example.com.\t5\tIN\tA\t198.51.100.54", "ns3.example.net."} {
		if !strings.Contains(out, want) {
			t.Errorf("dig NS lacks %q:\n%s", want, out)
		}
	}
}
