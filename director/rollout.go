package director

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/anycastd/anycastd/cluster"
	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/health"
)

// Staged rollout (issue 20): a new services document goes to one warm
// standby first, then to one active director, then to the rest, and each
// stage holds until the directors it reached report that nothing is
// worse off than under the previous services; a stage that makes
// something worse ends the rollout, and the cluster goes back to the
// previous services by itself. The state travels in the cluster document
// (cluster.Rollout), so it survives a restart and a gossip split: the
// newest document wins, and whoever holds it carries on. The decisions
// are pure: RolloutHold, JudgeRollout and NextRollout.

// RolloutHold is how long a stage's directors run new services before
// they judge them: the longest, over the checked services, of the time a
// backend takes to rise or fall (max(rise, fall) x interval + timeout),
// at least a second.
func RolloutHold(services []configs.Service) time.Duration {
	hold := time.Second
	for _, s := range services {
		if s.Health.Type == configs.CheckNone {
			continue
		}
		n := max(s.Health.Rise, s.Health.Fall, 1)
		hold = max(hold, time.Duration(n)*s.Health.Interval+s.Health.Timeout)
	}
	return hold
}

// Standing is what a director's services amount to at one moment, as a
// rollout compares them before and after: which backends are up (by
// TargetID), which VIPs could be announced (quorum met, in the kernel;
// whatever the director's role), which services the kernel refused, and
// its own health.
type Standing struct {
	Up       map[string]bool
	Servable map[netip.Addr]bool
	Refused  []string
	Healthy  bool
	// DownElsewhere are the backends that most of the directors still
	// on the previous services hold down as well: a failure that is not
	// the change's (a backend that fails while the stage holds), which
	// does not count against it.
	DownElsewhere map[string]bool
	// Unknown: there is nothing to compare with (the director applied
	// no services before: it started during the rollout); every backend
	// and VIP counts as having been up, and the director healthy.
	Unknown bool
}

// standing takes the director's Standing by its own checks (own, by
// TargetID): a rollout judges the new services by what this director's
// checks of them say, not by the verdicts it shares with directors that
// still check with the previous settings. failed are the services the
// kernel refused, by name.
func standing(services []configs.Service, own map[string]health.State, healthy bool, failed map[string]string) Standing {
	st := Standing{Up: map[string]bool{}, Servable: map[netip.Addr]bool{}, Healthy: healthy}
	var key []byte
	for _, s := range services {
		up := 0
		for _, b := range s.Backends {
			key = appendTargetID(key[:0], s.Name, b)
			ok := s.Health.Type == configs.CheckNone || own[string(key)] == health.Up
			st.Up[string(key)] = ok
			if ok && b.Weight > 0 {
				up++
			}
		}
		_, refused := failed[s.Name]
		servable := up >= s.Quorum && !refused
		if was, seen := st.Servable[s.VIP]; seen {
			servable = servable && was
		}
		st.Servable[s.VIP] = servable
	}
	for name := range failed {
		st.Refused = append(st.Refused, name)
	}
	slices.Sort(st.Refused)
	return st
}

// JudgeRollout says what is worse off in after (the new services, once
// held) than in before (the previous ones, just before the switch): a
// backend of both that was up and is not (unless the directors on the
// previous services hold it down too), a VIP of both that could be
// announced and cannot, a service the kernel refused, this director's own
// health lost. A backend or VIP the change added or removed is not
// compared (a new backend that is not up yet is the operator's to bring
// up). No problems: nothing is worse.
func JudgeRollout(before, after Standing) []string {
	var problems []string
	for _, id := range slices.Sorted(maps.Keys(after.Up)) {
		if was, ok := before.Up[id]; (before.Unknown || ok && was) && !after.Up[id] && !after.DownElsewhere[id] {
			problems = append(problems, "backend "+id+" is down (it was up)")
		}
	}
	for _, v := range slices.SortedFunc(maps.Keys(after.Servable), netip.Addr.Compare) {
		if was, ok := before.Servable[v]; (before.Unknown || ok && was) && !after.Servable[v] {
			problems = append(problems, fmt.Sprintf("VIP %s can no longer be announced (below quorum or not in IPVS)", v))
		}
	}
	for _, s := range after.Refused {
		problems = append(problems, "service "+s+" is refused by the kernel")
	}
	if (before.Unknown || before.Healthy) && !after.Healthy {
		problems = append(problems, "this director's own health fails")
	}
	return problems
}

