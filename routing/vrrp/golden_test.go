package vrrp

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/internal/golden"
)

// The advertisements a router sends, byte for byte (checksum included),
// for VRRPv3 over IPv4 and IPv6 and for keepalived's default VRRPv2 with
// and without the handbook's PASS authentication.
func TestGoldenAdverts(t *testing.T) {
	vip := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, x := range s {
			out = append(out, netip.MustParseAddr(x))
		}
		return out
	}
	var b strings.Builder
	for _, c := range []struct {
		name     string
		a        Advert
		src, dst netip.Addr
	}{
		{"v3 IPv4, one VIP, priority 100, 1 s", Advert{VRID: 51, Priority: 100, Interval: time.Second, Addrs: vip("192.0.2.10")}, src4, GroupIPv4},
		{"v3 IPv4, three VIPs, 250 ms", Advert{VRID: 52, Priority: 150, Interval: 250 * time.Millisecond, Addrs: vip("192.0.2.10", "192.0.2.11", "192.0.2.12")}, src4, GroupIPv4},
		{"v3 IPv4, resigning (priority 0), to a unicast peer", Advert{VRID: 51, Priority: 0, Interval: time.Second, Addrs: vip("192.0.2.10")}, src4, netip.MustParseAddr("10.0.0.3")},
		{"v3 IPv6, one VIP", Advert{VRID: 51, Priority: 100, Interval: time.Second, Addrs: vip("2001:db8:9::51")}, src6, GroupIPv6},
		{"v2 IPv4, no authentication", Advert{Version: Version2, VRID: 51, Priority: 100, Interval: time.Second, Addrs: vip("192.0.2.10")}, src4, GroupIPv4},
		{"v2 IPv4, PASS 1111 (the LVS handbook's keepalived.conf)", Advert{Version: Version2, VRID: 51, Priority: 90, Interval: time.Second,
			Addrs: vip("192.0.2.10"), AuthType: AuthSimple, Auth: SimpleAuth("1111")}, src4, GroupIPv4},
	} {
		wire, err := c.a.Marshal(c.src, c.dst)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		// What a receiver makes of it, to show the bytes mean what the
		// name says.
		back, err := Unmarshal(wire, c.src, c.dst)
		if err != nil {
			t.Fatalf("%s: the router's own advertisement does not parse: %v", c.name, err)
		}
		fmt.Fprintf(&b, "## %s\n%s -> %s, %d bytes\n%s", c.name, c.src, c.dst, len(wire), hex.Dump(wire))
		fmt.Fprintf(&b, "version %d vrid %d priority %d interval %v addrs %v auth %d %q\n\n",
			back.Version, back.VRID, back.Priority, back.Interval, back.Addrs, back.AuthType, strings.TrimRight(string(back.Auth[:]), "\x00"))
	}
	golden.Check(t, "adverts", []byte(b.String()))
}
