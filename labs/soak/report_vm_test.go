package soak

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/anycastd/anycastd/ipvs"
)

// report gathers what the soak saw.
type report struct {
	mu         sync.Mutex
	mode       string // the routing setup
	boundRoute time.Duration
	seed       uint64
	duration   time.Duration
	start, end time.Time
	scheduled  int
	faults     []*fault
	kinds      map[string]*kindStats
	violations []violation
	notes      []string
	reqOK      int
	reqFailed  int
	// reqWhere counts failed requests by the window they fell in (see
	// failureWindow).
	reqWhere map[string]int
	pauses   int
	unattrPs int
	breaks   map[string]int // why -> count, all
	// breakList is each break (the first maxBreaks) with its time, why,
	// the flow's server and the faults around it; elsewhere each failed
	// request outside every detection window.
	breakList []brk
	elsewhere []brk
	// removedEnd counts the flows that ended after their backend was
	// removed by config and its drain_timeout passed.
	removedEnd int
	unattrBrk  int
	ownDown    int    // flows that ended with their own real server
	checks     int    // invariant checks made
	flows      int    // long flows kept open
	httpServer string // what serves HTTP on the real servers
	pending    []*pendingConv
	// routing is each director's BGP sessions at the end; logs the
	// routing lines of the daemons' and BIRD's logs.
	routing, logs string
	// stalls are the moments the VM did not run this process: a short
	// sleep that overslept by more than stallMin (software emulation
	// on a busy host stops the whole guest).
	stalls []stall
	// kstats are the kernel's packet-loss counters over the run.
	kstats *kstats
	// maxRSS (MiB) and maxGoroutines are the most any daemon reached.
	maxRSS        float64
	maxGoroutines float64
}

type kindStats struct {
	count     int
	reqFailed int
	breaks    map[string]int
	conv      map[string][]time.Duration // phase -> times
	// pauses are how long the long flows around it paused (and went on).
	pauses []time.Duration
	unconv map[string]int
}

type stall struct {
	at  time.Time // when it ended
	lag time.Duration
}

// stallMin is the oversleep that counts as a stall of the VM.
const stallMin = 250 * time.Millisecond

// watchStalls records the VM's stalls until stop is closed.
func (r *report) watchStalls(stop <-chan struct{}) {
	const step = 20 * time.Millisecond
	for {
		t0 := time.Now()
		select {
		case <-stop:
			return
		case <-time.After(step):
		}
		if lag := time.Since(t0) - step; lag > stallMin {
			r.mu.Lock()
			r.stalls = append(r.stalls, stall{at: time.Now(), lag: lag})
			r.mu.Unlock()
		}
	}
}

// stalledIn is how long the VM stood still between from and to.
func (r *report) stalledIn(from, to time.Time) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	var d time.Duration
	for _, s := range r.stalls {
		if s.at.After(from) && !s.at.After(to) {
			d += s.lag
		}
	}
	return d
}

type violation struct {
	at        time.Duration
	invariant string
	detail    string
	faults    []string
	state     string
	// stalled is how long the VM stood still in the 10 s before.
	stalled time.Duration
	// evidence is what the lab gathered when it saw the violation: each
	// director's announcements as its BGP speaker holds them, BIRD's
	// routes and the daemons' log lines of the seconds before.
	evidence string
}

// pendingConv is a fault phase waiting for the tier to show its effect.
type pendingConv struct {
	f     *fault
	phase string
	t0    time.Time
	done  func(*snapshot) bool
	// seenFalse: the tier showed the phase not done yet after t0 (a
	// phase already done then had nothing to converge: not counted).
	seenFalse bool
}

func newReport(mode string, seed uint64, d time.Duration) *report {
	bound := boundRouteBGP
	if mode != modeBGP {
		bound = boundRouteOSPF
	}
	flows, err := strconv.Atoi(os.Getenv("SOAK_FLOWS"))
	if err != nil || flows <= 0 {
		flows = 40
	}
	return &report{mode: mode, boundRoute: bound, flows: flows, seed: seed, duration: d, kinds: map[string]*kindStats{}, breaks: map[string]int{},
		reqWhere: map[string]int{}}
}

