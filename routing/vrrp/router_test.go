package vrrp

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/configs"
)

// TestMismatch: what an instance drops as misconfigured (RFC 3768 7.1,
// RFC 5798 7.1), and why; the keepalived handbook's pair is the v2 case.
func TestMismatch(t *testing.T) {
	vips := []netip.Addr{netip.MustParseAddr("192.0.2.51")}
	v2 := &instance{cfg: configs.VRRPInstance{Version: 2, Authentication: &configs.VRRPAuth{Type: "pass", Password: "1111"}}, vips: vips}
	v2none := &instance{cfg: configs.VRRPInstance{Version: 2}, vips: vips}
	v3 := &instance{cfg: configs.VRRPInstance{Version: 3}, vips: vips}
	good2 := Advert{Version: 2, VRID: 51, Priority: 100, Interval: time.Second, Addrs: vips, AuthType: AuthSimple, Auth: SimpleAuth("1111")}
	good3 := Advert{Version: 3, VRID: 51, Priority: 100, Interval: time.Second, Addrs: vips}
	with := func(a Advert, f func(*Advert)) Advert { f(&a); return a }
	for _, c := range []struct {
		name   string
		in     *instance
		a      Advert
		reason string
		says   string
	}{
		{"v2 as configured", v2, good2, "", ""},
		{"v3 as configured", v3, good3, "", ""},
		{"v3 instance hears keepalived's default v2", v3, good2, "version", "received VRRPv2, this instance runs VRRPv3"},
		{"v2 instance hears v3", v2, good3, "version", "received VRRPv3, this instance runs VRRPv2"},
		{"wrong password", v2, with(good2, func(a *Advert) { a.Auth = SimpleAuth("2222") }), "auth", "password"},
		{"no authentication where a password is set", v2, with(good2, func(a *Advert) { a.AuthType, a.Auth = AuthNone, [8]byte{} }), "auth", "type 0"},
		{"a password where none is set", v2none, good2, "auth", "type 1"},
		{"none, none", v2none, with(good2, func(a *Advert) { a.AuthType, a.Auth = AuthNone, [8]byte{} }), "", ""},
		{"v2 interval differs", v2, with(good2, func(a *Advert) { a.Interval = 2 * time.Second }), "interval", "2s"},
		{"v3 interval differs: learnt, not an error", v3, with(good3, func(a *Advert) { a.Interval = 2 * time.Second }), "", ""},
		{"one address more", v3, with(good3, func(a *Advert) { a.Addrs = append(vips, netip.MustParseAddr("192.0.2.52")) }), "addresses", "2 virtual addresses"},
		{"another address", v2, with(good2, func(a *Advert) { a.Addrs = []netip.Addr{netip.MustParseAddr("192.0.2.99")} }), "addresses", "192.0.2.99"},
	} {
		t.Run(c.name, func(t *testing.T) {
			msg, reason := c.in.mismatch(c.a, time.Second)
			if reason != c.reason || !strings.Contains(msg, c.says) {
				t.Errorf("%q %q, want reason %q saying %q", reason, msg, c.reason, c.says)
			}
		})
	}
}
