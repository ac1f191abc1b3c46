package vmlab

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/api"
	"github.com/anycastd/anycastd/ipvs"
	"github.com/anycastd/anycastd/labs/labtest"
)

// TestVMKernelInterfaceMode is case 6 of the fail-safe issue, on the
// kernel dataplane: in kernel mode with `interface: lo` (the README's and
// the LVS handbook's LVS-OSPF setup, where BIRD's protocol direct exports
// lo's addresses) the director bound every VIP on lo for IPVS on every
// turn, and the announcer withdrew by deleting that same address, which
// the next turn put back: the VIP was exported whatever the director's
// health, drain or role. Now the VIP leaves lo when withdrawn and stays
// gone, while the director still serves the flows that reach it meanwhile
// (ECMP keeps sending them until the upstream converges).
func TestVMKernelInterfaceMode(t *testing.T) {
	l := newFlowLab(t)
	dir := t.TempDir()
	doc := fmt.Sprintf(`node: {name: d1, addresses: [10.1.0.1], state_dir: %[1]s/state}
cluster: {bind: 10.1.0.1, port: 7946, insecure: true}
routing: {mode: kernel, kernel: {interface: lo}}
api: {socket: %[1]s/api.sock}
`, dir) + fmt.Sprintf(daemonServices, "")
	os.WriteFile(filepath.Join(dir, "anycastd.yaml"), []byte(doc), 0o600)
	d := l.startDaemon(1, dir)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("d1 log:\n%s", d.log)
		}
	})
	onLo := func() bool {
		return strings.Contains(l.ns["d1"].Run("ip", "-4", "-o", "addr", "show", "dev", "lo"), " "+vip+"/32 ")
	}
	loops := func() uint64 {
		// Exit 1 while drained, with its reason after the JSON.
		out, _ := d.anyctl("status", "-o", "json")
		var st api.StatusResponse
		if err := json.NewDecoder(strings.NewReader(out)).Decode(&st); err != nil {
			t.Fatalf("status: %v\n%s", err, out)
		}
		return st.Reconcile.Loops
	}
	served := func(n int) int {
		out := l.dr.helper("cl", "connect", vip+":80", fmt.Sprint(n), "10.0.0.1")
		return n - strings.Count(out, "ERROR")
	}
	labtest.Eventually(t, 60*time.Second, "the VIP announced: on lo", func() error {
		if !onLo() {
			return fmt.Errorf("%s not on lo", vip)
		}
		return nil
	})
	l.route(1)
	if got := served(20); got != 20 {
		t.Fatalf("announced: %d of 20 connections served through d1", got)
	}

	if out, err := d.anyctl("drain", "--reason", "case 6"); err != nil {
		t.Fatalf("drain: %v\n%s", err, out)
	}
	labtest.Eventually(t, 30*time.Second, "the VIP withdrawn: off lo", func() error {
		if onLo() {
			return fmt.Errorf("%s still on lo", vip)
		}
		return nil
	})
	// It stays off through further turns of the loop (each one sets up
	// the host for IPVS again).
	from := loops()
	labtest.Eventually(t, 60*time.Second, "three more turns", func() error {
		if onLo() {
			return fmt.Errorf("%s is back on lo while drained", vip)
		}
		if n := loops(); n < from+3 {
			return fmt.Errorf("loops %d", n)
		}
		return nil
	})
	if onLo() {
		t.Fatalf("%s is back on lo while drained", vip)
	}
	// Withdrawn upstream, still serving what reaches it.
	if got := served(20); got != 20 {
		t.Errorf("withdrawn: %d of 20 connections still routed to d1 were served (IPVS must keep taking them)", got)
	}

	if out, err := d.anyctl("undrain"); err != nil {
		t.Fatalf("undrain: %v\n%s", err, out)
	}
	labtest.Eventually(t, 30*time.Second, "announced again", func() error {
		if !onLo() {
			return fmt.Errorf("%s not on lo", vip)
		}
		return nil
	})
	d.stop(t)
}

