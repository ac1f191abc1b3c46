package director

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/cluster"
)

func sizeMembers(sizes map[string][2]int) []cluster.Member {
	var ms []cluster.Member
	for name, v := range sizes {
		ms = append(ms, cluster.Member{Name: name, State: cluster.StateAlive,
			Meta: cluster.Meta{Healthy: true, Priority: 100, MaxActive: v[0], ActiveSize: v[1]}})
	}
	slices.SortFunc(ms, func(a, b cluster.Member) int { return strings.Compare(a.Name, b.Name) })
	return ms
}

func TestNextActiveSize(t *testing.T) {
	t0 := time.Unix(1000, 0)
	hold := 5 * time.Second
	cases := []struct {
		name       string
		prev       ActiveSize
		configured int
		others     map[string][2]int // name -> {configured, size}
		now        time.Time
		want       ActiveSize
		wake       time.Time
	}{
		{"alone, starting", ActiveSize{}, 8, nil, t0, ActiveSize{Target: 8, Size: 8, Since: t0}, time.Time{}},
		{"one member's typo does not move the median", ActiveSize{Size: 8, Since: t0}, 8,
			map[string][2]int{"d2": {8, 8}, "d3": {8, 8}, "d4": {1, 8}}, t0.Add(time.Minute),
			ActiveSize{Target: 8, Size: 8, Since: t0, Disagree: []string{"d4=1"}}, time.Time{}},
		{"two members: the lower value", ActiveSize{Size: 4, Since: t0}, 8,
			map[string][2]int{"d2": {4, 4}}, t0.Add(time.Minute),
			ActiveSize{Target: 4, Size: 4, Since: t0, Disagree: []string{"d2=4"}}, time.Time{}},
		{"older builds (no value) are not counted", ActiveSize{Size: 4, Since: t0}, 4,
			map[string][2]int{"d2": {0, 0}}, t0.Add(time.Minute), ActiveSize{Target: 4, Size: 4, Since: t0}, time.Time{}},
		{"rises at once", ActiveSize{Size: 4, Since: t0}, 8,
			map[string][2]int{"d2": {8, 4}, "d3": {8, 4}}, t0.Add(time.Second),
			ActiveSize{Target: 8, Size: 8, Since: t0.Add(time.Second)}, time.Time{}},
		{"falls only after the hold", ActiveSize{Size: 8, Since: t0}, 4,
			map[string][2]int{"d2": {4, 8}, "d3": {4, 8}}, t0.Add(time.Second),
			ActiveSize{Target: 4, Size: 8, Since: t0}, t0.Add(hold)},
		{"then one step", ActiveSize{Size: 8, Since: t0}, 4,
			map[string][2]int{"d2": {4, 8}, "d3": {4, 8}}, t0.Add(hold),
			ActiveSize{Target: 4, Size: 7, Since: t0.Add(hold)}, time.Time{}},
		{"waits for a member still at the last step", ActiveSize{Size: 7, Since: t0}, 4,
			map[string][2]int{"d2": {4, 8}, "d3": {4, 7}}, t0.Add(time.Minute),
			ActiveSize{Target: 4, Size: 7, Since: t0}, time.Time{}},
		{"follows a member that stepped already", ActiveSize{Size: 8, Since: t0}, 4,
			map[string][2]int{"d2": {4, 7}, "d3": {4, 8}}, t0.Add(time.Second),
			ActiveSize{Target: 4, Size: 7, Since: t0.Add(time.Second)}, time.Time{}},
		{"never below the target", ActiveSize{Size: 5, Since: t0}, 4,
			map[string][2]int{"d2": {4, 2}, "d3": {4, 5}}, t0.Add(time.Second),
			ActiveSize{Target: 4, Size: 4, Since: t0.Add(time.Second)}, time.Time{}},
		{"starting halfway down a ramp", ActiveSize{}, 4,
			map[string][2]int{"d2": {4, 6}, "d3": {4, 6}}, t0,
			ActiveSize{Target: 4, Size: 6, Since: t0}, time.Time{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ms := sizeMembers(tc.others)
			// Dead members and our own stale entry are ignored.
			ms = append(ms, cluster.Member{Name: "gone", State: cluster.StateDead, Meta: cluster.Meta{MaxActive: 1, ActiveSize: 1}},
				cluster.Member{Name: "d1", State: cluster.StateAlive, Meta: cluster.Meta{MaxActive: 1, ActiveSize: 1}})
			got, wake := NextActiveSize(tc.prev, "d1", tc.configured, ms, tc.now, hold)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) || !wake.Equal(tc.wake) {
				t.Errorf("got %+v wake %v\nwant %+v wake %v", got, wake, tc.want, tc.wake)
			}
		})
	}
}

// Eight directors announce; max_active goes from 8 to 3 in every config
// at once (the worst case: no rolling change). Each director steps on its
// own from the gossip view the others published a moment ago; the
// number announcing never drops by more than one at a time.
func TestActiveSizeFallsOneDirectorAtATime(t *testing.T) {
	hold := 5 * time.Second
	names := []string{"d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8"}
	state := map[string]ActiveSize{}
	published := map[string][2]int{}
	t0 := time.Unix(1000, 0)
	for _, n := range names {
		state[n] = ActiveSize{Target: 8, Size: 8, Since: t0}
		published[n] = [2]int{8, 8}
	}
	announcing := func() int {
		ms := sizeMembers(published)
		count := 0
		for _, n := range names {
			if cluster.Elect(ms, state[n].Size)[n] == cluster.RoleActive {
				count++
			}
		}
		return count
	}
	last := announcing()
	for tick := range 1200 { // 100 ms ticks: two minutes
		now := t0.Add(time.Duration(tick) * 100 * time.Millisecond)
		view := sizeMembers(published)
		// Directors turn in a different order each tick, each seeing
		// what the others published before this tick.
		for i := range names {
			n := names[(i+tick)%len(names)]
			next, _ := NextActiveSize(state[n], n, 3, view, now, hold)
			state[n] = next
		}
		for _, n := range names {
			published[n] = [2]int{3, state[n].Size}
		}
		now2 := announcing()
		if now2 < last-1 {
			t.Fatalf("at %s announcers fell from %d to %d", now.Sub(t0), last, now2)
		}
		last = now2
	}
	if last != 3 {
		t.Errorf("after two minutes %d announce, want 3", last)
	}
}
