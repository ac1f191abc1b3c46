package soak

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// The schedule is what makes a failing seed reproduce: the same seed must
// give the same faults, and every schedule must keep the lab's own rules
// (at most two directors impaired at once, a partition's side one or two
// directors, every kind reachable).
func TestSchedule(t *testing.T) {
	a, b := schedule(7, 10*time.Minute, faultKinds), schedule(7, 10*time.Minute, faultKinds)
	if len(a) == 0 || len(a) != len(b) {
		t.Fatalf("seed 7 gave %d then %d faults", len(a), len(b))
	}
	for i := range a {
		if a[i].At != b[i].At || a[i].String() != b[i].String() || a[i].Hold != b[i].Hold {
			t.Fatalf("fault %d: %v at %s, then %v at %s", i, a[i], a[i].At, b[i], b[i].At)
		}
	}
	if c := schedule(8, 10*time.Minute, faultKinds); len(c) == len(a) && c[0].String() == a[0].String() && c[1].String() == a[1].String() && c[0].At == a[0].At {
		t.Errorf("seeds 7 and 8 begin alike")
	}

	kinds := map[string]int{}
	for seed := uint64(1); seed <= 20; seed++ {
		fs := schedule(seed, 10*time.Minute, faultKinds)
		for i, f := range fs {
			kinds[f.Kind]++
			if f.Kind == "partition" {
				if len(f.Side) < 1 || len(f.Side) > 2 || !slices.IsSorted(f.Side) {
					t.Errorf("seed %d: partition side %v", seed, f.Side)
				}
			}
			if !directorFault(f.Kind) {
				continue
			}
			impaired := map[string]bool{}
			for _, g := range fs[:i+1] {
				if directorFault(g.Kind) && g.At <= f.At && f.At < g.At+g.Hold {
					impaired[g.Target] = true
				}
			}
			if len(impaired) > 2 {
				t.Errorf("seed %d: at %s directors %v impaired at once", seed, f.At, impaired)
			}
		}
	}
	for _, k := range faultKinds {
		if kinds[k] == 0 {
			t.Errorf("no schedule of seeds 1-20 plays %s", k)
		}
	}
}

// SOAK_KINDS narrows the schedule to the kinds it names; a name that is no
// kind is refused with the list.
func TestScheduleKinds(t *testing.T) {
	if ks, err := parseKinds(""); err != nil || len(ks) != len(faultKinds) {
		t.Fatalf("empty: %v %v", ks, err)
	}
	ks, err := parseKinds("check, rs_stop,check")
	if err != nil || len(ks) != 2 {
		t.Fatalf("check, rs_stop: %v %v", ks, err)
	}
	for _, f := range schedule(3, 10*time.Minute, ks) {
		if f.Kind != "check" && f.Kind != "rs_stop" {
			t.Errorf("%s scheduled", f)
		}
	}
	if _, err := parseKinds("check,reboot"); err == nil || !strings.Contains(err.Error(), `"reboot"`) {
		t.Errorf("reboot: %v", err)
	}
}
