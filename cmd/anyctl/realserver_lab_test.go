package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/anycastd/anycastd/labs/labtest"
)

// TestLabRealServer runs `anyctl realserver up/down` in a fresh network
// namespace and checks the kernel's state after each step.
func TestLabRealServer(t *testing.T) {
	labtest.Require(t)
	anyctl := filepath.Join(labtest.Binaries(t), "anyctl")
	ns := labtest.NewNetns(t, "rs")
	state := t.TempDir()
	rs := func(args ...string) string {
		t.Helper()
		return ns.Run(anyctl, append([]string{"realserver", "--state-dir", state}, args...)...)
	}
	sysctls := []string{"net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce", "net.ipv4.conf.lo.arp_ignore", "net.ipv4.conf.lo.arp_announce"}
	before := map[string]string{}
	for _, s := range sysctls {
		before[s] = ns.Sysctl(s)
	}

	out := rs("up", "--vip", "198.51.100.10", "--vip", "2001:db8::10")
	for _, want := range []string{"added 198.51.100.10/32 to lo", "added 2001:db8::10/128 to lo", "set sysctl net.ipv4.conf.all.arp_ignore 0 -> 1"} {
		if !strings.Contains(out, want) {
			t.Errorf("up: missing %q in:\n%s", want, out)
		}
	}
	addrs := ns.Run("ip", "addr", "show", "dev", "lo")
	if !strings.Contains(addrs, "198.51.100.10/32") || !strings.Contains(addrs, "2001:db8::10/128") {
		t.Errorf("VIPs not on lo:\n%s", addrs)
	}
	for s, want := range map[string]string{"net.ipv4.conf.all.arp_ignore": "1", "net.ipv4.conf.all.arp_announce": "2", "net.ipv4.conf.lo.arp_ignore": "1", "net.ipv4.conf.lo.arp_announce": "2"} {
		if got := ns.Sysctl(s); got != want {
			t.Errorf("%s = %s, want %s", s, got, want)
		}
	}

	// Idempotent: a second up changes nothing and says so.
	out = rs("up", "--vip", "198.51.100.10", "--vip", "2001:db8::10")
	if strings.Contains(out, "added") || strings.Contains(out, "set ") {
		t.Errorf("second up changed something:\n%s", out)
	}

	out = rs("down")
	if !strings.Contains(out, "removed 198.51.100.10/32 from lo") || !strings.Contains(out, "restored sysctl net.ipv4.conf.all.arp_ignore 1 -> 0") {
		t.Errorf("down:\n%s", out)
	}
	addrs = ns.Run("ip", "addr", "show", "dev", "lo")
	if strings.Contains(addrs, "198.51.100.10") || strings.Contains(addrs, "2001:db8::10") {
		t.Errorf("VIPs left on lo after down:\n%s", addrs)
	}
	for _, s := range sysctls {
		if got := ns.Sysctl(s); got != before[s] {
			t.Errorf("%s = %s after down, was %s", s, got, before[s])
		}
	}
	if out = rs("down"); !strings.Contains(out, "nothing to undo") {
		t.Errorf("second down:\n%s", out)
	}
}

// TestLabRealServerTUN: tun mode brings up tunl0 with the VIP and turns
// rp_filter off; down puts it all back.
func TestLabRealServerTUN(t *testing.T) {
	labtest.Require(t)
	anyctl := filepath.Join(labtest.Binaries(t), "anyctl")
	ns := labtest.NewNetns(t, "rstun")
	state := t.TempDir()
	out, err := ns.Try(anyctl, "realserver", "--state-dir", state, "up", "--mode", "tun", "--vip", "198.51.100.20")
	if err != nil && strings.Contains(out, "ipip module") {
		t.Skipf("this kernel has no IPIP: %s", out)
	}
	if err != nil {
		t.Fatalf("up --mode tun: %v\n%s", err, out)
	}
	link := ns.Run("ip", "addr", "show", "dev", "tunl0")
	if !strings.Contains(link, "198.51.100.20/32") || !strings.Contains(link, "UP") {
		t.Errorf("tunl0 not up with the VIP:\n%s", link)
	}
	if got := ns.Sysctl("net.ipv4.conf.tunl0.rp_filter"); got != "0" {
		t.Errorf("tunl0 rp_filter %s", got)
	}
	ns.Run(anyctl, "realserver", "--state-dir", state, "down")
	link = ns.Run("ip", "addr", "show", "dev", "tunl0")
	if strings.Contains(link, "198.51.100.20") || strings.Contains(link, ",UP") {
		t.Errorf("tunl0 not restored:\n%s", link)
	}
	if _, err := ns.Try(anyctl, "realserver", "--state-dir", state, "up", "--mode", "tun", "--vip", "2001:db8::20"); err == nil {
		t.Errorf("tun with an IPv6 VIP must be refused")
	}
}
