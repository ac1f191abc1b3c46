package dns

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/internal/golden"
	mdns "github.com/miekg/dns"
)

// The answers the server gives, record by record: the header's rcode and
// flags, and each section in zone-file form. Answers rotate between
// queries (round-robin), so each section is sorted here; the SOA serial is
// the server's start time, so it is shown as 0.
func TestGoldenAnswers(t *testing.T) {
	s, srv := start(t, []configs.DNSName{
		{Name: "www", VIPs: addrs("192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::1")},
		{Name: "api.lb.example.com.", VIPs: addrs("192.0.2.9")},
	})
	s.SetLive(addrs("192.0.2.1", "192.0.2.3", "2001:db8::1", "192.0.2.9")) // 192.0.2.2's director is down
	var b strings.Builder
	for _, q := range []struct {
		name  string
		qtype uint16
		tcp   bool
	}{
		{"www.lb.example.com.", mdns.TypeA, false},
		{"www.lb.example.com.", mdns.TypeAAAA, true},
		{"api.lb.example.com.", mdns.TypeAAAA, false},
		{"lb.example.com.", mdns.TypeSOA, false},
		{"lb.example.com.", mdns.TypeNS, false},
		{"nope.lb.example.com.", mdns.TypeA, false},
		{"www.example.org.", mdns.TypeA, false},
	} {
		r := query(t, srv, q.name, q.qtype, q.tcp, 0)
		proto := "udp"
		if q.tcp {
			proto = "tcp"
		}
		fmt.Fprintf(&b, ";; %s %s over %s\n", q.name, mdns.TypeToString[q.qtype], proto)
		var flags []string
		for _, f := range []struct {
			on   bool
			name string
		}{{r.Authoritative, "aa"}, {r.Truncated, "tc"}, {r.RecursionDesired, "rd"}, {r.RecursionAvailable, "ra"}} {
			if f.on {
				flags = append(flags, f.name)
			}
		}
		fmt.Fprintf(&b, ";; %s, flags: %s\n", mdns.RcodeToString[r.Rcode], strings.Join(flags, " "))
		for _, sec := range []struct {
			name string
			rrs  []mdns.RR
		}{{"answer", r.Answer}, {"authority", r.Ns}, {"additional", r.Extra}} {
			if len(sec.rrs) == 0 {
				continue
			}
			var lines []string
			for _, rr := range sec.rrs {
				if soa, ok := rr.(*mdns.SOA); ok {
					c := *soa
					c.Serial = 0
					rr = &c
				}
				lines = append(lines, rr.String())
			}
			slices.Sort(lines)
			fmt.Fprintf(&b, ";; %s\n%s\n", sec.name, strings.Join(lines, "\n"))
		}
		b.WriteString("\n")
	}
	golden.Check(t, "answers", []byte(b.String()))
}