func (r *report) kind(k string) *kindStats {
	ks := r.kinds[k]
	if ks == nil {
		ks = &kindStats{breaks: map[string]int{}, conv: map[string][]time.Duration{}, unconv: map[string]int{}}
		r.kinds[k] = ks
	}
	return ks
}

func (r *report) begin(f *fault) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.faults = append(r.faults, f)
	r.kind(f.Kind).count++
	r.pending = append(r.pending, &pendingConv{f: f, phase: "fault", t0: f.start, done: convergedFault(r.mode, f)})
}

// restore records that f was lifted at t (under the lock: the checker
// reads it).
func (r *report) restore(f *fault, t time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f.restored = t
	r.pending = append(r.pending, &pendingConv{f: f, phase: "restore", t0: f.restored, done: convergedRestore(f)})
}

func (r *report) note(f *fault, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.notes = append(r.notes, fmt.Sprintf("%s %s: %s", since(r.start, time.Now()), f, msg))
}

// convergedFault is when a fault has taken effect where it shows.
func convergedFault(mode string, f *fault) func(*snapshot) bool {
	if mode != modeBGP && f.Kind == "kill9" {
		return nil // kernel mode leaves a killed daemon's routes in place, on purpose
	}
	switch f.Kind {
	case "kill9", "sigterm", "drain", "uplink", "blackhole":
		return func(s *snapshot) bool { return !slices.Contains(s.hops, f.Target) && len(s.hops) > 0 }
	case "rs_stop":
		addr := rsAddr(f.Target)
		return func(s *snapshot) bool { return allWeights(s, addr, func(w int) bool { return w == 0 }) }
	case "weight":
		addr := fmt.Sprintf("10.1.0.%d", 11+f.Arg)
		return func(s *snapshot) bool { return allWeights(s, addr, func(w int) bool { return w == 2 || w == 0 }) }
	case "bird_restart":
		return func(s *snapshot) bool { return len(s.hops) == 0 }
	case "backend":
		addr := fmt.Sprintf("10.1.0.%d", 11+f.Arg)
		return func(s *snapshot) bool { return noneHas(s, addr) }
	}
	return nil
}

// convergedRestore is when the tier is whole again after a restore.
func convergedRestore(f *fault) func(*snapshot) bool {
	whole := func(s *snapshot) bool { return len(s.hops) == maxActive && slices.Equal(s.hops, s.expectedHops()) }
	switch f.Kind {
	case "kill9", "sigterm", "drain", "uplink", "blackhole", "bird_restart":
		return whole
	case "rs_stop":
		addr := rsAddr(f.Target)
		return func(s *snapshot) bool { return allWeights(s, addr, func(w int) bool { return w > 0 }) }
	case "weight":
		addr := fmt.Sprintf("10.1.0.%d", 11+f.Arg)
		return func(s *snapshot) bool { return allWeights(s, addr, func(w int) bool { return w == 1 || w == 0 }) }
	case "backend":
		addr := fmt.Sprintf("10.1.0.%d", 11+f.Arg)
		return func(s *snapshot) bool { return allHave(s, addr) }
	}
	return nil
}

// services calls fn with every service of every running director's table.
func (s *snapshot) services(fn func(ipvs.Service)) {
	for name, tb := range s.tables {
		if !s.down[name] {
			for _, svc := range tb.Services {
				fn(svc)
			}
		}
	}
}

// weightsOf are the weights addr has in the running directors' services,
// -1 where a service does not hold it.
func weightsOf(s *snapshot, addr string) []int {
	var out []int
	s.services(func(svc ipvs.Service) {
		i := slices.IndexFunc(svc.Destinations, func(d ipvs.Destination) bool { return d.Addr.String() == addr })
		if i < 0 {
			out = append(out, -1)
		} else {
			out = append(out, svc.Destinations[i].Weight)
		}
	})
	return out
}

// allWeights: every running director's table gives addr a weight that ok
// accepts (in every service that holds it), and some service holds it.
func allWeights(s *snapshot, addr string, ok func(int) bool) bool {
	n := 0
	for _, w := range weightsOf(s, addr) {
		if w >= 0 && !ok(w) {
			return false
		}
		if w >= 0 {
			n++
		}
	}
	return n > 0
}