// RolloutInput is what the rollout's driver decides from.
type RolloutInput struct {
	Self string
	// Doc is the cluster's document (a rollout in progress, else nothing
	// is to be done).
	Doc *cluster.Document
	// Members is the gossip view with this director's own entry as it
	// publishes it; Roles their roles in the election.
	Members []cluster.Member
	Roles   map[string]cluster.Role
	// Seen is when this director first held Doc's version: a stage that
	// has not passed by Seen + StageTimeout(hold) is rolled back.
	Seen time.Time
	Now  time.Time
}

// StageTimeout is how long a stage may take, from when its document
// arrived, before the rollout is rolled back: its hold twice over and
// 30 s for the report to come (a director that cannot say the new
// services are good is not trusted with the next stage).
func StageTimeout(hold time.Duration) time.Duration { return 2*hold + 30*time.Second }

// RolloutStep is what the driver does now: Update is the rollout's next
// state to propose (nil: nothing yet), Why says why in words; WakeAt is
// when to look again (the stage's timeout).
type RolloutStep struct {
	Update *cluster.Rollout
	Why    string
	WakeAt time.Time
}

// RolloutDriver is the director that moves a rollout on: the first by
// name of the live members that hold its document and understand
// rollouts. Everyone computes the same from the same view; in a split
// each side has its own, and the newer document wins after the heal.
func RolloutDriver(doc *cluster.Document, members []cluster.Member) string {
	driver := ""
	for _, m := range members {
		if m.State == cluster.StateAlive && m.Bad == "" && m.Meta.Staged && m.Meta.ConfigVersion == doc.Version &&
			(driver == "" || m.Name < driver) {
			driver = m.Name
		}
	}
	return driver
}

