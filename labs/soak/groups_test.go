package soak

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/anycastd/anycastd/ipvs"
)

// While the gossip is split, invariants 2 (how many announce) and 4 (equal
// tables) hold per piece of the cluster; two partitions close together
// leave the pieces of both (comparing across an earlier cut still healing
// reported a violation that was none).
func TestCheckerGroups(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		faults []*fault
		want   string
	}{
		{nil, "[[d1 d2 d3 d4 d5]]"},
		{[]*fault{{Kind: "partition", Side: []string{"d1", "d3"}, start: now.Add(-time.Second)}}, "[[d1 d3] [d2 d4 d5]]"},
		{[]*fault{{Kind: "partition", Side: []string{"d2"}, start: now.Add(-time.Minute), restored: now.Add(-50 * time.Second)}}, "[[d1 d2 d3 d4 d5]]"},
		{[]*fault{
			{Kind: "partition", Side: []string{"d2"}, start: now.Add(-12 * time.Second), restored: now.Add(-5 * time.Second)},
			{Kind: "partition", Side: []string{"d1", "d3"}, start: now.Add(-time.Second)},
		}, "[[d1 d3] [d2] [d4 d5]]"},
	} {
		rep := newReport(modeBGP, 1, time.Minute)
		for _, f := range tc.faults {
			rep.begin(f)
		}
		c := &checker{l: &lab{rep: rep}}
		if got := fmt.Sprint(c.groups(now)); got != tc.want {
			t.Errorf("%v: groups %s, want %s", tc.faults, got, tc.want)
		}
	}
}

// Invariant 4 compares what schedules: a destination at weight 0 (a
// removed backend still draining on one director) is the same as none;
// any other difference is not.
func TestSchedulingTable(t *testing.T) {
	d := func(last byte, w int) ipvs.Destination {
		return ipvs.Destination{DestKey: ipvs.DestKey{Addr: netip.AddrFrom4([4]byte{10, 1, 0, last}), Port: 80}, Weight: w}
	}
	tb := func(ds ...ipvs.Destination) ipvs.Table {
		return ipvs.Table{Services: []ipvs.Service{{ServiceKey: ipvs.ServiceKey{Protocol: 6, Addr: netip.MustParseAddr(vip), Port: 80},
			Scheduler: "mh", Destinations: ds}}}
	}
	draining, gone := tb(d(11, 1), d(13, 0), d(14, 1)), tb(d(11, 1), d(14, 1))
	if scheduling(draining) != scheduling(gone) {
		t.Errorf("a draining weight-0 destination counts:\n%s\n%s", scheduling(draining), scheduling(gone))
	}
	for _, other := range []ipvs.Table{tb(d(11, 1), d(13, 1), d(14, 1)), tb(d(14, 1), d(11, 1)), tb(d(11, 2), d(14, 1))} {
		if scheduling(other) == scheduling(gone) {
			t.Errorf("%s is taken for %s", tableString(other), tableString(gone))
		}
	}
}

// The convergence predicates read what every running director holds.
func TestWeightPredicates(t *testing.T) {
	d := func(last byte, w int) ipvs.Destination {
		return ipvs.Destination{DestKey: ipvs.DestKey{Addr: netip.AddrFrom4([4]byte{10, 1, 0, last}), Port: 80}, Weight: w}
	}
	tb := func(ds ...ipvs.Destination) ipvs.Table {
		return ipvs.Table{Services: []ipvs.Service{{Destinations: ds}}}
	}
	s := &snapshot{tables: map[string]ipvs.Table{"d1": tb(d(11, 1), d(12, 2)), "d2": tb(d(11, 0)), "d3": tb(d(12, 9))},
		down: map[string]bool{"d3": true}}
	one := func(w int) bool { return w == 1 }
	for _, c := range []struct {
		name string
		got  bool
		want bool
	}{
		{"allWeights 11 == 1", allWeights(s, "10.1.0.11", one), false},
		{"allWeights 11 <= 1", allWeights(s, "10.1.0.11", func(w int) bool { return w <= 1 }), true},
		{"allWeights 13", allWeights(s, "10.1.0.13", one), false},
		{"noneHas 13", noneHas(s, "10.1.0.13"), true},
		{"noneHas 12", noneHas(s, "10.1.0.12"), false},
		{"allHave 11", allHave(s, "10.1.0.11"), true},
		{"allHave 12 (d2 lacks it; d3 is down)", allHave(s, "10.1.0.12"), false},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.name, c.got, c.want)
		}
	}
}
