package bgp

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/labs/labtest"
)

// frrLog is where labs/frr/router-frr.conf has FRR log.
const frrLog = "/tmp/frr-frr-router.log"

// The FRR commands of the frr lab's router: its daemons run in the
// pathspace "frrlab" (labs/frr.clab.yml).
const (
	frrConf  = "/etc/frr/frrlab/frr.conf"
	frrBgpd  = "/usr/lib/frr/bgpd -d -N frrlab -f " + frrConf + " -i /var/run/frr/frrlab/bgpd.pid"
	frrVtysh = "vtysh -N frrlab"
)

// TestFRRSnippetIsTheLabs: the README's FRR configuration is the text the
// frr lab's router runs, character for character.
func TestFRRSnippetIsTheLabs(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(labtest.RepoRoot(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	// The block after the paragraph that begins "FRR (8.4".
	_, rest, ok := strings.Cut(string(readme), "\nFRR (8.4")
	_, block, ok2 := strings.Cut(rest, "\n```\n")
	block, _, ok3 := strings.Cut(block, "```\n")
	if !ok || !ok2 || !ok3 {
		t.Fatal("README.md has no FRR block (a paragraph beginning 'FRR (8.4', then a fenced block)")
	}
	conf, err := os.ReadFile(filepath.Join(labtest.RepoRoot(), "labs", "frr", "router-frr.conf"))
	if err != nil {
		t.Fatal(err)
	}
	_, lab, ok := strings.Cut(string(conf), "! --- README: FRR (upstream router) ---\n")
	lab, _, ok2 = strings.Cut(lab, "! --- end ---\n")
	if !ok || !ok2 {
		t.Fatal("labs/frr/router-frr.conf lacks the README markers")
	}
	if block != lab {
		t.Errorf("README.md's FRR block and the lab's differ:\nREADME:\n%s\nlab:\n%s", block, lab)
	}
}

// frrSpeakerConfig is director n of the frr lab: AS 65001, the router as
// its one neighbour, BFD 100 ms x 3 as the README's profile.
func (l *ecmpLab) frrSpeakerConfig(n int) string {
	return l.writeConfig(n, fmt.Sprintf(`node: {name: d%[1]d}
cluster: {insecure: true}
routing:
  mode: bgp
  bgp:
    asn: 65001
    router_id: 10.0.%[1]d.1
    neighbors:
      - {address: 10.0.%[1]d.0, asn: 65000, hold_time: 3s, keepalive: 1s, connect_retry: 1s, bfd: {enabled: true, min_tx: 100ms, min_rx: 100ms, multiplier: 3}}
`, n))
}

func (l *ecmpLab) vtysh(t *testing.T, cmds ...string) string {
	t.Helper()
	line := frrVtysh
	for _, c := range cmds {
		line += " -c '" + c + "'"
	}
	// vtysh complains on stderr that there is no vtysh.conf (the lab
	// needs none): keep only its answer.
	out, err := l.lab.Exec("router", line+" 2>/dev/null")
	if err != nil {
		t.Fatalf("%s: %v\n%s", line, err, out)
	}
	return out
}

// frrBFD is FRR's view of its BFD session with a director.
type frrBFD struct {
	Peer       string `json:"peer"`
	Status     string `json:"status"`
	RxInterval int    `json:"receive-interval"`
	TxInterval int    `json:"transmit-interval"`
	Multiplier int    `json:"detect-multiplier"`
}

func (l *ecmpLab) frrBFDPeers(t *testing.T) map[string]frrBFD {
	t.Helper()
	var peers []frrBFD
	out := l.vtysh(t, "show bfd peers json")
	if err := json.Unmarshal([]byte(out), &peers); err != nil {
		t.Fatalf("show bfd peers json: %v\n%s", err, out)
	}
	m := map[string]frrBFD{}
	for _, p := range peers {
		m[p.Peer] = p
	}
	return m
}

// frrNeighbor is FRR's view of its BGP session with a director.
type frrNeighbor struct {
	State       string `json:"bgpState"`
	Established int    `json:"connectionsEstablished"`
	LastReset   string `json:"lastResetDueTo"`
	// LastNotification is the notification of the last reset
	// ("Cease/BFD Down" when FRR's BFD took the session down).
	LastNotification string `json:"lastNotificationReason"`
}

func (l *ecmpLab) frrNeighbor(t *testing.T, addr string) frrNeighbor {
	t.Helper()
	var m map[string]frrNeighbor
	out := l.vtysh(t, "show bgp neighbors "+addr+" json")
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("show bgp neighbors json: %v\n%s", err, out)
	}
	return m[addr]
}

// TestLabFRR: two embedded speakers against FRR 8.4 (zebra, bgpd, bfdd)
// configured with the README's snippet (issue 17, items 1-3): ECMP in the
// router's kernel; the profile's BFD timers; FRR shutting BFD down
// (AdminDown) leaves the BGP sessions and the routes alone; a bgpd restart
// costs each director one establishment, not two; a blackholed director
// leaves the FIB by BFD.
func TestLabFRR(t *testing.T) {
	// Registered first, so it runs after the lab's diagnosis, which
	// needs FRR's sockets.
	t.Cleanup(func() { os.RemoveAll("/var/run/frr/frrlab") })
	l := deploy(t, "frr.clab.yml", frrLog, []string{
		frrVtysh + " -c 'show bgp summary' -c 'show bfd peers brief' -c 'show ip route' 2>&1"})
	dirs := []string{"10.0.1.1", "10.0.2.1"}
	routers := map[string]string{"d1": "10.0.1.0", "d2": "10.0.2.0"}
	for n := 1; n <= 2; n++ {
		l.startSpeakerWith(n, l.frrSpeakerConfig(n)).do(t, "set "+vip+"/32")
	}
	l.waitHops(t, vip+"/32", dirs, 30*time.Second)
	bfdUp := func(t *testing.T) {
		t.Helper()
		labtest.Eventually(t, 15*time.Second, "BFD up on both sides of both sessions", func() error {
			for node, router := range routers {
				if p := l.speakers[node].peer(t, router); p.BFD != "up" || !p.Established() {
					return fmt.Errorf("%s: bgp %s, bfd %q", node, p.State, p.BFD)
				}
			}
			peers := l.frrBFDPeers(t)
			for _, d := range dirs {
				if peers[d].Status != "up" {
					return fmt.Errorf("FRR: bfd with %s %q", d, peers[d].Status)
				}
			}
			return nil
		})
	}
	bfdUp(t)

	t.Run("the profile's BFD timers", func(t *testing.T) {
		for _, d := range dirs {
			if p := l.frrBFDPeers(t)[d]; p.RxInterval != 100 || p.TxInterval != 100 || p.Multiplier != 3 {
				t.Errorf("FRR's BFD with %s: %+v, want 100 ms x 3", d, p)
			}
		}
	})

	t.Run("BFD admin down keeps the sessions and routes", func(t *testing.T) {
		before := map[string]uint64{}
		for node, router := range routers {
			before[node] = l.speakers[node].peer(t, router).Flaps
		}
		l.vtysh(t, "configure terminal", "bfd", "profile directors", "shutdown")
		// Watch the router's FIB for 3 s: both next hops all the time.
		var lost []string
		for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if h := l.hops(t, vip+"/32"); !slices.Equal(h, dirs) {
				lost = append(lost, fmt.Sprintf("%s %v", time.Now().Format("15:04:05.000"), h))
			}
		}
		if len(lost) > 0 {
			t.Errorf("the route lost next hops while FRR's BFD was admin down: %v", lost)
		}
		for node, router := range routers {
			p := l.speakers[node].peer(t, router)
			if p.Flaps != before[node] || !p.Established() {
				t.Errorf("%s: session %s, flaps %d -> %d: an AdminDown took it down", node, p.State, before[node], p.Flaps)
			}
			if p.BFD != "down" {
				t.Errorf("%s: bfd %q while the router's is admin down", node, p.BFD)
			}
		}
		l.vtysh(t, "configure terminal", "bfd", "profile directors", "no shutdown")
		bfdUp(t)
	})

	t.Run("bgpd restart: one establishment per director", func(t *testing.T) {
		before := map[string]uint64{}
		for node, router := range routers {
			before[node] = l.speakers[node].peer(t, router).Flaps
		}
		if out, err := l.lab.Exec("router", "kill $(cat /var/run/frr/frrlab/bgpd.pid); while pgrep -x bgpd >/dev/null; do sleep 0.05; done"); err != nil {
			t.Fatalf("stop bgpd: %v %s", err, out)
		}
		// Long enough for BFD to come up on its own before the BGP
		// sessions do (GoBGP waits after the router's Cease): the case
		// where FRR replaced the session at the establishment.
		time.Sleep(2 * time.Second)
		if out, err := l.lab.Exec("router", frrBgpd); err != nil {
			t.Fatalf("start bgpd: %v %s", err, out)
		}
		l.waitHops(t, vip+"/32", dirs, 30*time.Second)
		bfdUp(t)
		time.Sleep(2 * time.Second) // let a second teardown show
		for node, router := range routers {
			p := l.speakers[node].peer(t, router)
			if p.Flaps != before[node]+1 || !p.Established() {
				t.Errorf("%s: session %s, flaps %d -> %d (want one loss: the restart)", node, p.State, before[node], p.Flaps)
			}
			if n := l.frrNeighbor(t, router[:len(router)-1]+"1"); n.Established != 1 {
				t.Errorf("FRR: %d establishments with %s since bgpd restarted (last reset: %s, %s), want 1", n.Established, node, n.LastReset, n.LastNotification)
			}
		}
	})

	t.Run("blackholed director leaves the FIB by BFD", func(t *testing.T) {
		var ds []time.Duration
		for range labtest.MeasureRuns() {
			start := time.Now()
			if out, err := l.lab.Exec("d2", "nft add table inet blackhole && "+
				"nft add chain inet blackhole in '{ type filter hook input priority -300; policy drop; }' && "+
				"nft add chain inet blackhole out '{ type filter hook output priority -300; policy drop; }'"); err != nil {
				t.Fatalf("nft: %v %s", err, out)
			}
			l.waitHops(t, vip+"/32", dirs[:1], 10*time.Second)
			ds = append(ds, time.Since(start))
			if n := l.frrNeighbor(t, "10.0.2.1"); n.LastNotification != "Cease/BFD Down" {
				t.Errorf("FRR dropped d2 for %q (%s), want its BFD (Cease/BFD Down)", n.LastReset, n.LastNotification)
			}
			labtest.Eventually(t, 10*time.Second, "d2's own session down", func() error {
				if p := l.speakers["d2"].peer(t, "10.0.2.0"); p.Established() {
					return fmt.Errorf("still established")
				}
				return nil
			})
			l.lab.Exec("d2", "nft delete table inet blackhole")
			l.waitHops(t, vip+"/32", dirs, 30*time.Second)
		}
		labtest.Report(t, "blackholed director (nft drop), FRR with the README's BFD profile (100ms x3) -> next hop gone", ds)
	})
}