// noneHas: no running director's table holds addr.
func noneHas(s *snapshot, addr string) bool {
	return !slices.ContainsFunc(weightsOf(s, addr), func(w int) bool { return w >= 0 })
}

// allHave: every running director's table holds addr in every service.
func allHave(s *snapshot, addr string) bool {
	ws := weightsOf(s, addr)
	return len(ws) > 0 && !slices.Contains(ws, -1)
}

func rsAddr(name string) string {
	i := slices.Index(rsNames, name)
	return fmt.Sprintf("10.1.0.%d", 11+i)
}

// convergence resolves the phases that the snapshot shows done.
func (r *report) convergence(s *snapshot) {
	r.mu.Lock()
	defer r.mu.Unlock()
	keep := r.pending[:0]
	for _, p := range r.pending {
		if s.at.Before(p.t0) {
			keep = append(keep, p)
			continue
		}
		switch done := p.done != nil && p.done(s); {
		case p.done == nil:
		case done && p.seenFalse:
			r.kind(p.f.Kind).conv[p.phase] = append(r.kind(p.f.Kind).conv[p.phase], s.at.Sub(p.t0))
		case done:
			// Nothing to converge (a standby drained, say).
		case s.at.Sub(p.t0) > time.Minute:
			r.kind(p.f.Kind).unconv[p.phase]++
		default:
			p.seenFalse = true
			keep = append(keep, p)
		}
	}
	r.pending = keep
}

// faultsAround are the faults active at t, or restored within settle
// before it.
func (r *report) faultsAround(t time.Time, settle time.Duration) []*fault {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*fault
	for _, f := range r.faults {
		if f.start.After(t) {
			continue
		}
		if f.restored.IsZero() || t.Sub(f.restored) <= settle {
			out = append(out, f)
		}
	}
	return out
}

// rsDetect is how long a stopped real server may still be given new
// requests: the check's fall (2 x 1 s) and timeout (1 s), then the loop
// turn that programs weight 0, with room for the emulation.
const rsDetect = 4500 * time.Millisecond

// failureWindow says which detection window a request that ran from start
// to end overlaps: "director" (a director failed — killed, blackholed or
// its link down — and the router has not yet stopped sending to it: BFD
// and the route's withdrawal, bounded by boundRoute), "real server" (a
// real server stopped and the checks have not yet seen it), "router" (the
// router itself restarting, until its sessions are back), or "elsewhere",
// where no request may fail.
func (r *report) failureWindow(start, end time.Time) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	overlaps := func(from, to time.Time) bool { return !start.After(to) && !end.Before(from) }
	where := "elsewhere"
	for _, f := range r.faults {
		switch f.Kind {
		case "kill9", "blackhole", "uplink":
			if overlaps(f.start, f.start.Add(r.boundRoute)) {
				return "director"
			}
		case "rs_stop":
			if overlaps(f.start, f.start.Add(rsDetect)) {
				where = "real server"
			}
		case "bird_restart":
			to := end
			if !f.restored.IsZero() {
				to = f.restored.Add(r.boundRoute)
			}
			if overlaps(f.start, to) && where == "elsewhere" {
				where = "router"
			}
		}
	}
	return where
}

// maxBreaks is how many breaks (and failed requests) the report keeps to
// list, grouped.
const maxBreaks = 5000

// brk is one broken flow or failed request, for the report's lists.
type brk struct {
	t                   time.Time
	why, server, detail string
	faults              string
}

func faultList(start time.Time, fs []*fault) string {
	var out []string
	for _, f := range fs {
		out = append(out, fmt.Sprintf("%s (at %s)", f, since(start, f.start)))
	}
	return strings.Join(out, ", ")
}

