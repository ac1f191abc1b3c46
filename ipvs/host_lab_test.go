package ipvs

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

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
