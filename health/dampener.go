package health

import "time"

// State is a target's health.
type State int

// States. Unknown until the first result.
const (
	Unknown State = iota
	Up
	Down
)

func (s State) String() string {
	return [...]string{"unknown", "up", "down"}[s]
}

// Dampener applies rise/fall to a stream of probe results: Rise
// consecutive successes take a target up, Fall consecutive failures take
// it down, each counted separately (a success resets the failure count and
// the other way round). The first result decides an Unknown target at
// once, so a restarted director does not hold every backend down for Rise
// intervals. It is pure: time comes in with each result.
type Dampener struct {
	Rise, Fall int
	state      State
	since      time.Time
	successes  int
	failures   int
}

// Observe records one result and reports whether the state changed.
func (d *Dampener) Observe(ok bool, now time.Time) bool {
	if ok {
		d.successes++
		d.failures = 0
	} else {
		d.failures++
		d.successes = 0
	}
	next := d.state
	switch {
	case d.state == Unknown && ok:
		next = Up
	case d.state == Unknown:
		next = Down
	case d.state == Up && d.failures >= max(d.Fall, 1):
		next = Down
	case d.state == Down && d.successes >= max(d.Rise, 1):
		next = Up
	}
	if next == d.state {
		return false
	}
	d.state, d.since = next, now
	return true
}

// State returns the current state and since when it holds.
func (d *Dampener) State() (State, time.Time) { return d.state, d.since }

// Counts returns the consecutive successes and failures so far.
func (d *Dampener) Counts() (successes, failures int) { return d.successes, d.failures }