// groupBreaks lists breaks, those of one cause (same kind, server and
// faults around, each within 2 s of the one before) on one line.
func groupBreaks(start time.Time, bs []brk, what string, maxLines int) []string {
	var out []string
	for i := 0; i < len(bs) && len(out) < maxLines; {
		j := i + 1
		for j < len(bs) && bs[j].why == bs[i].why && bs[j].server == bs[i].server && bs[j].faults == bs[i].faults && bs[j].t.Sub(bs[j-1].t) <= 2*time.Second {
			j++
		}
		when := since(start, bs[i].t)
		if j-i > 1 {
			when += "-" + since(start, bs[j-1].t)
		}
		to := ""
		if bs[i].server != "" {
			to = " to " + bs[i].server
		}
		out = append(out, fmt.Sprintf("at %s: %d %s %s%s (%s); faults around: %s", when, j-i, bs[i].why, what, to, bs[i].detail, bs[i].faults))
		i = j
	}
	return out
}

// traffic counts an event of the traffic helper, and charges failures to
// the faults around it.
func (r *report) traffic(e event) {
	t := time.Unix(0, e.T)
	from := t
	if e.Start != 0 {
		from = time.Unix(0, e.Start)
	}
	around := r.faultsAround(from, 5*time.Second)
	where := ""
	if e.Kind == "req_fail" {
		where = r.failureWindow(from, t)
	}
	removed := false
	if e.Kind == "flow_break" {
		removed = r.backendRemoved(e.Server, t)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch e.Kind {
	case "req":
		r.reqOK += e.OK
	case "req_fail":
		r.reqFailed++
		r.reqWhere[where]++
		if where == "elsewhere" && len(r.elsewhere) < maxBreaks {
			r.elsewhere = append(r.elsewhere, brk{t: t, why: "failed", detail: e.Err, faults: faultList(r.start, around)})
		}
		for _, k := range kindsOf(around) {
			r.kind(k).reqFailed++
		}
	case "flow_pause":
		r.pauses++
		if len(around) == 0 {
			r.unattrPs++
		}
		for _, k := range kindsOf(around) {
			r.kind(k).pauses = append(r.kind(k).pauses, t.Sub(from))
		}
	case "flow_break":
		for _, f := range around {
			if f.Kind == "rs_stop" && f.Target == e.Server && f.restored.IsZero() {
				// Its own real server is down: the flow cannot
				// survive that, and is not counted as broken.
				r.ownDown++
				return
			}
		}
		if removed {
			// Its backend was removed by config and the drain
			// time is over: the operator asked for that.
			r.removedEnd++
			return
		}
		r.breaks[e.Why]++
		if len(r.breakList) < maxBreaks {
			r.breakList = append(r.breakList, brk{t: from, why: e.Why, server: e.Server, detail: e.Err, faults: faultList(r.start, around)})
		}
		if len(around) == 0 {
			r.unattrBrk++
		}
		for _, k := range kindsOf(around) {
			r.kind(k).breaks[e.Why]++
		}
	}
}

// backendRemoved reports whether server's backend was removed by config
// at least drainTimeout before t, and not added back more than
// drainTimeout before t (the removal and the re-adding each take a moment
// to reach every director): a flow to it may end then. One that ends
// earlier is broken.
func (r *report) backendRemoved(server string, t time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.faults {
		if f.Kind == "backend" && rsNames[f.Arg] == server && !f.start.After(t.Add(-drainTimeout)) &&
			(f.restored.IsZero() || f.restored.After(t.Add(-drainTimeout))) {
			return true
		}
	}
	return false
}

func kindsOf(fs []*fault) []string {
	var out []string
	for _, f := range fs {
		if !slices.Contains(out, f.Kind) {
			out = append(out, f.Kind)
		}
	}
	return out
}

func (r *report) violation(inv, detail string, s ...*snapshot) {
	r.violationWith(inv, detail, "", s...)
}

func (r *report) violationWith(inv, detail, evidence string, s ...*snapshot) {
	// Dated by the snapshot that showed it, not by now: gathering the
	// evidence (probes, logs) takes seconds under emulation, and the
	// faults around and the VM's stalls are those of the snapshot's time.
	now := time.Now()
	if len(s) > 0 && s[0] != nil && !s[0].at.IsZero() {
		now = s[0].at
	}
	var fs []string
	for _, f := range r.faultsAround(now, 10*time.Second) {
		fs = append(fs, fmt.Sprintf("%s (at %s)", f, since(r.start, f.start)))
	}
	state := ""
	if len(s) > 0 && s[0] != nil {
		state = describe(s[0])
	}
	stalled := r.stalledIn(now.Add(-10*time.Second), now)
	if k := r.kstats.series(now.Add(-10*time.Second), now, r.start); k != "" {
		evidence += "kernel counters that rose, per sample, in the 10 s before:\n" + k
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.violations = append(r.violations, violation{at: now.Sub(r.start), invariant: inv, detail: detail, faults: fs, state: state,
		stalled: stalled, evidence: evidence})
}

func describe(s *snapshot) string {
	var b strings.Builder
	fmt.Fprintf(&b, "router next hops %v\n", s.hops)
	for _, name := range dirNames {
		st, ok := s.status[name]
		switch {
		case s.down[name]:
			fmt.Fprintf(&b, "  %s: not running\n", name)
		case !ok:
			fmt.Fprintf(&b, "  %s: no answer\n", name)
		default:
			ann := "no"
			for _, v := range st.VIPs {
				if v.VIP.String() == vip && v.Announced {
					ann = "yes"
					if v.GracefulShutdown {
						ann = "gshut"
					}
				}
			}
			fmt.Fprintf(&b, "  %s: role %s, eligible %v, announced %s, config v%d, reason %q\n", name, st.Role, st.Eligible, ann, st.Config.Version, st.Reason)
		}
	}
	return b.String()
}

func since(start, t time.Time) string { return t.Sub(start).Round(100 * time.Millisecond).String() }

func med(ds []time.Duration) (time.Duration, time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2], s[len(s)-1]
}

func (r *report) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "soak report (%s): seed %d, %s planned, ran %s, %d faults played of %d scheduled\n",
		r.mode, r.seed, r.duration, r.end.Sub(r.start).Round(time.Second), len(r.faults), r.scheduled)
	fmt.Fprintf(&b, "bounds: router = announcers within %s, announce rules %s, IPVS tables equal %s, config behind %s, API answers %s\n",
		r.boundRoute, boundAnnounce, boundTable, boundBehind, boundAnswer)
	fmt.Fprintf(&b, "real servers: HTTP on :80 by %s, the long flows' echo on :9000 by the lab's own server\n", r.httpServer)
	fmt.Fprintf(&b, "daemons: at most %.0f MiB resident and %.0f goroutines (limits %d MiB, %d)\n", r.maxRSS, r.maxGoroutines, maxRSSMiB, maxGoroutines)
	fmt.Fprintf(&b, "invariants checked %d times (every %s on average: software emulation)\n", r.checks, (r.end.Sub(r.start) / time.Duration(max(r.checks, 1))).Round(time.Millisecond))
	var worst, total time.Duration
	for _, st := range r.stalls {
		worst, total = max(worst, st.lag), total+st.lag
	}
	if c := r.kstats.cpuSummary(); c != "" {
		fmt.Fprintf(&b, "the VM's CPU: %s\n", c)
	}
	if k := r.kstats.delta(r.start, r.end); k != "" {
		fmt.Fprintf(&b, "kernel counters over the run: %s\n", k)
	}
	fmt.Fprintf(&b, "VM stalls (a 20 ms sleep overslept by over %s): %d, worst %s, %s in all\n", stallMin, len(r.stalls),
		worst.Round(time.Millisecond), total.Round(time.Millisecond))
	fmt.Fprintf(&b, "requests: %d served, %d failed: %d in a director's detection window (BFD and the route's withdrawal, %s from the failure), %d in a stopped real server's (%s), %d while the router restarted, %d elsewhere\n",
		r.reqOK, r.reqFailed, r.reqWhere["director"], r.boundRoute, r.reqWhere["real server"], rsDetect, r.reqWhere["router"], r.reqWhere["elsewhere"])
	fmt.Fprintf(&b, "long flows: %d open all the time, each echoing a line every 100-200 ms; a pause is an echo later than %s that then came (the flow goes on), a break a reset, a wrong peer or no echo within %s (a stall)\n",
		r.flows, pauseAfter, breakAfter)
	fmt.Fprintf(&b, "long flows: %d pauses (%d outside any fault), broken %s (%d outside any fault); %d more ended with their own real server, %d after their backend was removed by config and its drain_timeout (%s) passed\n",
		r.pauses, r.unattrPs, countsString(r.breaks), r.unattrBrk, r.ownDown, r.removedEnd, drainTimeout)
	kinds := make([]string, 0, len(r.kinds))
	for k := range r.kinds {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	fmt.Fprintf(&b, "a flow-fault is one flow through one fault; a pause or break is charged to every fault active or restored within 5 s of its start (so a kind's survival is a lower bound)\n")
	fmt.Fprintf(&b, "%-13s %5s %8s %-22s %-26s %-17s %-22s %-22s\n", "fault", "count", "req fail", "flows paused med/max", "flows broken", "flow-faults kept", "converge fault med/max", "converge restore med/max")
	for _, k := range kinds {
		ks := r.kinds[k]
		fm, fx := med(ks.conv["fault"])
		rm, rx := med(ks.conv["restore"])
		conv := func(m, x time.Duration, n, un int) string {
			if n == 0 && un == 0 {
				return "-"
			}
			s := fmt.Sprintf("%s/%s (%d)", m.Round(10*time.Millisecond), x.Round(10*time.Millisecond), n)
			if un > 0 {
				s += fmt.Sprintf(" +%d never", un)
			}
			return s
		}
		exposed, broken := ks.count*r.flows, 0
		for _, n := range ks.breaks {
			broken += n
		}
		kept := "-"
		if exposed > 0 {
			kept = fmt.Sprintf("%.2f%% of %d", 100*float64(max(exposed-broken, 0))/float64(exposed), exposed)
		}
		paused := "-"
		if len(ks.pauses) > 0 {
			pm, px := med(ks.pauses)
			paused = fmt.Sprintf("%d %s/%s", len(ks.pauses), pm.Round(100*time.Millisecond), px.Round(100*time.Millisecond))
		}
		fmt.Fprintf(&b, "%-13s %5d %8d %-22s %-26s %-17s %-22s %-22s\n", k, ks.count, ks.reqFailed, paused, countsString(ks.breaks), kept,
			conv(fm, fx, len(ks.conv["fault"]), ks.unconv["fault"]), conv(rm, rx, len(ks.conv["restore"]), ks.unconv["restore"]))
	}
	if len(r.breakList) > 0 {
		fmt.Fprintf(&b, "long flows broken (one line per cause, the first 60):\n")
		for _, l := range groupBreaks(r.start, r.breakList, "of flows", 60) {
			fmt.Fprintf(&b, "  %s\n", l)
		}
	}
	if len(r.elsewhere) > 0 {
		fmt.Fprintf(&b, "requests failed outside every detection window (one line per cause, the first 30):\n")
		for _, l := range groupBreaks(r.start, r.elsewhere, "requests", 30) {
			fmt.Fprintf(&b, "  %s\n", l)
		}
	}
	fmt.Fprintf(&b, "invariant violations: %d\n", len(r.violations))
	for _, v := range r.violations {
		fmt.Fprintf(&b, "- at %s, invariant %s: %s\n  faults around: %s\n  the VM stood still %s in the 10 s before\n%s", v.at.Round(100*time.Millisecond), v.invariant, v.detail,
			strings.Join(v.faults, ", "), v.stalled.Round(time.Millisecond), indent(v.state))
		if v.evidence != "" {
			fmt.Fprintf(&b, "  evidence:\n%s", indent(indent(v.evidence)))
		}
	}
	if r.routing != "" {
		fmt.Fprintf(&b, "routing at the end:\n%s", indent(r.routing))
	}
	if len(r.violations) > 0 && r.logs != "" {
		fmt.Fprintf(&b, "logs (routing lines, last of each):\n%s", indent(r.logs))
	}
	if len(r.notes) > 0 {
		fmt.Fprintf(&b, "notes:\n")
		for _, n := range r.notes {
			fmt.Fprintf(&b, "  %s\n", n)
		}
	}
	return b.String()
}

func indent(s string) string {
	if s == "" {
		return ""
	}
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ") + "\n"
}

func countsString(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}
