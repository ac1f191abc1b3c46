package ipvs

import (
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/labs/labtest"
)

// The VIPs of services that went away are unbound; an address anycastd
// did not add is never touched, by UnbindExcept, RemoveAddress or Restore.
func TestLabHostUnbind(t *testing.T) {
	labtest.Require(t)
	ns := labtest.NewNetns(t, "host")
	ns.Run("ip", "addr", "add", "192.0.2.99/32", "dev", "lo") // the operator's own
	journal := filepath.Join(t.TempDir(), "host.json")
	addrs := func() string {
		out := ns.Run("ip", "-4", "-o", "addr", "show", "dev", "lo")
		var got []string
		for _, a := range []string{"192.0.2.1/32", "192.0.2.2/32", "192.0.2.99/32"} {
			if strings.Contains(out, " "+a+" ") {
				got = append(got, a)
			}
		}
		return strings.Join(got, " ")
	}
	ns.Do(func() {
		h, err := OpenHost(journal)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range []string{"192.0.2.1/32", "192.0.2.2/32", "192.0.2.99/32"} {
			if _, err := h.AddAddress("lo", netip.MustParsePrefix(a)); err != nil {
				t.Fatal(err)
			}
		}
		if got := addrs(); got != "192.0.2.1/32 192.0.2.2/32 192.0.2.99/32" {
			t.Fatalf("after adding: %s", got)
		}
		msgs, err := h.UnbindExcept("lo", []netip.Addr{netip.MustParseAddr("192.0.2.1")})
		if err != nil {
			t.Fatal(err)
		}
		if got := addrs(); got != "192.0.2.1/32 192.0.2.99/32" {
			t.Errorf("after unbinding all but .1: %s (%v)", got, msgs)
		}
		if _, err := h.RemoveAddress("lo", netip.MustParsePrefix("192.0.2.99/32")); err == nil || !strings.Contains(err.Error(), "not added by anycastd") {
			t.Errorf("removing the operator's address: %v", err)
		}
		// The journal is what a restarted daemon (or --restore-host) reads.
		h2, err := OpenHost(journal)
		if err != nil {
			t.Fatal(err)
		}
		if ch := h2.Changes(); len(ch) != 1 || ch[0].Addr.String() != "192.0.2.1/32" {
			t.Errorf("journal after unbinding: %+v", ch)
		}
		if _, err := h2.Restore(); err != nil {
			t.Fatal(err)
		}
		if got := addrs(); got != "192.0.2.99/32" {
			t.Errorf("after restore: %s", got)
		}
	})
}

// A director takes its VIPs as local routes, not as addresses on lo: the
// host accepts their packets (for IPVS) while lo's addresses stay the
// routing daemon's to add and withdraw (kernel mode, interface lo; case 6
// of the fail-safe issue). VIP addresses that earlier versions bound are
// replaced; an address labelled by routing/kernel is not touched.
func TestLabHostLocalRoutes(t *testing.T) {
	labtest.Require(t)
	ns := labtest.NewNetns(t, "lroute")
	journal := filepath.Join(t.TempDir(), "host.json")
	ns.Run("ip", "addr", "add", "192.0.2.3/32", "dev", "lo", "label", "lo:vip") // the announcer's
	ns.Do(func() {
		h, err := OpenHost(journal)
		if err != nil {
			t.Fatal(err)
		}
		// What an earlier version journaled: the VIP bound on lo.
		if _, err := h.AddAddress("lo", netip.MustParsePrefix("192.0.2.1/32")); err != nil {
			t.Fatal(err)
		}
		h.changes = append(h.changes, HostChange{Kind: "address", Name: "lo", Addr: netip.MustParsePrefix("192.0.2.3/32")})
		_, err = h.SetupDirector(DirectorSettings{VIPs: []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")}})
		// This host's kernel has no IPVS: its sysctls fail, after the
		// routes.
		if err != nil && !strings.Contains(err.Error(), "net.ipv4.vs.") {
			t.Fatal(err)
		}
	})
	routes := ns.Run("ip", "-4", "route", "show", "table", "local", "proto", "251")
	addrs := ns.Run("ip", "-4", "-o", "addr", "show", "dev", "lo")
	for _, v := range []string{"192.0.2.1", "192.0.2.2"} {
		if !strings.Contains(routes, "local "+v+" dev lo") {
			t.Errorf("no local route for %s:\n%s", v, routes)
		}
	}
	if strings.Contains(addrs, "192.0.2.1/32") || strings.Contains(addrs, "192.0.2.2/32") {
		t.Errorf("a VIP is an address on lo (a routing daemon would export it):\n%s", addrs)
	}
	if !strings.Contains(addrs, "192.0.2.3/32") {
		t.Errorf("the announcer's labelled address was removed:\n%s", addrs)
	}
	// The host takes the VIP's packets as its own.
	ns.Do(func() {
		l, err := net.Listen("tcp", "0.0.0.0:8080")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			if c, err := l.Accept(); err == nil {
				c.Close()
			}
		}()
		c, err := net.DialTimeout("tcp", "192.0.2.2:8080", 2*time.Second)
		if err != nil {
			t.Fatalf("a connection to the VIP was not taken locally: %v", err)
		}
		c.Close()

		// A VIP gone: its route goes; Restore removes the rest.
		h, err := OpenHost(journal)
		if err != nil {
			t.Fatal(err)
		}
		h.SetupDirector(DirectorSettings{VIPs: []netip.Addr{netip.MustParseAddr("192.0.2.2")}})
		if has, _ := hasLocalRoute(netip.MustParsePrefix("192.0.2.1/32")); has {
			t.Errorf("the local route of a VIP no longer configured is still there")
		}
		if _, err := h.Restore(); err != nil {
			t.Fatal(err)
		}
		if has, _ := hasLocalRoute(netip.MustParsePrefix("192.0.2.2/32")); has {
			t.Errorf("Restore left the local route")
		}
	})
}
