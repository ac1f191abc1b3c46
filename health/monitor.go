package health

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"sort"
	"sync"
	"time"

	"github.com/anycastd/anycastd/configs"
)

// Spec is one target to watch: an ID the caller chooses (the director uses
// "service/address:port"), the check and the target.
type Spec struct {
	ID     string
	Check  configs.Check
	Target Target
}

// Status is a target's health as the monitor sees it.
type Status struct {
	ID     string
	Target Target
	State  State
	// Since is when State began (zero while Unknown).
	Since time.Time
	// Successes and Failures are the consecutive counts (rise/fall).
	Successes, Failures int
	// Checks is how many probes have run.
	Checks uint64
	// Last is the most recent result. Its Err keeps the failure's
	// message, not the probe's error value (a dial error's chain would be
	// kept for every target that is down).
	Last Result
}

// Monitor runs probes on their intervals and tracks each target's status
// with rise/fall. At most Concurrency probes run at once; the first run of
// each target is spread over its interval so that a large set does not
// probe in bursts. Set reconfigures it while it runs, without restarting
// the probes whose spec did not change. Safe for concurrent use.
type Monitor struct {
	log     *slog.Logger
	workers int

	mu      sync.Mutex
	targets map[string]*entry
	queue   schedule
	subs    map[*Subscription]bool
	wake    chan struct{}
	// sleepUntil is when Run wakes by itself: an entry due earlier must
	// wake it (signal); one due later need not (the usual case of a
	// check that has finished and is due again an interval on).
	sleepUntil time.Time
	rnd        *rand.Rand
	// newProbe builds probes; tests replace it with scripted ones.
	newProbe func(configs.Check, Target) (Probe, error)
	// stalls are this process's recent stalls (see stall.go); a timeout
	// during one is not the backend's.
	stalls stallWatch
	// loggedStalls is the stall count when a discounted timeout was last
	// logged: one line per stall, however many probes it cost.
	loggedStalls uint64
}

// entry is one target's state. It is kept small (a daemon watches tens of
// thousands): the Status callers see is built from it on demand, the
// rise/fall state living only in damp.
type entry struct {
	id     string
	target Target
	// check is shared by the entries that have an equal check (every
	// backend of a service): with 10,000 targets a copy each is megabytes.
	check *configs.Check
	probe Probe
	damp  Dampener
	// discounted is how many timeouts in a row were not counted because
	// this process stalled during them.
	discounted uint8
	checks     uint64
	last       Result
	next       time.Time
	index      int // in queue; -1 while running or removed
	running    bool
	removed    bool
}

func (e *entry) status() Status {
	st := Status{ID: e.id, Target: e.target, Checks: e.checks, Last: e.last}
	st.State, st.Since = e.damp.State()
	st.Successes, st.Failures = e.damp.Counts()
	return st
}

// NewMonitor returns a monitor with at most concurrency probes in flight.
func NewMonitor(log *slog.Logger, concurrency int) *Monitor {
	return NewMonitorWith(log, concurrency, New)
}

// NewMonitorWith is NewMonitor with probes built by newProbe in place of
// New (a test's scripted probes, or New's wrapped).
func NewMonitorWith(log *slog.Logger, concurrency int, newProbe func(configs.Check, Target) (Probe, error)) *Monitor {
	return &Monitor{
		log:      log,
		workers:  max(concurrency, 1),
		targets:  map[string]*entry{},
		subs:     map[*Subscription]bool{},
		wake:     make(chan struct{}, 1),
		rnd:      rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		newProbe: newProbe,
	}
}

