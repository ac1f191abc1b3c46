package director

import (
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"slices"
	"time"

	"github.com/anycastd/anycastd/cluster"
	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/health"
)

// A backend's health in the table: the directors' checks by majority.
//
// Each director checks every backend itself. On a busy machine one
// director's check can time out while the others' pass; if each director
// wrote its own verdict into its table, the tables would differ, and mh
// would send a flow that ECMP moves from one director to another to
// another real server (the soak lab saw exactly this). So every director
// publishes what its checks say (cluster.HealthReport) and puts into its
// table what most of the directors on the same config say. Every
// director counts the same votes, so the tables agree once the reports
// have spread (milliseconds).
//
// A director whose own checks hold a backend down while the cluster holds
// it up keeps it (its check may be what is wrong: it is one vote), and
// says so; if that lasts longer than health.local_hold its path to that
// backend may be what is broken, and it takes the backend out of its own
// table anyway. That costs only its own share of that backend's flows.

// VerdictInput is what HealthVerdicts decides from.
type VerdictInput struct {
	Self string
	// Config is TargetSet of the applied services: only reports on the
	// same set of backends are counted.
	Config string
	// Own is this director's checks' health by target ID.
	Own map[string]health.State
	// Members is the gossip view; a member's Meta.Health is its vote.
	Members []cluster.Member
	// Local is health.verdict local: Own alone decides.
	Local bool
	// Hold is health.local_hold, and Since the disagreements of the last
	// turn (Verdicts.Disagree).
	Hold  time.Duration
	Since map[string]time.Time
	Now   time.Time
}

// Verdicts is the backends' health the table is built from, and how it
// was reached.
type Verdicts struct {
	// States by target ID: Plan's Input.Backends.
	States map[string]health.State
	// Voters is how many directors' reports counted, this one's included;
	// Decided of the other directors' vote up every backend they do not
	// hold down (the rest vote only down).
	Voters, Decided int
	// DownVotes is, for each backend any voter holds down, how many do
	// (this director included).
	DownVotes map[string]int
	// Disagree are the backends this director's checks hold down and the
	// cluster up, each since when; Overridden those of them held down here
	// all the same, longer than Hold (sorted).
	Disagree   map[string]time.Time
	Overridden []string
	// WakeAt is when the next disagreement reaches Hold (zero: none).
	WakeAt time.Time
	// FailOpen are the services kept on this director's own checks (see
	// FailOpen), sorted.
	FailOpen []string
}

// HealthVerdicts decides each backend's health from this director's
// checks and the other directors' reports: down where more directors
// hold it down than up (a tie is up: one director's failing check among
// two is not enough to take a backend out of both tables), up where any
// holds it up and this director's own check has answered, unknown
// otherwise (the table keeps its weight). A director whose checks have
// not answered yet (it just started, the backend was just added) so
// takes the backends the others hold down out of its table at once, but
// counts none up for a quorum before its own check says so: the others'
// votes can stop counting for a moment (a backend added or removed
// changes what they are about, and they report again as they adopt it),
// and a VIP announced on their word alone was withdrawn in that moment. A backend this director holds down and the cluster up stays up
// for Hold, then is down here (see Verdicts.Overridden). It is pure.
func HealthVerdicts(in VerdictInput) Verdicts {
	v := Verdicts{States: in.Own, Voters: 1}
	if in.Local {
		return v
	}
	var downs, decidedDowns map[string]int
	seen := map[string]bool{}
	for i := range in.Members {
		m := &in.Members[i]
		r := m.Meta.Health
		if m.Name == in.Self || m.State != cluster.StateAlive || m.Bad != "" ||
			r == nil || r.Config != in.Config || r.TooMany || len(r.Down) > cluster.MaxReportDown {
			continue
		}
		v.Voters++
		decided := !r.Undecided
		if decided {
			v.Decided++
		}
		clear(seen)
		for _, t := range r.Down {
			if seen[t] {
				continue // one vote per director
			}
			seen[t] = true
			if downs == nil {
				downs, decidedDowns = map[string]int{}, map[string]int{}
			}
			downs[t]++
			if decided {
				decidedDowns[t]++
			}
		}
	}
	if v.Voters == 1 {
		// Alone, or nobody else on this document reports: the own
		// checks decide (as they do in local mode).
		return v
	}
	type change struct {
		t  string
		st health.State
	}
	var changes []change
	for t, own := range in.Own {
		down, up := downs[t], v.Decided-decidedDowns[t]
		switch own {
		case health.Up:
			up++
		case health.Down:
			down++
		}
		st := health.Unknown
		switch {
		case down > up:
			st = health.Down
		case up > 0 && own != health.Unknown:
			st = health.Up
		}
		if down > 0 {
			if v.DownVotes == nil {
				v.DownVotes = map[string]int{}
			}
			v.DownVotes[t] = down
		}
		if own == health.Down && st == health.Up {
			since, ok := in.Since[t]
			if !ok {
				since = in.Now
			}
			if v.Disagree == nil {
				v.Disagree = map[string]time.Time{}
			}
			v.Disagree[t] = since
			if end := since.Add(in.Hold); in.Now.Before(end) {
				v.WakeAt = earliest(v.WakeAt, end)
			} else {
				st = health.Down
				v.Overridden = append(v.Overridden, t)
			}
		}
		if st != own {
			changes = append(changes, change{t, st})
		}
	}
	if len(changes) > 0 {
		// The own map is the caller's: a copy with the changes (most
		// turns have none, and a table may have 10,000 backends).
		v.States = maps.Clone(in.Own)
		for _, c := range changes {
			v.States[c.t] = c.st
		}
	}
	slices.Sort(v.Overridden)
	return v
}

