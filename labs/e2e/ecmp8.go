// Package e2e runs the end-to-end labs: whole topologies of anycastd
// directors, an upstream router and real servers, driven as an operator
// would drive them (anyctl, signals, a failing link).
package e2e

import (
	"crypto/rand"
	"encoding/base64"
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

	"github.com/anycastd/anycastd/director"
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
	Dir string
	Key string
	D   map[int]*clab.Process
}

// DeployECMP8 builds the topology, prepares the real servers and starts
// anycastd on every director. Everything is torn down when the test ends.
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
	lab, err := clab.Deploy(topo)
	if err != nil {
		t.Fatal(err)
	}
	k := make([]byte, 32)
	rand.Read(k)
	e := &ECMP8{T: t, Lab: lab, Bin: bin, Dir: t.TempDir(), Key: base64.StdEncoding.EncodeToString(k), D: map[int]*clab.Process{}}
	t.Cleanup(func() {
		if t.Failed() {
			e.Diagnose()
		}
		lab.Destroy()
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
	for r := 1; r <= 4; r++ {
		node := fmt.Sprintf("rs%d", r)
		out, err := lab.Exec(node, fmt.Sprintf("%s/anyctl realserver up --vip %s --state-dir %s", bin, VIP, filepath.Join(e.Dir, node)))
		if err != nil {
			t.Fatalf("%s: realserver up: %v\n%s", node, err, out)
		}
	}
	for i := 1; i <= Directors; i++ {
		e.Start(i)
	}
	return e
}

// Config writes director i's config and returns its path.
func (e *ECMP8) Config(i int) string {
	prio := 100
	if i > 8 {
		prio = 200
	}
	dir := filepath.Join(e.Dir, fmt.Sprintf("d%d", i))
	os.MkdirAll(dir, 0o700)
	doc := fmt.Sprintf(`node: {name: d%[1]d, addresses: [10.0.%[1]d.1], state_dir: %[2]s/state, dataplane: memory}
cluster: {bind: 10.1.0.%[1]d, port: 7946, seeds: [10.1.0.1, 10.1.0.2], keys: [%[3]q], max_active: 8, priority: %[4]d}
routing:
  mode: bgp
  bgp:
    asn: 65001
    router_id: 10.0.%[1]d.1
    listen_port: -1
    graceful_shutdown: 2s
    communities: ["65001:100"]
    neighbors:
      - {address: 10.0.%[1]d.0, asn: 65000, password: ecmp8-lab, hold_time: 3s, keepalive: 1s, connect_retry: 1s,
         bfd: {enabled: true, min_tx: 100ms, min_rx: 100ms, multiplier: 3}}
api: {socket: %[2]s/api.sock}
health:
  interval: 500ms
  timeout: 400ms
  rise: 1
  fall: 2
  self:
    uplink: eth1
    checks:
      - {name: maintenance-file, type: exec, command: [sh, -c, "test ! -e %[2]s/fail"], interval: 300ms, timeout: 250ms, rise: 1, fall: 1}
services:
  - name: web
    vip: %[5]s
    port: 80
    scheduler: mh
    quorum: 2
    backends: [{address: 10.1.0.11}, {address: 10.1.0.12}, {address: 10.1.0.13}, {address: 10.1.0.14}]
    health: {type: http, path: /}
`, i, dir, e.Key, prio, VIP)
	path := filepath.Join(dir, "anycastd.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		e.T.Fatal(err)
	}
	return path
}

// Start runs anycastd on director i.
func (e *ECMP8) Start(i int) {
	e.T.Helper()
	p, err := e.Lab.Start(fmt.Sprintf("d%d", i), filepath.Join(e.Bin, "anycastd"), "-c", e.Config(i), "--log-format", "json")
	if err != nil {
		e.T.Fatal(err)
	}
	e.D[i] = p
}

// Socket is director i's API socket.
func (e *ECMP8) Socket(i int) string { return filepath.Join(e.Dir, fmt.Sprintf("d%d", i), "api.sock") }

// FailFile is the file whose existence fails director i's self check.
func (e *ECMP8) FailFile(i int) string { return filepath.Join(e.Dir, fmt.Sprintf("d%d", i), "fail") }

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
			var st director.StatusResponse
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

// Kill sends SIGKILL to director i's anycastd.
func (e *ECMP8) Kill(i int) {
	e.D[i].Signal(syscall.SIGKILL)
	<-e.D[i].Done()
}

// Diagnose logs what an operator would look at.
func (e *ECMP8) Diagnose() {
	out, _ := e.Lab.Exec("router", "birdc -s /run/bird-ecmp8-router.ctl show protocols; ip route show "+VIP)
	e.T.Logf("router:\n%s", out)
	if out, err := e.Anyctl(1, "members"); err == nil || out != "" {
		e.T.Logf("anyctl members on d1:\n%s", out)
	}
	for i, p := range e.D {
		o := p.Output()
		if len(o) > 2500 {
			o = o[len(o)-2500:]
		}
		e.T.Logf("d%d log (tail):\n%s", i, o)
	}
}

// Members is director i's view: name -> role, alive members only.
func (e *ECMP8) Members(i int) (map[string]string, error) {
	var mr director.MembersResponse
	if err := e.JSON(i, &mr, "members"); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, m := range mr.Members {
		if m.State == "alive" || m.State == "suspect" {
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
