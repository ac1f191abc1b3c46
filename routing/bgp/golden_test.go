package bgp

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/internal/golden"
	"github.com/anycastd/anycastd/routing"
)

// What the speaker sends its peers for each kind of announcement: every
// path attribute, with its flags, type and wire bytes.
func TestGoldenPathAttributes(t *testing.T) {
	cfg := configs.BGP{ASN: 65001}
	withNH := cfg
	withNH.NextHopIPv4 = netip.MustParseAddr("10.0.0.11")
	withNH.NextHopIPv6 = netip.MustParseAddr("2001:db8::11")
	var b strings.Builder
	for _, c := range []struct {
		name string
		cfg  configs.BGP
		a    routing.Announcement
	}{
		{"IPv4, next hop self, nothing else", cfg, routing.Announcement{Prefix: netip.MustParsePrefix("192.0.2.10/32")}},
		{"IPv4, communities, large communities, MED", cfg, routing.Announcement{Prefix: netip.MustParsePrefix("192.0.2.10/32"),
			Communities: []string{"65001:100", "65001:200"}, LargeCommunities: []string{"65001:1:2"}, MED: 50}},
		{"IPv4, draining: GRACEFUL_SHUTDOWN added", cfg, routing.Announcement{Prefix: netip.MustParsePrefix("192.0.2.10/32"),
			Communities: []string{"65001:100"}, GracefulShutdown: true}},
		{"IPv4, configured next hop", withNH, routing.Announcement{Prefix: netip.MustParsePrefix("192.0.2.11/32")}},
		{"IPv6, configured next hop, in MP_REACH_NLRI", withNH, routing.Announcement{Prefix: netip.MustParsePrefix("2001:db8:100::10/128"), MED: 10}},
		{"IPv6, next hop self", cfg, routing.Announcement{Prefix: netip.MustParsePrefix("2001:db8:100::10/128"), GracefulShutdown: true}},
	} {
		p, err := pathFor(c.a, c.cfg)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		fmt.Fprintf(&b, "## %s\nfamily %v nlri %s\n", c.name, p.Family, p.Nlri)
		for _, a := range p.Attrs {
			wire, err := a.Serialize()
			if err != nil {
				t.Fatalf("%s: %v: %v", c.name, a.GetType(), err)
			}
			fmt.Fprintf(&b, "%-30v flags 0x%02x  %x\n    %s\n", a.GetType(), uint8(a.GetFlags()), wire, a)
		}
		b.WriteString("\n")
	}
	golden.Check(t, "path-attributes", []byte(b.String()))
}
