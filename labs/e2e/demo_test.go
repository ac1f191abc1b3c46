package e2e

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestDemoECMP8 is `make lab`: the ecmp8 lab brought up, shown, one
// director failed, shown again, torn down. It prints for people (stdout)
// and runs only when asked (ANYCASTD_DEMO=1).
func TestDemoECMP8(t *testing.T) {
	if os.Getenv("ANYCASTD_DEMO") != "1" {
		t.Skip("the demo: make lab")
	}
	say := func(f string, a ...any) { fmt.Printf(f+"\n", a...) }
	start := time.Now()
	say("== building the ecmp8 lab out of network namespaces: client, router (BIRD, ECMP over 8),")
	say("   10 directors running anycastd, 4 real servers running nginx")
	e := DeployECMP8(t)
	el := e.ExpectHops(90*time.Second, "8 next hops at the router", all8...)
	e.Announcing(30*time.Second, "d1-d8 announce", all8...)
	say("== up in %v (the router had 8 next hops %v after the daemons started)\n", time.Since(start).Round(100*time.Millisecond), el.Round(time.Millisecond))
	out, _ := e.Anyctl(1, "members")
	say("$ anyctl members\n%s", out)
	route, _ := e.Lab.Exec("router", "ip route show "+VIP)
	say("$ ip route show %s   (on the router)\n%s", VIP, route)
	show := func() {
		spread, err := e.Spread(400)
		if err != nil {
			t.Fatal(err)
		}
		var line []string
		for i := 1; i <= Directors; i++ {
			if spread[i] > 0 {
				line = append(line, fmt.Sprintf("d%d:%d", i, spread[i]))
			}
		}
		say("400 connections from the client, by director: %s", strings.Join(line, " "))
	}
	show()
	say("(this machine's kernel has no IPVS: the directors run node.dataplane: memory, so they")
	say(" count the connections that the router's ECMP sends them but do not balance them;")
	say(" the IPVS packet path runs in the VM lab: make lab-test)\n")

	say("== killing d4 (kill -9)")
	t0 := time.Now()
	e.Kill(4)
	waitRouter(e, func(h []int) bool { return !slices.Contains(h, 4) })
	gone := time.Since(t0)
	e.ExpectHops(20*time.Second, "standby d10 in", append(without(all8, 4), standby)...)
	say("d4 left the router's FIB after %v; the standby d10 was announcing %v after the kill", gone.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	// d1's view follows within a gossip round or two.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if v, err := e.Members(1); err == nil {
			if _, alive := v["d4"]; !alive && v["d10"] == "active" {
				break
			}
		}
	}
	out, _ = e.Anyctl(1, "members")
	say("$ anyctl members\n%s", out)
	show()
	say("\n== tearing the lab down")
}

// waitRouter waits (up to 20s) until the router's next hops satisfy ok.
func waitRouter(e *ECMP8, ok func([]int) bool) {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if h, err := e.Hops(); err == nil && ok(h) {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	e.T.Fatal("timed out waiting for the router")
}
