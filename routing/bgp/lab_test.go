package bgp

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/labs/clab"
	"github.com/anycastd/anycastd/labs/labtest"
	"github.com/anycastd/anycastd/routing"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	labtest.HelperMain(map[string]func([]string) error{"speaker": speakerHelper})
	goleak.VerifyTestMain(m)
}

// speakerHelper runs a Speaker from a config file as a
// labtest.AnnouncerHelper (set, none, status) with the config's
// communities on every announcement, plus
//
//	drain DURATION   GRACEFUL_SHUTDOWN for DURATION, then withdraw
func speakerHelper(args []string) error {
	cfg, err := configs.Load(args[0])
	if err != nil {
		return err
	}
	sp := New(cfg.Routing.BGP, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	return labtest.AnnouncerHelper{
		Announcer: sp,
		Decorate: func(a *routing.Announcement) {
			a.Communities, a.LargeCommunities = cfg.Routing.BGP.Communities, cfg.Routing.BGP.LargeCommunities
		},
		Extra: map[string]func(context.Context, string, []routing.Announcement) error{
			"drain": func(ctx context.Context, arg string, current []routing.Announcement) error {
				d, err := time.ParseDuration(arg)
				if err != nil {
					return err
				}
				return drain(ctx, sp, current, d)
			},
		},
	}.Serve()
}

const (
	vip  = "198.51.100.10"
	vip6 = "2001:db8:100::10"
)

type ecmpLab struct {
	t        *testing.T
	lab      *clab.Lab
	self     string
	speakers map[string]*speaker
	// routerLog is the router daemon's log file, routerShow the commands
	// whose output a failure's diagnosis shows.
	routerLog  string
	routerShow []string
}

type speaker struct {
	proc *clab.Process
}

// status is the speaker's routing.Status.
func (s *speaker) status(t *testing.T) routing.Status {
	t.Helper()
	line, err := s.proc.Ask("status", 30*time.Second)
	var st routing.Status
	if err == nil {
		err = json.Unmarshal([]byte(line), &st)
	}
	if err != nil {
		t.Fatalf("speaker %s: status: %q %v", s.proc.Node, line, err)
	}
	return st
}

// peer is the status of the session with addr.
func (s *speaker) peer(t *testing.T, addr string) routing.Peer {
	t.Helper()
	for _, p := range s.status(t).Peers {
		if p.Address.String() == addr {
			return p
		}
	}
	t.Fatalf("speaker %s: no peer %s", s.proc.Node, addr)
	return routing.Peer{}
}

func (s *speaker) do(t *testing.T, cmd string) {
	t.Helper()
	line, err := s.proc.Ask(cmd, 30*time.Second)
	if err != nil || line != "ok" {
		t.Fatalf("speaker %s: %s: %q %v\n%s", s.proc.Node, cmd, line, err, s.proc.Output())
	}
}

// birdLog is where labs/ecmp3/router-bird.conf has the router log.
const birdLog = "/tmp/bird-ecmp3-router.log"

func deployECMP3(t *testing.T) *ecmpLab {
	return deploy(t, "ecmp3.clab.yml", birdLog, []string{
		"birdc -s /run/bird-ecmp3-router.ctl show protocols",
		"birdc -s /run/bird-ecmp3-router.ctl show route"})
}

// deploy builds the topology in labs/file and destroys it at the test's
// end, after a diagnosis if the test failed.
func deploy(t *testing.T, file, routerLog string, routerShow []string) *ecmpLab {
	labtest.Require(t)
	topo, err := clab.Load(filepath.Join(labtest.RepoRoot(), "labs", file))
	if err != nil {
		t.Fatal(err)
	}
	// The router appends to its log (the path is in its config, for
	// containerlab too): start each run with an empty one, so a failure's
	// diagnosis shows this run only.
	os.Remove(routerLog)
	lab, err := clab.Deploy(topo)
	if err != nil {
		t.Fatal(err)
	}
	self, _ := os.Executable()
	l := &ecmpLab{t: t, lab: lab, self: self, speakers: map[string]*speaker{}, routerLog: routerLog, routerShow: routerShow}
	t.Cleanup(func() {
		if t.Failed() {
			l.diagnose()
		}
		lab.Destroy()
		os.Remove(routerLog)
	})
	return l
}

// diagnose logs what an operator would look at: the router's sessions and
// routes, and the tail of each speaker's log.
func (l *ecmpLab) diagnose() {
	for _, cmd := range l.routerShow {
		out, _ := l.lab.Exec("router", cmd)
		l.t.Logf("router: %s:\n%s", cmd, out)
	}
	for name, s := range l.speakers {
		out := s.proc.Output()
		if len(out) > 3000 {
			out = out[len(out)-3000:]
		}
		l.t.Logf("speaker %s log (tail):\n%s", name, out)
	}
	if b, err := os.ReadFile(l.routerLog); err == nil {
		if len(b) > 3000 {
			b = b[len(b)-3000:]
		}
		l.t.Logf("router log (tail):\n%s", b)
	}
}

// speakerConfig writes director n's config: AS 65001 towards the router's
// AS 65000 over IPv4 and IPv6, BFD except on d3 (the router has none
// there), the lab's MD5 password unless another is given.
func (l *ecmpLab) speakerConfig(n int, password string) string {
	bfd := "{enabled: true, min_tx: 100ms, min_rx: 100ms, multiplier: 3}"
	if n == 3 {
		bfd = "{enabled: false}"
	}
	doc := fmt.Sprintf(`node: {name: d%[1]d}
cluster: {insecure: true}
routing:
  mode: bgp
  bgp:
    asn: 65001
    router_id: 10.0.%[1]d.1
    communities: ["65001:100"]
    neighbors:
      - {address: 10.0.%[1]d.0, asn: 65000, password: %[2]q, hold_time: 3s, keepalive: 1s, connect_retry: 1s, bfd: %[3]s}
      - {address: "2001:db8:%[1]d::1", asn: 65000, password: %[2]q, families: [ipv6], hold_time: 3s, keepalive: 1s, connect_retry: 1s, bfd: %[3]s}
`, n, password, bfd)
	return l.writeConfig(n, doc)
}

func (l *ecmpLab) writeConfig(n int, doc string) string {
	path := filepath.Join(l.t.TempDir(), fmt.Sprintf("d%d.yaml", n))
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		l.t.Fatal(err)
	}
	return path
}

