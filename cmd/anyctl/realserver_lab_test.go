package main

import (
	"maps"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/anycastd/anycastd/labs/labtest"
)

// `anyctl realserver up` on a host (a namespace): the VIPs on lo, ARP
// kept quiet; `down` puts everything back as it was, and a second `down`
// has nothing to undo.
func TestLabRealServerUpDown(t *testing.T) {
	labtest.Require(t)
	bin := labtest.Binaries(t)
	ns := labtest.NewNetns(t, "rs")
	state := t.TempDir()
	anyctl := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns.Name, filepath.Join(bin, "anyctl")},
			append(args, "--state-dir", state)...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("anyctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	sysctls := []string{"net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce", "net.ipv4.conf.lo.arp_ignore", "net.ipv4.conf.lo.arp_announce"}
	read := func() map[string]string {
		out := map[string]string{}
		for _, s := range sysctls {
			out[s] = ns.Sysctl(s)
		}
		return out
	}
	before := read()
	lo := func() string { return ns.Run("ip", "-o", "addr", "show", "dev", "lo") }

	anyctl("realserver", "up", "--vip", "192.0.2.80", "--vip", "2001:db8::80")
	if l := lo(); !strings.Contains(l, "192.0.2.80/32") || !strings.Contains(l, "2001:db8::80/128") {
		t.Errorf("VIPs not on lo after up:\n%s", l)
	}
	up := read()
	for s, want := range map[string]string{"net.ipv4.conf.all.arp_ignore": "1", "net.ipv4.conf.all.arp_announce": "2",
		"net.ipv4.conf.lo.arp_ignore": "1", "net.ipv4.conf.lo.arp_announce": "2"} {
		if up[s] != want {
			t.Errorf("%s = %s after up, want %s", s, up[s], want)
		}
	}
	if again := anyctl("realserver", "up", "--vip", "192.0.2.80", "--vip", "2001:db8::80"); strings.Contains(again, "added") || strings.Contains(again, "set sysctl") {
		t.Errorf("a second up changed something:\n%s", again)
	}

	anyctl("realserver", "down")
	if l := lo(); strings.Contains(l, "192.0.2.80") || strings.Contains(l, "2001:db8::80") {
		t.Errorf("VIPs still on lo after down:\n%s", l)
	}
	if after := read(); !maps.Equal(after, before) {
		t.Errorf("sysctls after down %v, before up %v", after, before)
	}
	if out := anyctl("realserver", "down"); !strings.Contains(out, "nothing to undo") {
		t.Errorf("second down: %s", out)
	}
}