// TestVMDownBackendCostsNoConnections is case 24 of the fail-safe issue:
// with the default scheduler (mh, no flags) a backend that failed kept its
// slots in mh's table at weight 0, and every new connection hashing to it
// was refused. Through anycastd on the kernel dataplane, with one of three
// real servers stopped: new connections from many source addresses are
// all served, and the held connections of the healthy servers go on.
func TestVMDownBackendCostsNoConnections(t *testing.T) {
	l := newFlowLab(t)
	var srcs []string
	for i := 1; i <= 40; i++ {
		a := fmt.Sprintf("10.0.0.%d", i)
		srcs = append(srcs, a)
		if i > 1 {
			l.ns["cl"].Run("ip", "addr", "add", a+"/24", "dev", "c0")
		}
	}
	dir := t.TempDir()
	doc := fmt.Sprintf(`node: {name: d1, addresses: [10.1.0.1], state_dir: %[1]s/state}
cluster: {bind: 10.1.0.1, port: 7946, insecure: true}
routing: {mode: kernel, kernel: {table: 100}}
api: {socket: %[1]s/api.sock}
services:
  - name: web
    vip: %[2]s
    port: 80
    backends: [{address: 10.1.0.11}, {address: 10.1.0.12}, {address: 10.1.0.13}]
    health: {type: tcp, interval: 300ms, timeout: 250ms, rise: 1, fall: 1}
`, dir, vip)
	os.WriteFile(filepath.Join(dir, "anycastd.yaml"), []byte(doc), 0o600)
	d := l.startDaemon(1, dir)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("d1 log:\n%s", d.log)
		}
	})
	dest := func(addr string) (weight int, ok bool) {
		tb := l.table("d1")
		if len(tb.Services) != 1 {
			return 0, false
		}
		for _, x := range tb.Services[0].Destinations {
			if x.Addr.String() == addr {
				return x.Weight, true
			}
		}
		return 0, false
	}
	labtest.Eventually(t, 60*time.Second, "the default service in d1's kernel", func() error {
		tb := l.table("d1")
		if len(tb.Services) != 1 || len(tb.Services[0].Destinations) != 3 {
			return fmt.Errorf("table %+v", tb.Services)
		}
		if s := tb.Services[0]; s.Scheduler != "mh" || s.Flags&ipvs.Fallback("mh") == 0 {
			return fmt.Errorf("scheduler %s flags %#x: want mh with fallback", s.Scheduler, s.Flags)
		}
		return nil
	})
	l.route(1)

	hold := l.dr.hold(t, "cl", vip+":80", "40", strings.Join(srcs, ","))
	if len(hold.Ready) != 2 {
		t.Fatalf("hold: %q", hold.Ready)
	}
	list := hold.Ready[1]
	servers := strings.Split(list, ",")
	onRS2 := strings.Count(list, "rs2")
	t.Logf("held connections by real server: rs1 %d, rs2 %d, rs3 %d", strings.Count(list, "rs1"), onRS2, strings.Count(list, "rs3"))

	// rs2's server stops: its checks fail, it goes to weight 0.
	pids, _ := exec.Command("ip", "netns", "pids", l.ns["rs2"].Name).Output()
	for _, p := range strings.Fields(string(pids)) {
		exec.Command("kill", "-9", p).Run()
	}
	labtest.Eventually(t, 30*time.Second, "rs2 at weight 0 in d1's kernel", func() error {
		if w, ok := dest("10.1.0.12"); !ok || w != 0 {
			return fmt.Errorf("rs2 weight %d (present %v)", w, ok)
		}
		return nil
	})

	out := l.dr.helper("cl", "connect", vip+":80", "200", strings.Join(srcs, ","))
	failed := strings.Count(out, "ERROR")
	t.Logf("measure: one of three real servers down, default scheduler: %d of 200 new connections from 40 sources failed (rs1 %d, rs3 %d, rs2 %d)",
		failed, strings.Count(out, " rs1\n"), strings.Count(out, " rs3\n"), strings.Count(out, " rs2\n"))
	if failed > 0 {
		t.Errorf("%d of 200 new connections failed while one backend was down", failed)
	}

	line := hold.Check()
	var ok, total int
	fmt.Sscanf(line, "ok %d/%d", &ok, &total)
	if total != len(servers) || ok != total-onRS2 {
		t.Errorf("held connections after rs2 stopped: %q; want every one not on rs2 (%d of %d) to echo", line, total-onRS2, total)
	}
	if _, lost, found := strings.Cut(line, "failed:"); found && strings.Trim(strings.ReplaceAll(lost, "rs2", ""), ",") != "" {
		t.Errorf("connections of healthy backends were broken: %s", lost)
	}
	d.stop(t)
}
