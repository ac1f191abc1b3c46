package e2e

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anycastd/anycastd/api"
	"github.com/anycastd/anycastd/labs/labtest"
)

var all8 = []int{1, 2, 3, 4, 5, 6, 7, 8}

// standby is the first standby: d9 and d10 share priority 200, and ties
// are broken by name as strings, so "d10" comes before "d9".
const standby = 10

func without(s []int, drop ...int) []int {
	return slices.DeleteFunc(slices.Clone(s), func(x int) bool { return slices.Contains(drop, x) })
}

// backendWeights is each director's IPVS weight for backend addr.
func (e *ECMP8) backendWeights(dirs []int, addr string) (map[int]int, error) {
	out := map[int]int{}
	for _, i := range dirs {
		var sv api.ServicesResponse
		if err := e.JSON(i, &sv, "services"); err != nil {
			return nil, fmt.Errorf("d%d: %v", i, err)
		}
		for _, s := range sv.Services {
			for _, b := range s.Backends {
				if b.Address.String() == addr && b.IPVSWeight != nil {
					out[i] = *b.IPVSWeight
				}
			}
		}
	}
	return out, nil
}

// TestLabECMP8 runs the end-to-end scenarios of the ecmp8 lab in order on
// one deployment: cluster up, real-server failure and quorum, director
// self-health failure, kill -9, blackhole with BFD, drain/undrain. This
// kernel has no IPVS: the directors run the memory dataplane, so these are
// the control-plane scenarios (membership, health, routing) with a real
// router; the packet path is the VM lab's.
func TestLabECMP8(t *testing.T) {
	e := DeployECMP8(t)
	t.Log("kernel: this machine's (no IPVS): directors use node.dataplane: memory; the router's FIB is real")

	// 1. Cluster up: 10 members, 8 active, 2 standby; 8 next hops.
	el := e.ExpectHops(90*time.Second, "8 next hops at the router", all8...)
	t.Logf("cluster up: 8 next hops %v after the directors started", el.Round(time.Millisecond))
	labtest.Eventually(t, 30*time.Second, "10 members, 8 active + 2 standby, in every view", func() error {
		for i := 1; i <= Directors; i++ {
			v, err := e.Members(i)
			if err != nil {
				return err
			}
			a, s := Roles(v)
			if len(v) != 10 || len(a) != 8 || !slices.Equal(s, []string{"d10", "d9"}) {
				return fmt.Errorf("d%d sees %d members, active %v, standby %v", i, len(v), a, s)
			}
		}
		return nil
	})
	out, _ := e.Anyctl(1, "members")
	t.Logf("anyctl members:\n%s", out)
	if !strings.Contains(out, "10 members: 8 active, 2 standby") {
		t.Errorf("anyctl members does not show 8 active + 2 standby")
	}

	// 2. A real server fails: its weight drops to 0 on every director, no
	// VIP withdrawn while quorum (2) holds; below quorum every director
	// withdraws; back up, back in.
	stop := func(r int) {
		t.Helper()
		if out, err := e.Lab.Exec(fmt.Sprintf("rs%d", r), fmt.Sprintf("kill $(cat /run/ecmp8-rs%d-nginx.pid)", r)); err != nil {
			t.Fatalf("stop nginx on rs%d: %v %s", r, err, out)
		}
	}
	start := func(r int) {
		t.Helper()
		if out, err := e.Lab.Exec(fmt.Sprintf("rs%d", r), "nginx -c /etc/nginx/ecmp8.conf"); err != nil {
			t.Fatalf("start nginx on rs%d: %v %s", r, err, out)
		}
	}
	all10 := []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	t0 := time.Now()
	stop(1)
	labtest.Eventually(t, 10*time.Second, "rs1 at weight 0 on all 10 directors", func() error {
		w, err := e.backendWeights(all10, "10.1.0.11")
		if err != nil {
			return err
		}
		for _, i := range all10 {
			if w[i] != 0 {
				return fmt.Errorf("d%d: weight %d", i, w[i])
			}
		}
		return nil
	})
	labtest.Report(t, "e2e: real server down -> weight 0 on all 10 directors (fall 2 x 500ms)", []time.Duration{time.Since(t0)})
	if h, _ := e.Hops(); !slices.Equal(h, all8) {
		t.Errorf("a VIP was withdrawn while quorum held: hops %v", h)
	}
	stop(2)
	stop(3)
	el = e.ExpectHops(15*time.Second, "below quorum: VIP withdrawn everywhere")
	t.Logf("below quorum: the router had no next hop %v later", el.Round(time.Millisecond))
	start(1)
	start(2)
	start(3)
	e.ExpectHops(30*time.Second, "back above quorum", all8...)
	e.Announcing(20*time.Second, "only d1-d8 announce", all8...)

	// 3. Self health fails on d3: its hop leaves, standby d10 takes it.
	// The router's route changes are watched as the kernel announces
	// them, to time the hop's departure from the probe that decided it
	// (the check's since, in d3's status) without a poll's interval.
	watch := e.WatchHops()
	t0 = time.Now()
	os.WriteFile(e.FailFile(3), nil, 0o644)
	e.ExpectHops(20*time.Second, "d3 out, the standby d10 in", append(without(all8, 3), standby)...)
	labtest.Report(t, "e2e: director self-health fails -> standby in the router's FIB", []time.Duration{time.Since(t0)})
	st := api.StatusResponse{}
	e.JSON(3, &st, "status")
	if !strings.Contains(st.Reason, "maintenance-file") {
		t.Errorf("d3's status does not say why: %q", st.Reason)
	}
	for _, c := range st.SelfChecks {
		if c.Name != "maintenance-file" || c.OK {
			continue
		}
		if gone, ok := watch.FirstWithout(t0, HopAddr(3)); ok && !c.Since.IsZero() {
			labtest.Report(t, "e2e: own health fails (the deciding probe's result) -> its next hop gone from the router's FIB", []time.Duration{gone.Sub(c.Since)})
		} else {
			t.Errorf("no time for d3's departure: route watch %v (%v), check since %v", ok, watch.Err(), c.Since)
		}
	}
	os.Remove(e.FailFile(3))
	e.ExpectHops(20*time.Second, "d3 back, d10 standby again", all8...)
	e.Announcing(20*time.Second, "only d1-d8 announce", all8...)

	// 4a. kill -9 of d4: out of the router (the TCP session closes), d10
	// announces.
	t0 = time.Now()
	e.Kill(4)
	e.ExpectHops(20*time.Second, "d4 killed: d10 replaces it", append(without(all8, 4), standby)...)
	labtest.Report(t, "e2e: director kill -9 -> standby in the router's FIB", []time.Duration{time.Since(t0)})
	if gone, ok := watch.FirstWithout(t0, HopAddr(4)); ok {
		labtest.Report(t, "e2e: anycastd kill -9 -> its next hop gone from the router's FIB", []time.Duration{gone.Sub(t0)})
	} else {
		t.Errorf("no time for d4's departure: %v", watch.Err())
	}
	e.Start(4)
	e.ExpectHops(60*time.Second, "d4 back", all8...)
	e.Announcing(20*time.Second, "only d1-d8 announce", all8...)

	// 4b. d5 blackholed (every packet dropped, uplink and lan): BFD takes
	// it out of the router; the cluster declares it dead and d10 takes
	// the slot.
	if out, err := e.Lab.Exec("d5", "nft 'table inet blackhole { chain i { type filter hook input priority -300; policy drop; iifname lo accept; }; chain o { type filter hook output priority -300; policy drop; oifname lo accept; }; }'"); err != nil {
		t.Fatalf("blackhole d5: %v %s", err, out)
	}
	t0 = time.Now()
	labtest.Eventually(t, 10*time.Second, "d5 gone from the router", func() error {
		h, err := e.Hops()
		if err != nil {
			return err
		}
		if slices.Contains(h, 5) {
			return fmt.Errorf("hops %v", h)
		}
		return nil
	})
	labtest.Report(t, "e2e: director blackholed (BFD 100ms x3) -> gone from the router's FIB", []time.Duration{time.Since(t0)})
	e.ExpectHops(20*time.Second, "d10 replaces blackholed d5", append(without(all8, 5), standby)...)
	labtest.Report(t, "e2e: director blackholed -> standby in the router's FIB", []time.Duration{time.Since(t0)})
	e.Lab.Exec("d5", "nft delete table inet blackhole")
	e.ExpectHops(60*time.Second, "d5 back after the blackhole", all8...)
	e.Announcing(20*time.Second, "only d1-d8 announce", all8...)

	// 6. Drain d1: GSHUT first (BIRD gives it local-pref 0, so it leaves
	// the multipath set while still announced), then withdrawn; d10 takes
	// the slot. Undrain: back.
	if out, err := e.Anyctl(1, "drain", "--reason", "e2e"); err != nil {
		t.Fatalf("drain: %v %s", err, out)
	}
	labtest.Eventually(t, 10*time.Second, "d1's route carries GRACEFUL_SHUTDOWN at the router", func() error {
		out, _ := e.Lab.Exec("router", "birdc -s /run/bird-ecmp8-router.ctl show route "+VIP+"/32 all protocol d1")
		if !strings.Contains(out, "(65535,0)") {
			return fmt.Errorf("d1's route: %s", out)
		}
		return nil
	})
	e.ExpectHops(20*time.Second, "d1 drained: d10 in", append(without(all8, 1), standby)...)
	labtest.Eventually(t, 10*time.Second, "d1 withdrawn after the hold", func() error {
		out, _ := e.Lab.Exec("router", "birdc -s /run/bird-ecmp8-router.ctl show route "+VIP+"/32 protocol d1")
		if strings.Contains(out, VIP) {
			return fmt.Errorf("still there: %s", out)
		}
		return nil
	})
	if out, err := e.Anyctl(1, "undrain"); err != nil {
		t.Fatalf("undrain: %v %s", err, out)
	}
	e.ExpectHops(20*time.Second, "d1 back after undrain", all8...)

	// The directors stop gracefully: GSHUT, withdraw, leave.
	for i := 1; i <= Directors; i++ {
		e.Signal(i, syscall.SIGTERM)
	}
	for i := 1; i <= Directors; i++ {
		if !e.Gone(i, 20*time.Second) {
			t.Errorf("d%d did not stop on SIGTERM", i)
		}
	}
	e.ExpectHops(10*time.Second, "all withdrawn after SIGTERM")
}