// FailOpen keeps a service on this director's own checks where the
// cluster's verdict would put it below its quorum and the own checks do
// not: it returns v with those services' backends at their own health,
// and their names (sorted) in v.FailOpen.
//
// The shared verdict keeps the tables equal while directors disagree
// about a backend or two. But when most directors' checks fail together
// (their host saturated, a brownout on their side of the network), the
// majority's verdict would take the service below quorum on every
// director, and every director would withdraw its VIP: the one fault
// taking down the directors that could still serve it, against the
// failure principles. Those keep serving on what their own checks see,
// as each director did before verdicts were shared; the tables differ
// while it lasts (that costs the flows ECMP moves between them, not the
// VIP). It is pure; services are the applied ones.
func FailOpen(services []configs.Service, own map[string]health.State, v Verdicts) Verdicts {
	v.FailOpen = nil
	var keep []string
	for i := range services {
		s := &services[i]
		if s.Quorum <= 0 || s.Health.Type == configs.CheckNone {
			continue
		}
		shared, mine := 0, 0
		for _, b := range s.Backends {
			if b.Weight <= 0 {
				continue // not counted toward the quorum
			}
			id := TargetID(s.Name, b)
			if v.States[id] == health.Up {
				shared++
			}
			if own[id] == health.Up {
				mine++
			}
		}
		if shared < s.Quorum && mine >= s.Quorum {
			v.FailOpen = append(v.FailOpen, s.Name)
			for _, b := range s.Backends {
				keep = append(keep, TargetID(s.Name, b))
			}
		}
	}
	if len(keep) == 0 {
		return v
	}
	states := maps.Clone(v.States)
	for _, id := range keep {
		states[id] = own[id]
	}
	v.States = states
	slices.Sort(v.FailOpen)
	return v
}

// TargetSet names the set of checked backends of services (their target
// IDs, sorted, hashed): what a health report is about. Not the document's
// hash: a change of a check's settings or of a weight leaves the set as
// it is, and the directors, which adopt a new document at slightly
// different moments, keep counting each other's votes through it (with
// the document's hash each one counted only its own for a moment, and its
// check's verdict alone went into its table).
func TargetSet(services []configs.Service) string {
	var ids []string
	for _, s := range services {
		if s.Health.Type == configs.CheckNone {
			continue
		}
		for _, b := range s.Backends {
			ids = append(ids, TargetID(s.Name, b))
		}
	}
	slices.Sort(ids)
	h := sha256.New()
	for _, id := range ids {
		h.Write([]byte(id))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:6])
}

// healthReport is what this director's checks say, as the others count
// it: the backends held down (sorted), and whether any is undecided.
func healthReport(config string, own map[string]health.State) *cluster.HealthReport {
	r := &cluster.HealthReport{Config: config}
	for t, st := range own {
		switch st {
		case health.Down:
			r.Down = append(r.Down, t)
		case health.Unknown:
			r.Undecided = true
		}
	}
	if len(r.Down) > cluster.MaxReportDown {
		r.Down, r.TooMany = nil, true
	}
	slices.Sort(r.Down)
	return r
}

type targetSet struct{ doc, set string }