// NextRollout is the driver's decision: it is pure.
//
// A director a stage reached that reports something worse off rolls the
// rollout back (its reason names the director and what). When every live
// director reached reports the new services good, the next stage adds
// one warm standby (StageStandby: none there, straight on), one active
// director (StageActive), then everyone else (StageAll); when all of them
// report good too, the rollout is done. A stage whose directors have not
// all reported good within StageTimeout is rolled back; one whose every
// director reached has gone (died, left) is given another.
func NextRollout(in RolloutInput) RolloutStep {
	doc := in.Doc
	if !doc.InProgress() || RolloutDriver(doc, in.Members) != in.Self {
		return RolloutStep{}
	}
	r := *doc.Rollout
	r.Reached = slices.Clone(r.Reached)
	byName := map[string]cluster.Member{}
	for _, m := range in.Members {
		byName[m.Name] = m
	}
	live := func(name string) bool {
		m, ok := byName[name]
		return ok && m.State == cluster.StateAlive && m.Bad == ""
	}
	// candidates are the live directors holding the document that the
	// rollout has not reached, with the role asked ("": any).
	candidates := func(role cluster.Role) []string {
		var out []string
		for _, m := range in.Members {
			if live(m.Name) && m.Meta.Staged && m.Meta.ConfigVersion == doc.Version && !slices.Contains(r.Reached, m.Name) &&
				(role == "" || in.Roles[m.Name] == role) {
				out = append(out, m.Name)
			}
		}
		slices.Sort(out)
		return out
	}
	rollBack := func(why string) RolloutStep {
		r.Outcome, r.Reason = cluster.OutcomeRolledBack, why
		return RolloutStep{Update: &r, Why: "rolled back: " + why}
	}

	deadline := in.Seen.Add(StageTimeout(r.Hold))
	// Every live director must hold this document before a stage is
	// chosen (a standby that has not got it yet is not passed over).
	var lagging []string
	for _, m := range in.Members {
		if live(m.Name) && m.Meta.ConfigVersion != doc.Version {
			lagging = append(lagging, m.Name)
		}
	}
	if len(lagging) > 0 {
		if !in.Now.Before(deadline) {
			return rollBack(fmt.Sprintf("%s did not take the rollout's document within %s", strings.Join(lagging, ", "), StageTimeout(r.Hold)))
		}
		return RolloutStep{WakeAt: deadline}
	}

	// The reports of the live directors reached.
	var holding []string
	liveReached := 0
	for _, name := range r.Reached {
		if !live(name) {
			continue
		}
		liveReached++
		rep := byName[name].Meta.Rollout
		switch {
		case rep != nil && rep.ID == r.ID && rep.State == cluster.RolloutWorse:
			return rollBack(fmt.Sprintf("on %s (stage %s) %s", name, r.Stage, strings.Join(rep.Problems, "; ")))
		case rep == nil || rep.ID != r.ID || rep.State != cluster.RolloutOK:
			holding = append(holding, name)
		}
	}
	if len(holding) > 0 {
		if !in.Now.Before(deadline) {
			return rollBack(fmt.Sprintf("%s did not report the new services good within %s (stage %s)",
				strings.Join(holding, ", "), StageTimeout(r.Hold), r.Stage))
		}
		return RolloutStep{WakeAt: deadline}
	}

	// Every live director reached says good (or none is reached yet, or
	// every one reached has gone): the stage is over, or it needs one.
	next := func(stage cluster.Stage, add []string, why string) RolloutStep {
		r.Stage = stage
		r.Reached = append(r.Reached, add...)
		return RolloutStep{Update: &r, Why: why}
	}
	stageDone := liveReached > 0 && len(r.Reached) > 0 && live(r.Reached[len(r.Reached)-1])
	switch r.Stage {
	case cluster.StageStandby:
		if !stageDone {
			if c := candidates(cluster.RoleStandby); len(c) > 0 {
				return next(cluster.StageStandby, c[:1], "canary on the standby "+c[0])
			}
		}
		if c := candidates(cluster.RoleActive); len(c) > 0 {
			return next(cluster.StageActive, c[:1], "canary on the active director "+c[0])
		}
		return next(cluster.StageAll, candidates(""), "no active director to try it on: to everyone")
	case cluster.StageActive:
		if !stageDone {
			if c := candidates(cluster.RoleActive); len(c) > 0 {
				return next(cluster.StageActive, c[:1], "canary on the active director "+c[0])
			}
		}
		return next(cluster.StageAll, candidates(""), "to every director")
	default: // StageAll
		if rest := candidates(""); len(rest) > 0 {
			// Joined since the stage began.
			return next(cluster.StageAll, rest, "to the directors that joined: "+strings.Join(rest, ", "))
		}
		r.Outcome = cluster.OutcomeRolledOut
		return RolloutStep{Update: &r, Why: "rolled out: every director reports it good"}
	}
}

// downElsewhere are the backends that a majority of the live directors
// applying the previous services (hash, short) hold down in their health
// reports; nil when none of them reports.
func downElsewhere(self, previous string, members []cluster.Member) map[string]bool {
	votes := map[string]int{}
	n := 0
	for _, m := range members {
		if m.Name == self || m.State != cluster.StateAlive || m.Bad != "" || m.Meta.Health == nil || m.Meta.AppliedHash() != previous {
			continue
		}
		n++
		for _, id := range m.Meta.Health.Down {
			votes[id]++
		}
	}
	var out map[string]bool
	for id, k := range votes {
		if 2*k > n {
			if out == nil {
				out = map[string]bool{}
			}
			out[id] = true
		}
	}
	return out
}

// rolloutRun is a rollout as the director a stage reached lives it: the
// standing just before it switched to the new services, and when the
// hold ends.
type rolloutRun struct {
	id     uint64
	before Standing
	until  time.Time
}