// Set makes specs the set of watched targets. A target whose spec is
// unchanged keeps its probe, schedule and status; one whose check changed
// (its settings, or the address it probes: another port) keeps its status
// (state, rise/fall counts, last result) and takes the new check in
// place, as such a change is no news about the backend, until the new
// check's rise or fall says otherwise; a new ID starts Unknown; one not
// in specs is dropped. If any spec cannot be built into a probe, Set
// changes nothing and returns every such error.
func (m *Monitor) Set(specs []Spec) error {
	type built struct {
		spec  Spec
		check *configs.Check
		probe Probe
	}
	var errs []error
	var add []built
	seen := map[string]bool{}
	// An entry's id and target never change, and its check changes only
	// under the lock: reading them under it is safe.
	m.mu.Lock()
	current := make(map[string]*entry, len(m.targets))
	for id, e := range m.targets {
		current[id] = e
	}
	same := func(e *entry, s Spec) bool { return e.target == s.Target && reflect.DeepEqual(*e.check, s.Check) }
	unchanged := make(map[string]bool, len(specs))
	for _, s := range specs {
		if old, ok := current[s.ID]; ok && same(old, s) {
			unchanged[s.ID] = true
		}
	}
	m.mu.Unlock()
	var shared *configs.Check
	for _, s := range specs {
		if seen[s.ID] {
			errs = append(errs, fmt.Errorf("target %s: listed twice", s.ID))
			continue
		}
		seen[s.ID] = true
		if unchanged[s.ID] {
			continue
		}
		p, err := m.newProbe(s.Check, s.Target)
		if err != nil {
			errs = append(errs, fmt.Errorf("target %s: %w", s.ID, err))
			continue
		}
		// Consecutive specs with equal checks (a service's backends)
		// share one copy.
		if shared == nil || !reflect.DeepEqual(*shared, s.Check) {
			c := s.Check
			shared = &c
		}
		add = append(add, built{s, shared, p})
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	for id, e := range m.targets {
		if !seen[id] {
			m.drop(e)
			delete(m.targets, id)
		}
	}
	for _, b := range add {
		if old, ok := m.targets[b.spec.ID]; ok {
			// Same backend, new check (its settings, or where it
			// probes: another port): the status stays until the new
			// check's rise or fall changes it. Starting over from
			// unknown would count the backend out of its quorum on
			// every director at once, until the first probe, and
			// withdraw the VIP everywhere for a change to a check.
			interval := old.check.Interval
			old.check, old.probe, old.target = b.check, b.probe, b.spec.Target
			old.damp.Rise, old.damp.Fall = b.check.Rise, b.check.Fall
			if old.index >= 0 && b.check.Interval < interval {
				// Not later than the new interval from now.
				if due := now.Add(b.check.Interval); old.next.After(due) {
					old.next = due
					heap.Fix(&m.queue, old.index)
				}
			}
			continue
		}
		e := &entry{id: b.spec.ID, target: b.spec.Target, check: b.check, probe: b.probe, index: -1,
			damp: Dampener{Rise: b.check.Rise, Fall: b.check.Fall}}
		// Spread first runs over one interval.
		if iv := b.check.Interval; iv > 0 {
			e.next = now.Add(time.Duration(m.rnd.Int64N(int64(iv))))
		} else {
			e.next = now
		}
		m.targets[b.spec.ID] = e
		heap.Push(&m.queue, e)
	}
	m.signal()
	return nil
}

func (m *Monitor) drop(e *entry) {
	e.removed = true
	if e.index >= 0 {
		heap.Remove(&m.queue, e.index)
	}
}

func (m *Monitor) signal() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Run probes until ctx ends; it returns after every probe it started has
// returned.
//
// A probe the connector cannot run (see Run's body) runs in a goroutine of
// its own, started when it is due; a semaphore of Concurrency slots
// bounds all of them, the connector's included. A fixed pool of that many
// workers would park them all (at the default 1,024, about 7 MB of
// stacks) in a daemon whose probes mostly take microseconds.
func (m *Monitor) Run(ctx context.Context) error {
	slots := make(chan struct{}, m.workers)
	var wg sync.WaitGroup
	defer wg.Wait()
	stallCtx, stopStalls := context.WithCancel(ctx)
	wg.Add(1)
	go func() { defer wg.Done(); m.stalls.run(stallCtx) }()
	defer stopStalls()
	// TCP checks and plain HTTP checks run on one epoll instance (see
	// connector and connectorProbe), made when the first one is due (a
	// monitor without any, as in the tests that script their probes
	// under synctest, never makes one); the other checks (TLS, a body to
	// match, udp, dns, exec), and all of them if it cannot be made, run
	// in goroutines.
	var conn *connector
	connFailed := false
	connDone := make(chan struct{})
	defer func() {
		if conn != nil {
			<-connDone
		}
	}()
	connector := func() *connector {
		if conn == nil && !connFailed {
			c, err := newConnector()
			if err != nil {
				connFailed = true
				if m.log != nil {
					m.log.Warn("health: TCP checks run through Go's dialer", "err", err)
				}
				return nil
			}
			conn = c
			go func() { c.run(ctx); close(connDone) }()
		}
		return conn
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		m.mu.Lock()
		now := time.Now()
		var due []job
		// The checks due within batchSlack start together: one wake-up
		// for several (10,000 targets at 1 s would wake it 10,000 times
		// a second otherwise); none starts more than that early.
		for soon := now.Add(batchSlack); m.queue.Len() > 0 && !m.queue[0].next.After(soon); {
			e := heap.Pop(&m.queue).(*entry)
			e.running = true
			// Set may give the entry a new check meanwhile: the
			// probe runs with the one it was due with.
			due = append(due, job{e, e.probe, e.check.Timeout})
		}
		wait := time.Hour
		if m.queue.Len() > 0 {
			wait = m.queue[0].next.Sub(now)
		}
		m.sleepUntil = now.Add(wait)
		m.mu.Unlock()

		for i, e := range due {
			select {
			case slots <- struct{}{}: // blocks while every slot is taken
			case <-ctx.Done():
				m.unclaim(due[i:])
				return nil
			}
			wg.Add(1)
			if cp, ok := e.probe.(connectorProbe); ok {
				if addr, conv, ok := cp.onConnector(); ok && connector() != nil {
					j := e
					conn.start(addr, e.timeout, conv,
						func(r Result) { <-slots; m.finish(j.entry, r); wg.Done() },
						func() { <-slots; m.unclaim([]job{j}); wg.Done() })
					continue
				}
			}
			go func() {
				defer wg.Done()
				r := Run(ctx, e.probe, e.timeout)
				<-slots
				m.finish(e.entry, r)
			}()
		}
		if len(due) > 0 {
			continue // time has passed while handing out work
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-m.wake:
			timer.Stop() // Go 1.23+ timers: no stale value to drain
		case <-timer.C:
		}
	}
}

// batchSlack is how early a check may start, so that the checks due
// within it start on one wake-up of Run.
const batchSlack = 5 * time.Millisecond

// requeueLocked puts e back on the queue, waking Run if e is due before
// Run would wake by itself.
func (m *Monitor) requeueLocked(e *entry) {
	heap.Push(&m.queue, e)
	if e.next.Before(m.sleepUntil) {
		m.signal()
	}
}

// connectorProbe is a probe a Monitor may run on its connector (see
// connector): the address to connect to, the conversation after it (nil:
// the connect is the check), and whether this probe can be run so.
type connectorProbe interface {
	onConnector() (netip.AddrPort, *conversation, bool)
}

// job is a due entry with the probe it runs.
type job struct {
	*entry
	probe   Probe
	timeout time.Duration
}

// unclaim puts entries taken off the queue but never started back on it,
// so that a later Run probes them.
func (m *Monitor) unclaim(es []job) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range es {
		e.running = false
		if !e.removed {
			m.requeueLocked(e.entry)
		}
	}
}

