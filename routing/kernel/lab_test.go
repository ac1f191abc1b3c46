package kernel

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/labs/clab"
	"github.com/anycastd/anycastd/labs/labtest"
)

func TestMain(m *testing.M) {
	labtest.HelperMain(map[string]func([]string) error{"announcer": announcerHelper})
	os.Exit(m.Run())
}

// announcerHelper runs an Announcer from a config file as a
// labtest.AnnouncerHelper (set, none, status).
func announcerHelper(args []string) error {
	cfg, err := configs.Load(args[0])
	if err != nil {
		return err
	}
	a := New(cfg.Routing.Kernel, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	return labtest.AnnouncerHelper{Announcer: a}.Serve()
}

const vip = "198.51.100.20"

type ospfLab struct {
	t    *testing.T
	lab  *clab.Lab
	self string
	anns map[string]*clab.Process
}

func deployOSPF(t *testing.T) *ospfLab {
	labtest.Require(t)
	topo, err := clab.Load(filepath.Join(labtest.RepoRoot(), "labs", "ospf.clab.yml"))
	if err != nil {
		t.Fatal(err)
	}
	lab, err := clab.Deploy(topo)
	if err != nil {
		t.Fatal(err)
	}
	self, _ := os.Executable()
	l := &ospfLab{t: t, lab: lab, self: self, anns: map[string]*clab.Process{}}
	t.Cleanup(func() {
		if t.Failed() {
			l.diagnose()
		}
		lab.Destroy()
	})
	return l
}

// diagnose logs what an operator would look at: each node's OSPF state
// and routes, the directors' table 100 and lo, and the announcers' logs.
func (l *ospfLab) diagnose() {
	for _, node := range []string{"router", "d1", "d2", "d3"} {
		for _, cmd := range []string{"show protocols", "show ospf neighbors", "show route"} {
			out, _ := l.lab.Exec(node, fmt.Sprintf("birdc -s /run/bird-ospf-%s.ctl %s", node, cmd))
			l.t.Logf("%s: birdc %s:\n%s", node, cmd, out)
		}
	}
	for _, node := range []string{"d1", "d2", "d3"} {
		out, _ := l.lab.Exec(node, "ip route show table 100; ip addr show dev lo")
		l.t.Logf("%s: table 100 and lo:\n%s", node, out)
	}
	out, _ := l.lab.Exec("router", "ip route")
	l.t.Logf("router: ip route:\n%s", out)
	for node, p := range l.anns {
		l.t.Logf("announcer %s output:\n%s", node, p.Output())
	}
}

// start runs an announcer in node with kernel settings given as YAML flow.
func (l *ospfLab) start(node, kernel string) *clab.Process {
	l.t.Helper()
	doc := fmt.Sprintf("node: {name: %s}\ncluster: {insecure: true}\nrouting: {mode: kernel, kernel: %s}\n", node, kernel)
	path := filepath.Join(l.t.TempDir(), node+".yaml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		l.t.Fatal(err)
	}
	p, err := l.lab.Start(node, "env", labtest.HelperEnv+"=announcer", l.self, path)
	if err != nil {
		l.t.Fatal(err)
	}
	l.anns[node] = p
	return p
}

func (l *ospfLab) do(t *testing.T, node, cmd string) {
	t.Helper()
	line, err := l.anns[node].Ask(cmd, 30*time.Second)
	if err != nil || line != "ok" {
		t.Fatalf("announcer %s: %s: %q %v\n%s", node, cmd, line, err, l.anns[node].Output())
	}
}

// waitHops waits until the router's route for VIP goes exactly over want
// (none: no route) and says how long that took.
func (l *ospfLab) waitHops(t *testing.T, want []string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	labtest.Eventually(t, timeout, fmt.Sprintf("router's next hops for %s to be %v", vip, want), func() error {
		nh, err := l.lab.NextHops("router", netip.MustParsePrefix(vip+"/32"))
		if err != nil {
			return err
		}
		var got []string
		for _, a := range nh {
			got = append(got, a.String())
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			return fmt.Errorf("next hops %v", got)
		}
		return nil
	})
	return time.Since(start)
}

func without(hops []string, h string) []string {
	return slices.DeleteFunc(slices.Clone(hops), func(x string) bool { return x == h })
}

// TestLabKernelOSPF is the LVS-ospf setup: BIRD's OSPF on each director
// redistributes what the kernel announcer puts in table 100 (d1, d2) or
// on lo (d3), and the upstream router keeps an ECMP route over those that
// announce.
func TestLabKernelOSPF(t *testing.T) {
	l := deployOSPF(t)
	all3 := []string{"10.0.1.1", "10.0.2.1", "10.0.3.1"}
	table := "{table: 100}"
	l.start("d1", table)
	l.start("d2", table)
	l.start("d3", "{interface: lo}")
	// A route and an address that are not ours, which must stay.
	for _, cmd := range []string{
		"ip route add 203.0.113.1/32 dev lo table 100",
		"ip addr add 203.0.113.2/32 dev lo",
	} {
		if out, err := l.lab.Exec("d1", cmd); err != nil {
			t.Fatalf("%s: %v %s", cmd, err, out)
		}
	}
	if out, err := l.lab.Exec("d3", "ip addr add 203.0.113.3/32 dev lo"); err != nil {
		t.Fatalf("%v %s", err, out)
	}

	t.Run("announce from all three gives a 3-way ECMP route", func(t *testing.T) {
		for _, d := range []string{"d1", "d2", "d3"} {
			l.do(t, d, "set "+vip+"/32")
		}
		// OSPF adjacencies come up with the lab (hello 1, dead 3).
		d := l.waitHops(t, all3, 60*time.Second)
		t.Logf("first ECMP route after %v", d.Round(time.Millisecond))
		out, _ := l.lab.Exec("d1", "ip route show table 100 proto 250")
		if !strings.Contains(out, vip+" dev lo") {
			t.Errorf("d1's table 100 lacks the VIP route:\n%s", out)
		}
		out, _ = l.lab.Exec("d3", "ip -4 addr show dev lo")
		if !strings.Contains(out, vip+"/32") || !strings.Contains(out, "lo:vip") {
			t.Errorf("d3's lo lacks the labelled VIP:\n%s", out)
		}
		line, err := l.anns["d1"].Ask("status", 10*time.Second)
		if err != nil || !strings.Contains(line, vip+"/32") || !strings.Contains(line, `"kernel"`) {
			t.Errorf("d1 status: %q %v", line, err)
		}
	})

	t.Run("withdraw in table mode removes that next hop only", func(t *testing.T) {
		var down, up []time.Duration
		for range labtest.MeasureRuns() {
			l.do(t, "d2", "none")
			down = append(down, l.waitHops(t, without(all3, "10.0.2.1"), 30*time.Second))
			l.do(t, "d2", "set "+vip+"/32")
			up = append(up, l.waitHops(t, all3, 30*time.Second))
		}
		labtest.Report(t, "OSPF table mode: withdraw -> next hop gone from the router's FIB", down)
		labtest.Report(t, "OSPF table mode: announce -> next hop in the router's FIB", up)
	})

	t.Run("withdraw in interface mode removes that next hop only", func(t *testing.T) {
		var down, up []time.Duration
		for range labtest.MeasureRuns() {
			l.do(t, "d3", "none")
			down = append(down, l.waitHops(t, without(all3, "10.0.3.1"), 30*time.Second))
			out, _ := l.lab.Exec("d3", "ip -4 addr show dev lo")
			if strings.Contains(out, vip) {
				t.Errorf("VIP still on d3's lo:\n%s", out)
			}
			if !strings.Contains(out, "203.0.113.3/32") {
				t.Errorf("d3's own address on lo was removed:\n%s", out)
			}
			l.do(t, "d3", "set "+vip+"/32")
			up = append(up, l.waitHops(t, all3, 30*time.Second))
		}
		labtest.Report(t, "OSPF interface mode: withdraw -> next hop gone from the router's FIB", down)
		labtest.Report(t, "OSPF interface mode: announce -> next hop in the router's FIB", up)
	})

	t.Run("a killed announcer leaves its route; the next one adopts and withdraws it", func(t *testing.T) {
		l.anns["d1"].Kill()
		// The kernel keeps the route (as it keeps IPVS): traffic goes on.
		time.Sleep(2 * time.Second)
		if got := l.hopsNow(t); !slices.Equal(got, all3) {
			t.Errorf("after SIGKILL the route must stay, have %v", got)
		}
		l.start("d1", table)
		l.do(t, "d1", "none")
		l.waitHops(t, without(all3, "10.0.1.1"), 30*time.Second)
		out, _ := l.lab.Exec("d1", "ip route show table 100; ip -4 addr show dev lo")
		if !strings.Contains(out, "203.0.113.1 dev lo") || !strings.Contains(out, "203.0.113.2/32") {
			t.Errorf("a route or address that is not anycastd's was removed:\n%s", out)
		}
		l.do(t, "d1", "set "+vip+"/32")
		l.waitHops(t, all3, 30*time.Second)
	})

	t.Run("shutdown withdraws", func(t *testing.T) {
		for _, d := range []string{"d1", "d2", "d3"} {
			p := l.anns[d]
			if err := p.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if err := p.Wait(); err != nil {
				t.Errorf("%s: %v\n%s", d, err, p.Output())
			}
		}
		l.waitHops(t, nil, 30*time.Second)
	})
}

func (l *ospfLab) hopsNow(t *testing.T) []string {
	nh, err := l.lab.NextHops("router", netip.MustParsePrefix(vip+"/32"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range nh {
		got = append(got, a.String())
	}
	slices.Sort(got)
	return got
}
