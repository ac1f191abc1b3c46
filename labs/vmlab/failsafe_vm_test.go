package vmlab

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/director"
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
		var st director.StatusResponse
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