func (m *Monitor) finish(e *entry, r Result) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e.running = false
	if e.removed {
		return
	}
	now := time.Now()
	if !r.OK && timedOut(r.Err) && e.discounted < maxDiscounted && m.stalls.during(now.Add(-r.Latency), now) {
		// Our stall, not the backend's answer: run it again at once.
		e.discounted++
		if n := m.stalls.total(); n != m.loggedStalls && m.log != nil {
			m.loggedStalls = n
			m.log.Info("health: a check timed out while this process was not running; not counted, run again",
				"target", e.id, "took", r.Latency.Round(time.Millisecond), "err", r.Err)
		}
		e.next = now
		m.requeueLocked(e)
		return
	}
	e.discounted = 0
	changed := e.damp.Observe(r.OK, now)
	if r.Err != nil {
		// Only the message is ever read; a dial error's chain (OpError,
		// SyscallError, addresses) is several times its size, kept for
		// every target that is down.
		if e.last.Err != nil && e.last.Err.Error() == r.Err.Error() {
			r.Err = e.last.Err
		} else {
			r.Err = errors.New(r.Err.Error())
		}
	}
	e.checks++
	e.last = r
	if changed {
		st := e.status()
		if m.log != nil {
			reason := ""
			if r.Err != nil {
				reason = r.Err.Error()
			}
			// The deciding check's duration: a timeout that took much
			// longer than the check's timeout fired late (this process
			// was not running), which the log should let one see.
			m.log.Info("backend health changed", "target", e.id, "state", st.State.String(), "reason", reason,
				"took", r.Latency.Round(time.Millisecond))
		}
		for s := range m.subs {
			s.push(st)
		}
	}
	e.next = now.Add(e.check.Interval)
	m.requeueLocked(e)
}

