package soak

import (
	"fmt"
	"testing"
	"time"
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
		rep := newReport(1, time.Minute)
		for _, f := range tc.faults {
			rep.begin(f)
		}
		c := &checker{l: &lab{rep: rep}}
		if got := fmt.Sprint(c.groups(now)); got != tc.want {
			t.Errorf("%v: groups %s, want %s", tc.faults, got, tc.want)
		}
	}
}
