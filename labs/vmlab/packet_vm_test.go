package vmlab

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anycastd/anycastd/ipvs"
	"github.com/anycastd/anycastd/labs/labtest"
)

const vip = "198.51.100.10"

// drLab is a layer-2 segment (a bridge in its own namespace) with a client,
// two directors and two real servers, as an LVS-DR handbook draws it:
//
//	client 10.0.0.1 (+ sources 10.0.0.100-219) --+
//	director d1 10.0.0.2, d2 10.0.0.3  ----------+-- br0
//	real servers rs1..rs3 10.0.0.11-13  ---------+
//
// The client routes the VIP via one director; the real servers hold the
// VIP on their loopback and answer the client directly.
type drLab struct {
	t       *testing.T
	self    string
	anyctl  string
	ns      map[string]*labtest.Netns
	kernels map[string]*ipvs.Kernel
	sources []string
}

func newDRLab(t *testing.T) *drLab {
	labtest.RequireVM(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	l := &drLab{t: t, self: self, anyctl: filepath.Join(labtest.Binaries(t), "anyctl"),
		ns: map[string]*labtest.Netns{}, kernels: map[string]*ipvs.Kernel{}}
	sw := labtest.NewNetns(t, "sw")
	sw.Run("ip", "link", "add", "br0", "type", "bridge")
	sw.Run("ip", "link", "set", "br0", "up")
	addrs := map[string]string{"cl": "10.0.0.1", "d1": "10.0.0.2", "d2": "10.0.0.3", "rs1": "10.0.0.11", "rs2": "10.0.0.12", "rs3": "10.0.0.13"}
	for _, name := range []string{"cl", "d1", "d2", "rs1", "rs2", "rs3"} {
		n := labtest.NewNetns(t, name)
		l.ns[name] = n
		sw.Run("ip", "link", "add", "p-"+name, "type", "veth", "peer", "name", "eth0", "netns", n.Name)
		sw.Run("ip", "link", "set", "p-"+name, "master", "br0", "up")
		n.Run("ip", "addr", "add", addrs[name]+"/24", "dev", "eth0")
		n.Run("ip", "link", "set", "eth0", "up")
	}
	for i := range 120 {
		src := fmt.Sprintf("10.0.0.%d", 100+i)
		l.ns["cl"].Run("ip", "addr", "add", src+"/24", "dev", "eth0")
		l.sources = append(l.sources, src)
	}
	l.route("d1")
	for _, d := range []string{"d1", "d2"} {
		out := l.helper(d, "director", filepath.Join(t.TempDir(), d+"-host.json"), vip)
		t.Logf("%s host settings:\n%s", d, out)
		k, err := ipvs.OpenKernel("/run/netns/" + l.ns[d].Name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { k.Close() })
		l.kernels[d] = k
	}
	for _, rs := range []string{"rs1", "rs2", "rs3"} {
		out := l.ns[rs].Run(l.anyctl, "realserver", "--state-dir", t.TempDir(), "up", "--vip", vip)
		t.Logf("%s: anyctl realserver up:\n%s", rs, out)
		l.start(rs, "serve", rs, "0.0.0.0:80")
	}
	return l
}

// route sends the client's VIP traffic through director d.
func (l *drLab) route(d string) {
	gw := map[string]string{"d1": "10.0.0.2", "d2": "10.0.0.3"}[d]
	l.ns["cl"].Run("ip", "route", "replace", vip+"/32", "via", gw)
}

func (l *drLab) helperCmd(ns string, args ...string) *exec.Cmd {
	cmd := exec.Command("ip", append([]string{"netns", "exec", l.ns[ns].Name, l.self}, args[1:]...)...)
	cmd.Env = append(os.Environ(), labtest.HelperEnv+"="+args[0])
	return cmd
}

// helper runs a helper to completion inside a namespace.
func (l *drLab) helper(ns string, args ...string) string {
	l.t.Helper()
	out, err := l.helperCmd(ns, args...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("helper %v in %s: %v\n%s", args, ns, err, out)
	}
	return string(out)
}

// held is a running hold helper (labtest.HelperMain): connections kept
// open from the client, checked on demand.
type held struct {
	// Ready are the fields of its ready line after "ready": the local
	// ports, and the servers when it was given sources.
	Ready []string
	in    io.WriteCloser
	out   *bufio.Reader
	stop  func()
}

// Stop closes the connections and waits for the helper to end.
func (h *held) Stop() { h.stop() }

// Check asks every held connection to echo and returns the answer
// ("ok K/N", with "failed:SERVER,..." when given sources).
func (h *held) Check() string {
	io.WriteString(h.in, "ping\n")
	line, _ := h.out.ReadString('\n')
	return strings.TrimSpace(line)
}

// hold starts the hold helper in ns (args: TARGET N [SRC,...]) and waits
// for its connections; it is stopped when t ends.
func (l *drLab) hold(t testing.TB, ns string, args ...string) *held {
	t.Helper()
	cmd := l.helperCmd(ns, append([]string{"hold"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	h := &held{in: stdin, out: bufio.NewReader(stdout), stop: func() { once.Do(func() { stdin.Close(); cmd.Wait() }) }}
	t.Cleanup(h.Stop)
	line, err := h.out.ReadString('\n')
	f := strings.Fields(line)
	if err != nil || len(f) < 2 || f[0] != "ready" {
		cmd.Wait()
		t.Fatalf("hold: %q %v; its stderr: %s", line, err, stderr.String())
	}
	h.Ready = f[1:]
	return h
}

// start runs a long-lived helper; it dies with its namespace.
func (l *drLab) start(ns string, args ...string) {
	l.t.Helper()
	cmd := l.helperCmd(ns, args...)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "listening\n" {
		l.t.Fatalf("helper %v did not start: %q %v", args, line, err)
	}
}

func (l *drLab) program(d string, s ipvs.Service) {
	l.t.Helper()
	k := l.kernels[d]
	have, err := k.Table(context.Background())
	if err != nil {
		l.t.Fatal(err)
	}
	if err := k.Apply(context.Background(), ipvs.Diff(have, ipvs.Table{Services: []ipvs.Service{s}})); err != nil {
		l.t.Fatal(err)
	}
}

// connect makes n connections from the client, round robin over srcs, and
// returns the real server each source got and the count per server.
func (l *drLab) connect(n int, srcs []string) (map[string]string, map[string]int) {
	l.t.Helper()
	out := l.helper("cl", "connect", vip+":80", fmt.Sprint(n), strings.Join(srcs, ","))
	bySrc, counts := map[string]string{}, map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		bySrc[f[0]] = f[1]
		counts[f[1]]++
	}
	return bySrc, counts
}

func service(sched string, order ...string) ipvs.Service {
	a := netip.MustParseAddr(vip)
	s := ipvs.Service{ServiceKey: ipvs.ServiceKey{Family: ipvs.IPv4, Protocol: ipvs.TCP, Addr: a, Port: 80}, Scheduler: sched}
	for _, rs := range order {
		s.Destinations = append(s.Destinations, ipvs.Destination{
			DestKey: ipvs.DestKey{Addr: netip.MustParseAddr(rs), Port: 80}, Weight: 1, Forward: ipvs.DR})
	}
	return s
}

// TestVMPacketPathDR: rr and mh through a real IPVS director in DR mode;
// the replies bypass the director; mh picks the same real server from two
// directors that hold the same table.
func TestVMPacketPathDR(t *testing.T) {
	l := newDRLab(t)
	rs1, rs2, rs3 := "10.0.0.11", "10.0.0.12", "10.0.0.13"

	t.Run("rr", func(t *testing.T) {
		l.program("d1", service("rr", rs1, rs2, rs3))
		_, counts := l.connect(99, []string{"10.0.0.1"})
		t.Logf("rr, 99 connections via d1: %v", counts)
		if counts["ERROR"] > 0 || counts["rs1"]+counts["rs2"]+counts["rs3"] != 99 {
			t.Fatalf("failed connections: %v", counts)
		}
		// rr takes turns: 33 each, give or take the odd entry a late
		// packet of a closed connection creates (and schedules) under
		// sloppy_tcp.
		for _, rs := range []string{"rs1", "rs2", "rs3"} {
			if c := counts[rs]; c < 30 || c > 36 {
				t.Errorf("rr should take turns: %v", counts)
			}
		}
		// The kernel folds its per-CPU counters into the exported stats
		// on a timer (every 2 s): poll.
		var st ipvs.Stats
		labtest.Eventually(t, 15*time.Second, "d1's IPVS counters to show the client's packets", func() error {
			tb, err := l.kernels["d1"].Table(context.Background())
			if err != nil {
				return err
			}
			// Both counters: a fold can land between them (CI saw
			// 463 packets and 93 connections counted, 99 a moment
			// later).
			if st = tb.Services[0].Stats; st.InPkts < 4*99 || st.Conns < 97 {
				return fmt.Errorf("%d packets in, %d connections", st.InPkts, st.Conns)
			}
			return nil
		})
		t.Logf("d1 IPVS counters: %d conns, %d packets in, %d packets out", st.Conns, st.InPkts, st.OutPkts)
		// A client port the client reuses while its old entry lingers
		// takes that entry over without a new count (seen once: 98).
		if st.Conns < 97 || st.OutPkts != 0 {
			t.Errorf("DR: the director must count the 99 connections (%d) and see none of the replies (out %d packets)", st.Conns, st.OutPkts)
		}
	})

	t.Run("mh same server from two directors", func(t *testing.T) {
		l.program("d1", service("mh", rs1, rs2, rs3))
		l.program("d2", service("mh", rs1, rs2, rs3))
		l.route("d1")
		via1, counts := l.connect(len(l.sources), l.sources)
		t.Logf("mh, %d client addresses via d1: %v", len(l.sources), counts)
		if counts["ERROR"] > 0 || counts["rs1"] == 0 || counts["rs2"] == 0 || counts["rs3"] == 0 {
			t.Fatalf("mh should spread %d sources over all servers without errors: %v", len(l.sources), counts)
		}
		l.route("d2")
		via2, _ := l.connect(len(l.sources), l.sources)
		same := 0
		for _, s := range l.sources {
			if via1[s] == via2[s] && via1[s] != "ERROR" {
				same++
			}
		}
		t.Logf("mh: %d of %d sources reached the same real server via d1 and via d2", same, len(l.sources))
		if same != len(l.sources) {
			t.Errorf("two directors with the same table disagree for %d sources", len(l.sources)-same)
		}

		// The same destinations inserted in the other order: mh fills its
		// table by walking the destination list, so contested slots can
		// go to another server (a simulation of the kernel's algorithm
		// gives 0.1-0.8% of slots for 2-8 servers). Informational: the
		// sample is too small to see it reliably; Diff keeps the order.
		l.program("d2", service("mh"))
		l.program("d2", service("mh", rs3, rs2, rs1))
		via2r, _ := l.connect(len(l.sources), l.sources)
		diff := 0
		for _, s := range l.sources {
			if via1[s] != via2r[s] {
				diff++
			}
		}
		t.Logf("mh with the destinations inserted in the reverse order on d2: %d of %d sources moved", diff, len(l.sources))
		l.route("d1")
	})

	t.Run("weight change keeps connections", func(t *testing.T) {
		l.program("d1", service("rr", rs1, rs2))
		hold := l.hold(t, "cl", vip+":80", "20")
		held := strings.Split(hold.Ready[0], ",")
		before := established(t, l.ns["d1"], "10.0.0.1", held)
		s := service("rr", rs1, rs2)
		s.Destinations[0].Weight = 5
		s.Destinations[1].Weight = 0
		k := l.kernels["d1"]
		have, _ := k.Table(context.Background())
		p := ipvs.Diff(have, ipvs.Table{Services: []ipvs.Service{s}})
		if len(p) != 2 {
			t.Fatalf("two weight changes should be two edits:\n%s", p)
		}
		if err := k.Apply(context.Background(), p); err != nil {
			t.Fatal(err)
		}
		after := established(t, l.ns["d1"], "10.0.0.1", held)
		t.Logf("ESTABLISHED entries of the 20 held connections in /proc/net/ip_vs_conn: %d before the weight change, %d after", before, after)
		if before != 20 || after != 20 {
			t.Errorf("connection entries of the held connections: %d before, %d after, want 20 and 20", before, after)
		}
		if line := hold.Check(); line != "ok 20/20" {
			t.Errorf("held connections after the weight change: %q", line)
		}
	})
}

// established counts the ESTABLISHED entries in ns's /proc/net/ip_vs_conn
// from client address src and one of ports. (Other entries come and go:
// with sloppy_tcp a late packet of a closed connection makes a new one.)
func established(t *testing.T, ns *labtest.Netns, src string, ports []string) int {
	t.Helper()
	a := netip.MustParseAddr(src).As4()
	srcHex := fmt.Sprintf("%02X%02X%02X%02X", a[0], a[1], a[2], a[3])
	want := map[string]bool{}
	for _, p := range ports {
		var n int
		fmt.Sscan(p, &n)
		want[fmt.Sprintf("%04X", n)] = true
	}
	var count int
	// Pro FromIP FPrt ToIP TPrt DestIP DPrt State Expires PEName PEData
	for _, line := range strings.Split(ns.Run("cat", "/proc/net/ip_vs_conn"), "\n") {
		f := strings.Fields(line)
		if len(f) >= 8 && f[1] == srcHex && want[f[2]] && f[7] == "ESTABLISHED" {
			count++
		}
	}
	return count
}
