// Package e2e runs the end-to-end labs: whole topologies of anycastd
// directors, an upstream router and real servers, driven as an operator
// would drive them (anyctl, signals, a failing link).
package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anycastd/anycastd/api"
	"github.com/anycastd/anycastd/labs/clab"
	"github.com/anycastd/anycastd/labs/labtest"
)

// VIP is the lab's service address.
const VIP = "198.51.100.10"

// Directors is the number of directors in ecmp8.
const Directors = 10

// ECMP8 is a deployed ecmp8 lab with its directors running.
type ECMP8 struct {
	T   testing.TB
	Lab *clab.Lab
	Bin string
}

// stateRoot holds the directors' state, logs and API sockets, as the
// topology's director configs (labs/ecmp8/dN.yaml) say.
const stateRoot = "/var/lib/anycastd-lab/ecmp8"

// DeployECMP8 builds the topology; its exec commands prepare the real
// servers and start anycastd on every director (this build, first on the
// PATH). Everything is torn down when the test ends.
func DeployECMP8(t testing.TB) *ECMP8 {
	t.Helper()
	labtest.Require(t)
	bin := labtest.Binaries(t)
	for _, p := range []string{"bird", "nginx"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s is not installed (labs/install-deps.sh installs it)", p)
		}
	}
	topo, err := clab.Load(filepath.Join(labtest.RepoRoot(), "labs", "ecmp8.clab.yml"))
	if err != nil {
		t.Fatal(err)
	}
	// A clean slate: no state (drain flags, documents) from an earlier run.
	os.RemoveAll(stateRoot)
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	lab, err := clab.Deploy(topo)
	if err != nil {
		t.Fatal(err)
	}
	e := &ECMP8{T: t, Lab: lab, Bin: bin}
	t.Cleanup(func() {
		if t.Failed() {
			e.Diagnose()
		}
		lab.Destroy()
		os.RemoveAll(stateRoot)
		os.Remove(filepath.Dir(stateRoot)) // if empty
		// What the lab's daemons leave on the host's file system: nginx's
		// pid files (it was killed, not stopped) and, unless the test
		// failed and they are evidence, the logs.
		for r := 1; r <= 4; r++ {
			os.Remove(fmt.Sprintf("/run/ecmp8-rs%d-nginx.pid", r))
			if !t.Failed() {
				os.Remove(fmt.Sprintf("/tmp/ecmp8-rs%d-nginx.log", r))
			}
		}
		if !t.Failed() {
			os.Remove("/tmp/bird-ecmp8-router.log")
		}
	})
	return e
}

func node(i int) string { return fmt.Sprintf("d%d", i) }

// Start starts director i's anycastd again, as the topology's exec does.
func (e *ECMP8) Start(i int) {
	e.T.Helper()
	ex := e.Lab.Topo.Topology.Nodes[node(i)].Exec
	if out, err := e.Lab.Exec(node(i), ex[len(ex)-1]); err != nil {
		e.T.Fatalf("start anycastd on d%d: %v %s", i, err, out)
	}
}

// pid is director i's anycastd process (0 if none).
func (e *ECMP8) pid(i int) int {
	out, _ := exec.Command("ip", "netns", "pids", e.Lab.Topo.Netns(node(i))).Output()
	for _, f := range strings.Fields(string(out)) {
		comm, _ := os.ReadFile("/proc/" + f + "/comm")
		if strings.TrimSpace(string(comm)) == "anycastd" {
			var p int
			fmt.Sscan(f, &p)
			return p
		}
	}
	return 0
}

// Signal sends sig to director i's anycastd.
func (e *ECMP8) Signal(i int, sig syscall.Signal) {
	if p := e.pid(i); p > 0 {
		syscall.Kill(p, sig)
	}
}

// Gone waits until director i's anycastd has exited.
func (e *ECMP8) Gone(i int, timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if e.pid(i) == 0 {
			return true
		}
	}
	return false
}

// Log is director i's log so far.
func (e *ECMP8) Log(i int) string {
	b, _ := os.ReadFile(filepath.Join(stateRoot, node(i), "anycastd.log"))
	return string(b)
}

// Socket is director i's API socket.
func (e *ECMP8) Socket(i int) string { return filepath.Join(stateRoot, node(i), "api.sock") }

// FailFile is the file whose existence fails director i's self check.
func (e *ECMP8) FailFile(i int) string { return filepath.Join(stateRoot, node(i), "fail") }

// Anyctl runs anyctl against director i.
func (e *ECMP8) Anyctl(i int, args ...string) (string, error) {
	out, err := exec.Command(filepath.Join(e.Bin, "anyctl"), append(args, "--socket", e.Socket(i))...).CombinedOutput()
	return string(out), err
}

// JSON runs a read command with -o json against director i.
func (e *ECMP8) JSON(i int, v any, args ...string) error {
	out, err := exec.Command(filepath.Join(e.Bin, "anyctl"), append(args, "-o", "json", "--socket", e.Socket(i))...).Output()
	if len(out) == 0 && err != nil {
		return err
	}
	return json.Unmarshal(out, v)
}

// HopAddr is director i's address as the router's next hop.
func HopAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, byte(i), 1}) }