// rolloutReport is what this director says of the rollout that reached
// it, from its standing now (nil: no rollout reached it).
func rolloutReport(run *rolloutRun, now Standing, at time.Time) *cluster.RolloutReport {
	if run == nil {
		return nil
	}
	rep := &cluster.RolloutReport{ID: run.id, Until: run.until}
	if at.Before(run.until) {
		rep.State = cluster.RolloutHolding
		return rep
	}
	rep.Problems = JudgeRollout(run.before, now)
	rep.State = cluster.RolloutOK
	if len(rep.Problems) > 0 {
		rep.State = cluster.RolloutWorse
	}
	return rep
}

// driveRollout moves the rollout of doc on when this director is its
// driver (NextRollout), and has the loop look again at the stage's
// timeout. The loop's.
func (n *Node) driveRollout(self string, doc *cluster.Document, d Desired, rep *cluster.RolloutReport, maxActive int, seen, now time.Time) {
	// This director as it published itself this turn (the gossip's echo
	// of it, and Plan's view from the turn's start, may lag).
	me := d.Me
	me.Meta.ConfigVersion, me.Meta.ConfigHash, me.Meta.Staged, me.Meta.Rollout = doc.Version, doc.Short(), true, rep
	members := WithLocal(n.cl.Members(), me)
	step := NextRollout(RolloutInput{Self: self, Doc: doc, Members: members,
		Roles: cluster.Elect(members, max(maxActive, 1)), Seen: seen, Now: now})
	if !step.WakeAt.IsZero() {
		n.mu.Lock()
		n.snap.Desired.WakeAt = earliest(n.snap.Desired.WakeAt, step.WakeAt)
		n.mu.Unlock()
	}
	if step.Update == nil {
		n.log.Debug("rollout: waiting", "rollout", doc.Rollout.ID, "stage", doc.Rollout.Stage, "driver", RolloutDriver(doc, members), "until", step.WakeAt)
		return
	}
	next, err := n.cl.UpdateRollout(doc.Version, doc.Hash, *step.Update)
	if err != nil {
		// Another change came first (an apply, another driver's step in
		// a split): the next turn decides from it.
		n.log.Info("rollout: the step was not taken", "rollout", doc.Rollout.ID, "step", step.Why, "err", err)
		return
	}
	lvl := slog.LevelInfo
	if step.Update.Outcome == cluster.OutcomeRolledBack {
		lvl = slog.LevelWarn
	}
	n.log.Log(context.Background(), lvl, "rollout: "+step.Why, "rollout", doc.Rollout.ID, "stage", step.Update.Stage,
		"reached", strings.Join(step.Update.Reached, ","), "version", next.Version)
	n.Wake()
}

// ErrNotStaged is StartRollout's error when a live director runs a build
// that does not understand staged rollouts (it would reject the
// document, fall behind and withdraw).
var ErrNotStaged = errors.New("a director cannot take part in a staged rollout")

// StartRollout starts a staged rollout of services if the cluster's
// config is still baseVersion/baseHash (see cluster.ProposeRollout). Its
// stages hold RolloutHold(services) each. It returns at once; the
// document (GET /v1/config) follows the stages.
func (n *Node) StartRollout(baseVersion uint64, baseHash string, services []configs.Service) (*cluster.Document, error) {
	n.applyMu.Lock()
	defer n.applyMu.Unlock()
	n.mu.Lock()
	self := n.cfg.Node.Name
	n.mu.Unlock()
	for _, m := range n.cl.Members() {
		if m.Name != self && m.State == cluster.StateAlive && m.Bad == "" && !m.Meta.Staged {
			return nil, fmt.Errorf("%w: %s runs anycastd %s, which does not understand them: upgrade it, or apply at once (--now)",
				ErrNotStaged, m.Name, cmp.Or(m.Meta.Build, "(unknown build)"))
		}
	}
	d, err := n.cl.ProposeRollout(baseVersion, baseHash, services, RolloutHold(services))
	if err != nil {
		return nil, err
	}
	n.log.Info("rollout started through the API", "rollout", d.Version, "hash", d.Short(), "previous", shortHash(d.PreviousHash), "hold", d.Rollout.Hold)
	n.Wake()
	return d, nil
}