func (l *ecmpLab) startSpeaker(n int, password string) *speaker {
	l.t.Helper()
	return l.startSpeakerWith(n, l.speakerConfig(n, password))
}

func (l *ecmpLab) startSpeakerWith(n int, config string) *speaker {
	l.t.Helper()
	node := fmt.Sprintf("d%d", n)
	p, err := l.lab.Start(node, "env", labtest.HelperEnv+"=speaker", l.self, config)
	if err != nil {
		l.t.Fatal(err)
	}
	s := &speaker{proc: p}
	l.speakers[node] = s
	return s
}

func (l *ecmpLab) hops(t *testing.T, prefix string) []string {
	t.Helper()
	nh, err := l.lab.NextHops("router", netip.MustParsePrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range nh {
		out = append(out, a.String())
	}
	sort.Strings(out)
	return out
}

// waitHops polls the router's kernel route until its next hops are want,
// and returns how long that took.
func (l *ecmpLab) waitHops(t *testing.T, prefix string, want []string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	sort.Strings(want)
	labtest.Eventually(t, timeout, fmt.Sprintf("router's next hops for %s to be %v", prefix, want), func() error {
		nh, err := l.lab.NextHops("router", netip.MustParsePrefix(prefix))
		if err != nil {
			return err
		}
		var got []string
		for _, a := range nh {
			got = append(got, a.String())
		}
		sort.Strings(got)
		if !slices.Equal(got, want) {
			return fmt.Errorf("next hops %v", got)
		}
		return nil
	})
	return time.Since(start)
}

func (l *ecmpLab) bird(t *testing.T, cmd string) string {
	t.Helper()
	out, err := l.lab.Exec("router", "birdc -s /run/bird-ecmp3-router.ctl "+cmd)
	if err != nil {
		t.Fatalf("birdc %s: %v\n%s", cmd, err, out)
	}
	return out
}

// measureRuns is how many times each lab measurement repeats: 1 in the
// tests, more for the report (ANYCASTD_MEASURE_RUNS, set by make bench).
var all3 = []string{"10.0.1.1", "10.0.2.1", "10.0.3.1"}

func without(hops []string, h string) []string {
	return slices.DeleteFunc(slices.Clone(hops), func(x string) bool { return x == h })
}

// TestLabBGPECMP: three embedded speakers against BIRD: a 3-way ECMP route
// in the router's kernel (IPv4 and IPv6), traffic spread over the three,
// withdraw, graceful shutdown, kill, blackhole with and without BFD, and an
// MD5 mismatch.
func TestLabBGPECMP(t *testing.T) {
	l := deployECMP3(t)
	for n := 1; n <= 3; n++ {
		s := l.startSpeaker(n, "ecmp3-lab")
		s.do(t, "set "+vip+"/32,"+vip6+"/128")
	}
	l.waitHops(t, vip+"/32", all3, 30*time.Second)
	t.Logf("router: %s via %v", vip, l.hops(t, vip+"/32"))

	t.Run("ipv6", func(t *testing.T) {
		l.waitHops(t, vip6+"/128", []string{"2001:db8:1::2", "2001:db8:2::2", "2001:db8:3::2"}, 30*time.Second)
	})

	t.Run("communities", func(t *testing.T) {
		out := l.bird(t, "show route "+vip+"/32 all")
		if !strings.Contains(out, "(65001,100)") {
			t.Errorf("the configured community is not on the route:\n%s", out)
		}
	})

	t.Run("traffic spreads over the three", func(t *testing.T) {
		for n := 1; n <= 3; n++ {
			node := fmt.Sprintf("d%d", n)
			if out, err := l.lab.Exec(node, "ip addr add "+vip+"/32 dev lo"); err != nil {
				t.Fatalf("%s: %v %s", node, err, out)
			}
			p, err := l.lab.Start(node, "env", labtest.HelperEnv+"=serve", l.self, node, vip+":80")
			if err != nil {
				t.Fatal(err)
			}
			labtest.Eventually(t, 10*time.Second, node+"'s server", func() error {
				if !strings.Contains(p.Output(), "listening") {
					return fmt.Errorf("not listening yet")
				}
				return nil
			})
		}
		out, err := l.lab.Command("client", "env", labtest.HelperEnv+"=connect", l.self, vip+":80", "300", "10.0.0.10").CombinedOutput()
		if err != nil {
			t.Fatalf("connect: %v\n%s", err, out)
		}
		counts := map[string]int{}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if f := strings.Fields(line); len(f) == 2 {
				counts[f[1]]++
			}
		}
		t.Logf("300 connections from the client: %v", counts)
		for _, d := range []string{"d1", "d2", "d3"} {
			if counts[d] < 30 {
				t.Errorf("%s got %d of 300 connections: ECMP should spread them", d, counts[d])
			}
		}
		if counts["ERROR"] > 0 {
			t.Errorf("%d connections failed", counts["ERROR"])
		}
	})

	t.Run("withdraw removes exactly that next hop", func(t *testing.T) {
		var ds []time.Duration
		for range labtest.MeasureRuns() {
			start := time.Now()
			l.speakers["d2"].do(t, "none")
			l.waitHops(t, vip+"/32", without(all3, "10.0.2.1"), 10*time.Second)
			ds = append(ds, time.Since(start))
			l.speakers["d2"].do(t, "set "+vip+"/32,"+vip6+"/128")
			l.waitHops(t, vip+"/32", all3, 10*time.Second)
		}
		labtest.Report(t, "BGP withdraw -> next hop gone from the router's FIB", ds)
	})

	t.Run("drain announces graceful shutdown first", func(t *testing.T) {
		d1 := l.speakers["d1"]
		if err := d1.proc.Send("drain 4s"); err != nil {
			t.Fatal(err)
		}
		// While draining: BIRD still has d1's route, tagged, and has taken
		// it out of the multipath set.
		labtest.Eventually(t, 5*time.Second, "the GRACEFUL_SHUTDOWN community on d1's route", func() error {
			out := l.bird(t, "show route "+vip+"/32 all")
			if !strings.Contains(out, "(65535,0)") {
				return fmt.Errorf("no (65535,0) in:\n%s", out)
			}
			return nil
		})
		l.waitHops(t, vip+"/32", without(all3, "10.0.1.1"), 5*time.Second)
		if out := l.bird(t, "show route "+vip+"/32"); !strings.Contains(out, "10.0.1.1") {
			t.Errorf("during the drain BIRD must still have d1's route:\n%s", out)
		}
		line, err := d1.proc.ReadLine(30 * time.Second)
		if err != nil || line != "ok" {
			t.Fatalf("drain: %q %v", line, err)
		}
		if out := l.bird(t, "show route "+vip+"/32"); strings.Contains(out, "10.0.1.1") {
			t.Errorf("after the drain d1's route must be withdrawn:\n%s", out)
		}
		d1.do(t, "set "+vip+"/32,"+vip6+"/128")
		l.waitHops(t, vip+"/32", all3, 10*time.Second)
	})

	t.Run("killed speaker", func(t *testing.T) {
		var ds []time.Duration
		for range labtest.MeasureRuns() {
			start := time.Now()
			l.speakers["d3"].proc.Signal(syscall.SIGKILL)
			l.waitHops(t, vip+"/32", without(all3, "10.0.3.1"), 10*time.Second)
			ds = append(ds, time.Since(start))
			l.startSpeaker(3, "ecmp3-lab").do(t, "set "+vip+"/32,"+vip6+"/128")
			l.waitHops(t, vip+"/32", all3, 30*time.Second)
		}
		labtest.Report(t, "BGP speaker SIGKILL -> next hop gone", ds)
	})

	// blackhole drops everything on node until the router has taken its
	// next hop out (the measure) and the director has lost its session
	// too: lifting it earlier races the router's queued Cease against the
	// director's own detection, and the session would count as lost by a
	// notification instead of by the director's BFD or hold timer.
	blackhole := func(t *testing.T, node, peer, hop, what string, timeout time.Duration) {
		var ds []time.Duration
		for range labtest.MeasureRuns() {
			start := time.Now()
			if out, err := l.lab.Exec(node, "nft add table inet blackhole && "+
				"nft add chain inet blackhole in '{ type filter hook input priority -300; policy drop; }' && "+
				"nft add chain inet blackhole out '{ type filter hook output priority -300; policy drop; }'"); err != nil {
				t.Fatalf("nft: %v %s", err, out)
			}
			l.waitHops(t, vip+"/32", without(all3, hop), timeout)
			ds = append(ds, time.Since(start))
			labtest.Eventually(t, timeout, node+"'s own session to "+peer+" down", func() error {
				if p := l.speakers[node].peer(t, peer); p.Established() {
					return fmt.Errorf("still established")
				}
				return nil
			})
			l.lab.Exec(node, "nft delete table inet blackhole")
			l.waitHops(t, vip+"/32", all3, 30*time.Second)
		}
		labtest.Report(t, what, ds)
	}
	t.Run("blackhole with BFD", func(t *testing.T) {
		before := l.speakers["d2"].peer(t, "10.0.2.0")
		blackhole(t, "d2", "10.0.2.0", "10.0.2.1", "blackholed director (nft drop) with BFD 100ms x3 -> next hop gone", 10*time.Second)
		// Each blackhole is one session that BFD took down.
		after := l.speakers["d2"].peer(t, "10.0.2.0")
		if n := uint64(labtest.MeasureRuns()); after.BFDFlaps-before.BFDFlaps != n || after.Flaps-before.Flaps != n {
			t.Errorf("after %d blackholes: flaps %d -> %d, BFD flaps %d -> %d", n, before.Flaps, after.Flaps, before.BFDFlaps, after.BFDFlaps)
		}
	})
	t.Run("blackhole without BFD", func(t *testing.T) {
		before := l.speakers["d3"].peer(t, "10.0.3.0")
		blackhole(t, "d3", "10.0.3.0", "10.0.3.1", "blackholed director (nft drop) without BFD, hold 3s -> next hop gone", 15*time.Second)
		// The hold timer, not BFD, took these down.
		after := l.speakers["d3"].peer(t, "10.0.3.0")
		if after.Flaps == before.Flaps || after.BFDFlaps != 0 {
			t.Errorf("without BFD: flaps %d -> %d, BFD flaps %d (want 0)", before.Flaps, after.Flaps, after.BFDFlaps)
		}
	})

	// The router restarting its side of the session (BIRD's "restart"):
	// one establishment, not a second reset by BFD (issue 17, item 2; the
	// FRR version of it is in TestLabFRR).
	t.Run("router's session restart costs one establishment", func(t *testing.T) {
		before := l.speakers["d1"].peer(t, "10.0.1.0")
		l.bird(t, "restart d1")
		l.waitHops(t, vip+"/32", all3, 30*time.Second)
		labtest.Eventually(t, 15*time.Second, "d1's session established with BFD up", func() error {
			if p := l.speakers["d1"].peer(t, "10.0.1.0"); p.BFD != "up" || !p.Established() {
				return fmt.Errorf("bgp %s, bfd %q", p.State, p.BFD)
			}
			return nil
		})
		time.Sleep(2 * time.Second) // let a second reset show
		if p := l.speakers["d1"].peer(t, "10.0.1.0"); p.Flaps != before.Flaps+1 || p.BFDFlaps != before.BFDFlaps || !p.Established() {
			t.Errorf("d1: %s, flaps %d -> %d, BFD flaps %d -> %d (want one loss, none by BFD)", p.State, before.Flaps, p.Flaps, before.BFDFlaps, p.BFDFlaps)
		}
	})

	// BFD turned off on the router (BIRD: "bfd off" and "birdc configure"):
	// BIRD 2.0.12 sends no AdminDown, it goes silent, so each director's
	// detection time expires. The neighbour's BGP keepalives still arrive,
	// so the path works: every session and next hop stays (one router
	// change must not take the VIP off every director at once). FRR's
	// AdminDown is in TestLabFRR.
	t.Run("router's BFD turned off keeps the sessions and routes", func(t *testing.T) {
		routers := map[string]string{"d1": "10.0.1.0", "d2": "10.0.2.0"}
		bfdUp := func(t *testing.T, what string) {
			labtest.Eventually(t, 15*time.Second, "BFD up on d1 and d2 "+what, func() error {
				for n, r := range routers {
					if p := l.speakers[n].peer(t, r); p.BFD != "up" {
						return fmt.Errorf("%s: bfd %q", n, p.BFD)
					}
				}
				return nil
			})
		}
		bfdUp(t, "before")
		before := map[string]routing.Peer{}
		for n, r := range routers {
			before[n] = l.speakers[n].peer(t, r)
		}
		conf, err := os.ReadFile("../../labs/ecmp3/router-bird.conf")
		if err != nil {
			t.Fatal(err)
		}
		off := strings.NewReplacer("source address 10.0.1.0; bfd on;", "source address 10.0.1.0; bfd off;",
			"source address 10.0.2.0; bfd on;", "source address 10.0.2.0; bfd off;").Replace(string(conf))
		offFile := filepath.Join(t.TempDir(), "bird-bfd-off.conf")
		if err := os.WriteFile(offFile, []byte(off), 0o644); err != nil {
			t.Fatal(err)
		}
		l.bird(t, `configure '"`+offFile+`"'`)
		t.Cleanup(func() { l.bird(t, `configure '"/etc/bird/bird.conf"'`) })
		// Watch the router's FIB past the keepalive window (hold 3 s: 2 s
		// after the expiry).
		var lost []string
		for end := time.Now().Add(4 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if h := l.hops(t, vip+"/32"); !slices.Equal(h, all3) {
				lost = append(lost, fmt.Sprintf("%s %v", time.Now().Format("15:04:05.000"), h))
			}
		}
		if len(lost) > 0 {
			t.Errorf("the route lost next hops after BIRD's BFD was turned off: %v", lost)
		}
		for n, r := range routers {
			p := l.speakers[n].peer(t, r)
			if p.Flaps != before[n].Flaps || p.BFDFlaps != before[n].BFDFlaps || !p.Established() {
				t.Errorf("%s: session %s, flaps %d -> %d, BFD flaps %d -> %d: a silent BFD took it down",
					n, p.State, before[n].Flaps, p.Flaps, before[n].BFDFlaps, p.BFDFlaps)
			}
			if p.BFD != "down" {
				t.Errorf("%s: bfd %q after the router's went silent", n, p.BFD)
			}
			if !strings.Contains(l.speakers[n].proc.Output(), "the neighbour's bgp messages still arrive: the bgp session stays up") {
				t.Errorf("%s: no log line saying why the session stays:\n%s", n, l.speakers[n].proc.Output())
			}
		}
		l.bird(t, `configure '"/etc/bird/bird.conf"'`)
		bfdUp(t, "again")
	})

	t.Run("MD5 mismatch keeps the session down with a clear log line", func(t *testing.T) {
		l.speakers["d3"].proc.Kill()
		l.waitHops(t, vip+"/32", without(all3, "10.0.3.1"), 10*time.Second)
		bad := l.startSpeaker(3, "not-the-lab-password")
		bad.do(t, "set "+vip+"/32")
		labtest.Eventually(t, 25*time.Second, "the speaker's hint about the MD5 password", func() error {
			if !strings.Contains(bad.proc.Output(), "TCP MD5 password is set") {
				return fmt.Errorf("no hint yet")
			}
			return nil
		})
		if hops := l.hops(t, vip+"/32"); slices.Contains(hops, "10.0.3.1") {
			t.Errorf("a session with the wrong MD5 password came up: %v", hops)
		}
		for _, line := range strings.Split(bad.proc.Output(), "\n") {
			if strings.Contains(line, "MD5") {
				t.Logf("speaker log: %s", line)
				break
			}
		}
		bad.proc.Kill()
		l.startSpeaker(3, "ecmp3-lab").do(t, "set "+vip+"/32,"+vip6+"/128")
		l.waitHops(t, vip+"/32", all3, 30*time.Second)
	})

	t.Run("shutdown withdraws", func(t *testing.T) {
		s := l.speakers["d1"]
		s.proc.Stdin.Close()
		if err := s.proc.Wait(); err != nil {
			t.Errorf("speaker exit: %v\n%s", err, s.proc.Output())
		}
		// Withdrawn before the process exited: the router needs no timer.
		l.waitHops(t, vip+"/32", without(all3, "10.0.1.1"), 2*time.Second)
		if !strings.Contains(s.proc.Output(), "bgp routes withdrawn on shutdown") {
			t.Errorf("shutdown log:\n%s", s.proc.Output())
		}
	})
}

// drain is what a director does when drained, for the helper speaker:
// announce with GRACEFUL_SHUTDOWN for hold, so that the router moves
// traffic away while the routes still work, then withdraw everything
// (early, after withdrawing, if ctx ends). The daemon does this through
// director.Plan's graceful-shutdown rule.
func drain(ctx context.Context, a routing.Announcer, anns []routing.Announcement, hold time.Duration) error {
	if hold > 0 && len(anns) > 0 {
		gshut := make([]routing.Announcement, len(anns))
		for i, x := range anns {
			x.GracefulShutdown = true
			gshut[i] = x
		}
		if err := a.Set(ctx, gshut); err != nil {
			return err
		}
		t := time.NewTimer(hold)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	return a.Set(context.WithoutCancel(ctx), nil)
}