// WatchHops records the router's changes to the VIP's route as the
// kernel announces them, until the test ends.
func (e *ECMP8) WatchHops() *clab.RouteWatch {
	e.T.Helper()
	w, err := e.Lab.WatchRoute("router", netip.MustParsePrefix(VIP+"/32"))
	if err != nil {
		e.T.Fatal(err)
	}
	e.T.Cleanup(w.Stop)
	return w
}

// Hops are the router's next hops for the VIP, as director numbers.
func (e *ECMP8) Hops() ([]int, error) {
	nh, err := e.Lab.NextHops("router", netip.MustParsePrefix(VIP+"/32"))
	if err != nil {
		return nil, err
	}
	var out []int
	for _, a := range nh {
		b := a.As4()
		out = append(out, int(b[2]))
	}
	slices.Sort(out)
	return out, nil
}

// ExpectHops waits until the router's next hops are exactly want and
// returns how long that took.
func (e *ECMP8) ExpectHops(timeout time.Duration, what string, want ...int) time.Duration {
	e.T.Helper()
	slices.Sort(want)
	start := time.Now()
	labtest.Eventually(e.T, timeout, what, func() error {
		got, err := e.Hops()
		if err != nil {
			return err
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("next hops via d%v, want d%v", got, want)
		}
		return nil
	})
	return time.Since(start)
}

// Announcing waits until exactly the directors in want announce the VIP,
// by their own account (the router's FIB alone cannot tell: with more
// than 8 routes it still shows 8 next hops).
func (e *ECMP8) Announcing(timeout time.Duration, what string, want ...int) {
	e.T.Helper()
	slices.Sort(want)
	labtest.Eventually(e.T, timeout, what, func() error {
		var got []int
		for i := 1; i <= Directors; i++ {
			var st api.StatusResponse
			if err := e.JSON(i, &st, "status"); err != nil {
				continue // not running
			}
			for _, v := range st.VIPs {
				if v.Announced {
					got = append(got, i)
				}
			}
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("d%v announce, want d%v", got, want)
		}
		return nil
	})
}

// Kill sends SIGKILL to director i's anycastd and waits for it to go.
func (e *ECMP8) Kill(i int) {
	e.Signal(i, syscall.SIGKILL)
	if !e.Gone(i, 10*time.Second) {
		e.T.Fatalf("d%d's anycastd survived SIGKILL", i)
	}
}

// Diagnose logs what an operator would look at.
func (e *ECMP8) Diagnose() {
	out, _ := e.Lab.Exec("router", "birdc -s /run/bird-ecmp8-router.ctl show protocols; ip route show "+VIP)
	e.T.Logf("router:\n%s", out)
	if out, err := e.Anyctl(1, "members"); err == nil || out != "" {
		e.T.Logf("anyctl members on d1:\n%s", out)
	}
	for i := 1; i <= Directors; i++ {
		o := e.Log(i)
		if len(o) > 2500 {
			o = o[len(o)-2500:]
		}
		e.T.Logf("d%d log (tail):\n%s", i, o)
	}
}

// Members is director i's view: name -> role, alive members only.
func (e *ECMP8) Members(i int) (map[string]string, error) {
	var mr api.MembersResponse
	if err := e.JSON(i, &mr, "members"); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, m := range mr.Members {
		if m.State == "alive" {
			out[m.Name] = m.Role
		}
	}
	return out, nil
}

// Roles counts roles in a view.
func Roles(v map[string]string) (active, standby []string) {
	for n, r := range v {
		switch r {
		case "active":
			active = append(active, n)
		case "standby":
			standby = append(standby, n)
		}
	}
	slices.Sort(active)
	slices.Sort(standby)
	return
}

// Spread sends n TCP connection attempts from the client to the VIP, each
// from its own source port, and returns how many reached each director
// (counted by nft on the directors' uplinks). With the memory dataplane a
// director does not answer: this shows the router's ECMP, not balancing.
func (e *ECMP8) Spread(n int) (map[int]int, error) {
	for i := 1; i <= Directors; i++ {
		rules := fmt.Sprintf("table inet ecmp8_count { chain in { type filter hook prerouting priority -300; policy accept; ip daddr %s tcp dport 80 tcp flags syn counter; }; }", VIP)
		e.Lab.Exec(fmt.Sprintf("d%d", i), "nft delete table inet ecmp8_count 2>/dev/null; nft '"+rules+"'")
	}
	// curl from n source ports: the router hashes on ports.
	script := fmt.Sprintf("for p in $(seq 40001 %d); do curl -s -o /dev/null --max-time 0.2 --local-port $p http://%s/ & done; wait", 40000+n, VIP)
	e.Lab.Exec("client", script)
	out := map[int]int{}
	for i := 1; i <= Directors; i++ {
		o, err := e.Lab.Exec(fmt.Sprintf("d%d", i), "nft list table inet ecmp8_count")
		if err != nil {
			return nil, fmt.Errorf("d%d: %v: %s", i, err, o)
		}
		var pk int
		if _, after, ok := strings.Cut(o, "counter packets "); ok {
			fmt.Sscan(after, &pk)
		}
		if pk > 0 {
			out[i] = pk
		}
	}
	return out, nil
}
