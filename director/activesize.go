package director

import (
	"fmt"
	"slices"
	"time"

	"github.com/anycastd/anycastd/cluster"
)

// ActiveSize is the size of the active set as this director applies it:
// one value for the cluster, however the members' configs differ, that
// never shrinks by more than one director at a time.
type ActiveSize struct {
	// Target is the cluster's max_active: the median of the values the
	// live members are configured with (the lower one of an even count),
	// so that one director's config (a typo, a rolling change half done)
	// does not resize the tier; a change takes effect once most members
	// have it. Every director computes it from the same gossip view.
	Target int `json:"target"`
	// Size is what the election uses now. It rises to Target at once;
	// it falls one step at a time, each step once every live member has
	// taken the previous one and StepHold has passed since, so that no
	// max_active change makes more than one director withdraw at once.
	Size int `json:"size"`
	// Since is when Size last changed.
	Since time.Time `json:"since"`
	// Disagree lists the live members configured with another value than
	// this director ("d3=6"): visible in status until the configs agree.
	Disagree []string `json:"disagree,omitempty"`
}

// NextActiveSize is the active-set size after prev, given this director's
// configured max_active, the gossip view (this director's own entry, if
// there, is ignored) and the time; it also returns when it would change by
// itself (a step down waiting for its hold; zero: not by itself). It is
// pure.
func NextActiveSize(prev ActiveSize, self string, configured int, members []cluster.Member, now time.Time, hold time.Duration) (ActiveSize, time.Time) {
	next := ActiveSize{Size: prev.Size, Since: prev.Since}
	values := []int{configured}
	lowest, highest := 0, 0 // of the others' current sizes
	for _, m := range members {
		if m.Name == self || m.State != cluster.StateAlive || m.Bad != "" {
			continue
		}
		if v := m.Meta.MaxActive; v > 0 {
			values = append(values, v)
			if v != configured {
				next.Disagree = append(next.Disagree, fmt.Sprintf("%s=%d", m.Name, v))
			}
		}
		if sz := m.Meta.ActiveSize; sz > 0 {
			if lowest == 0 || sz < lowest {
				lowest = sz
			}
			highest = max(highest, sz)
		}
	}
	slices.Sort(values)
	next.Target = values[(len(values)-1)/2]
	slices.Sort(next.Disagree)

	if next.Size == 0 {
		// Starting: join the cluster where it is (it may be halfway
		// down a ramp), else take the target.
		next.Size, next.Since = next.Target, now
		if lowest > 0 {
			next.Size = max(lowest, next.Target)
		}
		return next, time.Time{}
	}
	var wake time.Time
	switch {
	case next.Target >= next.Size:
		next.Size = next.Target
	case lowest > 0 && lowest < next.Size:
		// Another member has stepped down already: follow it.
		next.Size = max(lowest, next.Target)
	case highest > next.Size:
		// Wait until every member has taken this step.
	case now.Before(prev.Since.Add(hold)):
		wake = prev.Since.Add(hold)
	default:
		next.Size--
	}
	if next.Size != prev.Size {
		next.Since = now
	}
	return next, wake
}
