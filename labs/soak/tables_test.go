package soak

import (
	"testing"
	"time"
)

// Invariant 4 over time: the bound runs from the last change of any
// table, a run of changes is given it each time, and a difference that
// keeps moving is still reported after maxDiffer.
func TestTableWatch(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	bound, most := 4*time.Second, 12*time.Second
	type step struct {
		ms     int
		tables map[string]string
		same   bool
		want   bool
	}
	eq := map[string]string{"d1": "a", "d2": "a"}
	cases := []struct {
		name  string
		steps []step
	}{
		{"a difference that stays past the bound", []step{
			{0, eq, true, false},
			{1000, map[string]string{"d1": "b", "d2": "a"}, false, false},
			{4000, map[string]string{"d1": "b", "d2": "a"}, false, false},
			{5100, map[string]string{"d1": "b", "d2": "a"}, false, true},
		}},
		{"changes one after another, each converging within the bound", []step{
			{0, eq, true, false},
			{1000, map[string]string{"d1": "b", "d2": "a"}, false, false},
			{3500, map[string]string{"d1": "b", "d2": "b"}, true, false},
			{3600, map[string]string{"d1": "c", "d2": "b"}, false, false}, // the next change, seen before the equal one was
			{6000, map[string]string{"d1": "c", "d2": "c"}, true, false},
		}},
		{"a run of changes never seen equal: each change restarts the bound", []step{
			{0, map[string]string{"d1": "b", "d2": "a"}, false, false},
			{3000, map[string]string{"d1": "b", "d2": "b", "d3": "a"}, false, false},
			{6000, map[string]string{"d1": "b", "d2": "b", "d3": "c"}, false, false},
			{9500, map[string]string{"d1": "b", "d2": "b", "d3": "c"}, false, false},
			{10100, map[string]string{"d1": "b", "d2": "b", "d3": "c"}, false, true},
		}},
		{"a difference that keeps moving: reported after maxDiffer", []step{
			{0, map[string]string{"d1": "b", "d2": "a"}, false, false},
			{3000, map[string]string{"d1": "c", "d2": "a"}, false, false},
			{6000, map[string]string{"d1": "d", "d2": "a"}, false, false},
			{9000, map[string]string{"d1": "e", "d2": "a"}, false, false},
			{12100, map[string]string{"d1": "f", "d2": "a"}, false, true},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var w tableWatch
			for _, s := range tc.steps {
				if got := w.see(at(s.ms), s.tables, s.same, bound, most); got != s.want {
					t.Fatalf("at %d ms: broken %v, want %v", s.ms, got, s.want)
				}
			}
		})
	}
}