// Snapshot returns every target's status, sorted by ID.
func (m *Monitor) Snapshot() []Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Status, 0, len(m.targets))
	for _, e := range m.targets {
		out = append(out, e.status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// States returns every target's state by ID: what a loop turn needs,
// without copying (and sorting) each target's whole status.
func (m *Monitor) States() map[string]State {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]State, len(m.targets))
	for id, e := range m.targets {
		out[id], _ = e.damp.State()
	}
	return out
}

// Status returns one target's status.
func (m *Monitor) Status(id string) (Status, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.targets[id]
	if !ok {
		return Status{}, false
	}
	return e.status(), true
}

// Subscribe returns a subscription to state changes. Nothing is lost: the
// changes queue until Drain takes them.
func (m *Monitor) Subscribe() *Subscription {
	s := &Subscription{c: make(chan struct{}, 1), m: m}
	m.mu.Lock()
	m.subs[s] = true
	m.mu.Unlock()
	return s
}

// Subscription receives state changes (up, down) of a Monitor's targets.
type Subscription struct {
	mu sync.Mutex
	q  []Status
	c  chan struct{}
	m  *Monitor
}

// C is signalled when changes are waiting.
func (s *Subscription) C() <-chan struct{} { return s.c }

// Drain returns the waiting changes, oldest first.
func (s *Subscription) Drain() []Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.q
	s.q = nil
	return q
}

// Close ends the subscription.
func (s *Subscription) Close() {
	s.m.mu.Lock()
	delete(s.m.subs, s)
	s.m.mu.Unlock()
}

func (s *Subscription) push(st Status) {
	s.mu.Lock()
	s.q = append(s.q, st)
	s.mu.Unlock()
	select {
	case s.c <- struct{}{}:
	default:
	}
}

// schedule is a min-heap of entries by next run time.
type schedule []*entry

func (q schedule) Len() int           { return len(q) }
func (q schedule) Less(i, j int) bool { return q[i].next.Before(q[j].next) }
func (q schedule) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *schedule) Push(x any) {
	e := x.(*entry)
	e.index = len(*q)
	*q = append(*q, e)
}
func (q *schedule) Pop() any {
	old := *q
	e := old[len(old)-1]
	old[len(old)-1] = nil
	e.index = -1
	*q = old[:len(old)-1]
	return e
}
