package health

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/anycastd/anycastd/configs"
)

func TestDampener(t *testing.T) {
	cases := []struct {
		name       string
		rise, fall int
		results    string // u = success, d = failure
		states     string // state after each result: U, D
	}{
		{"first result decides up", 2, 3, "u", "U"},
		{"first result decides down", 2, 3, "d", "D"},
		{"fall needs consecutive failures", 2, 3, "uddduu", "UUUDDU"},
		{"a success resets the failure count", 2, 3, "uddudddd", "UUUUUUDD"},
		{"rise needs consecutive successes", 3, 1, "duududuuu", "DDDDDDDDU"},
		{"flapping stays put", 2, 2, "udududud", "UUUUUUUU"},
		{"rise 1 fall 1 follows every result", 1, 1, "ududd", "UDUDD"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := Dampener{Rise: tc.rise, Fall: tc.fall}
			t0 := time.Unix(1000, 0)
			var got strings.Builder
			var lastChange time.Time
			for i, r := range tc.results {
				now := t0.Add(time.Duration(i) * time.Second)
				if d.Observe(r == 'u', now) {
					lastChange = now
				}
				st, since := d.State()
				got.WriteString(map[State]string{Up: "U", Down: "D", Unknown: "?"}[st])
				if !since.Equal(lastChange) {
					t.Errorf("result %d: since %v, want %v", i, since, lastChange)
				}
			}
			if got.String() != tc.states {
				t.Errorf("states %s, want %s", got.String(), tc.states)
			}
		})
	}
}

// scripted is a probe whose results follow a script ('u' up, 'd' down;
// the last one repeats), and that records how many run at once.
type scripted struct {
	mu       sync.Mutex
	script   string
	n        int
	hold     time.Duration
	inflight *atomic.Int32
	peak     *atomic.Int32
}

func (s *scripted) Check(ctx context.Context) Result {
	if s.inflight != nil {
		n := s.inflight.Add(1)
		defer s.inflight.Add(-1)
		for {
			p := s.peak.Load()
			if n <= p || s.peak.CompareAndSwap(p, n) {
				break
			}
		}
	}
	if s.hold > 0 {
		select {
		case <-time.After(s.hold):
		case <-ctx.Done():
			return Result{Err: ctx.Err()}
		}
	}
	s.mu.Lock()
	c := s.script[min(s.n, len(s.script)-1)]
	s.n++
	s.mu.Unlock()
	switch c {
	case 'u':
		return Result{OK: true}
	case 't':
		return Result{Err: fmt.Errorf("dial tcp 10.0.0.1:80: %w", os.ErrDeadlineExceeded), Latency: 400 * time.Millisecond}
	}
	return Result{Err: errors.New("scripted failure")}
}

// runs is how many times the probe ran.
func (s *scripted) runs() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

func spec(id string, interval time.Duration, rise, fall int) Spec {
	return Spec{ID: id, Target: Target{Addr: netip.MustParseAddrPort("127.0.0.1:80")},
		Check: configs.Check{Type: "tcp", Interval: interval, Timeout: interval / 2, Rise: rise, Fall: fall}}
}

func TestMonitorRiseFallOnTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewMonitor(nil, 4)
		probe := &scripted{script: "uuudddduuu"}
		m.newProbe = func(configs.Check, Target) (Probe, error) { return probe, nil }
		sub := m.Subscribe()
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- m.Run(ctx) }()
		start := time.Now()
		if err := m.Set([]Spec{spec("web/10.0.0.1:80", time.Second, 2, 3)}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(11 * time.Second)
		synctest.Wait()
		var changes []string
		for _, st := range sub.Drain() {
			// The first run lands somewhere in the first interval; every
			// later one exactly one interval after the previous.
			changes = append(changes, fmt.Sprintf("%s after %d checks", st.State, st.Checks))
		}
		want := []string{"up after 1 checks", "down after 6 checks", "up after 9 checks"}
		if !slices.Equal(changes, want) {
			t.Errorf("changes %v, want %v", changes, want)
		}
		st, _ := m.Status("web/10.0.0.1:80")
		if st.Checks != 10 && st.Checks != 11 {
			t.Errorf("%d checks in 11 s at 1 s", st.Checks)
		}
		if d := st.Since.Sub(start); d < 8*time.Second || d >= 9*time.Second {
			t.Errorf("up again after %s, want during the 9th second", d)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

func TestMonitorLimitsConcurrency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewMonitor(nil, 3)
		var inflight, peak atomic.Int32
		m.newProbe = func(configs.Check, Target) (Probe, error) {
			return &scripted{script: "u", hold: 300 * time.Millisecond, inflight: &inflight, peak: &peak}, nil
		}
		var specs []Spec
		for i := range 50 {
			specs = append(specs, spec(fmt.Sprintf("t%d", i), time.Second, 1, 1))
		}
		m.Set(specs)
		ctx, cancel := context.WithCancel(t.Context())
		go m.Run(ctx)
		time.Sleep(20 * time.Second)
		cancel()
		synctest.Wait()
		if p := peak.Load(); p != 3 {
			t.Errorf("peak in flight %d, want the limit 3", p)
		}
		states := m.States()
		if len(states) != 50 {
			t.Errorf("States has %d targets, want 50", len(states))
		}
		for _, st := range m.Snapshot() {
			if st.Checks == 0 {
				t.Errorf("%s never ran: the limit must delay probes, not starve them", st.ID)
			}
			if s, ok := states[st.ID]; !ok || s != st.State {
				t.Errorf("%s: state %s, States says %s (present %v)", st.ID, st.State, s, ok)
			}
		}
	})
}

func TestMonitorSetKeepsUnchanged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewMonitor(nil, 4)
		built := map[string]int{}
		m.newProbe = func(c configs.Check, tg Target) (Probe, error) {
			built[tg.Addr.String()]++
			return &scripted{script: "u"}, nil
		}
		a, b := spec("a", time.Second, 1, 1), spec("b", time.Second, 1, 1)
		b.Target.Addr = netip.MustParseAddrPort("127.0.0.2:80")
		m.Set([]Spec{a, b})
		ctx, cancel := context.WithCancel(t.Context())
		go m.Run(ctx)
		time.Sleep(5 * time.Second)
		before, _ := m.Status("a")

		// a unchanged, b's check changed, c new.
		b2 := b
		b2.Check.Rise = 3
		c := spec("c", time.Second, 1, 1)
		c.Target.Addr = netip.MustParseAddrPort("127.0.0.3:80")
		if err := m.Set([]Spec{a, b2, c}); err != nil {
			t.Fatal(err)
		}
		if built["127.0.0.1:80"] != 1 || built["127.0.0.2:80"] != 2 || built["127.0.0.3:80"] != 1 {
			t.Errorf("probes built: %v (a must be kept, b rebuilt, c built)", built)
		}
		after, _ := m.Status("a")
		if after.Checks < before.Checks || after.State != Up {
			t.Errorf("unchanged target lost its status: %+v -> %+v", before, after)
		}
		// A changed check on the same backend is no news about the
		// backend: b keeps its state (it would go Unknown everywhere at
		// once, and its VIP below quorum on every director).
		if st, _ := m.Status("b"); st.State != Up || st.Checks == 0 {
			t.Errorf("a target whose check changed lost its status: %+v", st)
		}
		// ... and is probed with the new check from then on.
		m.newProbe = func(configs.Check, Target) (Probe, error) { return &scripted{script: "d"}, nil }
		b3 := b2
		b3.Check.Timeout = 100 * time.Millisecond
		if err := m.Set([]Spec{a, b3, c}); err != nil {
			t.Fatal(err)
		}
		if st, _ := m.Status("b"); st.State != Up {
			t.Errorf("b lost its state on a timeout change: %+v", st)
		}
		time.Sleep(2 * time.Second)
		if st, _ := m.Status("b"); st.State != Down {
			t.Errorf("b not probed with its new check (fall 1, probe fails): %+v", st)
		}
		// The check moves to another port of the same backend: the
		// state stays too (a new address for the probe is no more news
		// about the backend than a new timeout), until the new check
		// says otherwise.
		m.newProbe = func(configs.Check, Target) (Probe, error) { return &scripted{script: "u"}, nil }
		c2 := c
		c2.Target.Addr = netip.MustParseAddrPort("127.0.0.3:81")
		if err := m.Set([]Spec{a, b3, c2}); err != nil {
			t.Fatal(err)
		}
		if st, _ := m.Status("c"); st.State != Up || st.Target != c2.Target {
			t.Errorf("c lost its state when its check moved to another port: %+v", st)
		}

		// A spec that cannot be built changes nothing.
		m.newProbe = New
		bad := spec("d", time.Second, 1, 1)
		bad.Check.Type = "smtp"
		if err := m.Set([]Spec{bad}); err == nil || !strings.Contains(err.Error(), "target d") {
			t.Errorf("bad spec: %v", err)
		}
		if n := len(m.Snapshot()); n != 3 {
			t.Errorf("a refused Set changed the targets: %d", n)
		}

		// Removing a target.
		m.newProbe = func(configs.Check, Target) (Probe, error) { return &scripted{script: "u"}, nil }
		m.Set([]Spec{a})
		if _, ok := m.Status("b"); ok {
			t.Errorf("b still watched")
		}
		cancel()
		synctest.Wait()
	})
}

func TestMonitorAgainstRealServerFlapping(t *testing.T) {
	// Real probes against a loopback server that goes away and comes back;
	// real time, short intervals.
	srv := newFlapServer(t)
	m := NewMonitor(nil, 8)
	s := Spec{ID: "flap", Target: Target{Addr: srv.addr}, Check: configs.Check{Type: "tcp",
		Interval: 20 * time.Millisecond, Timeout: 100 * time.Millisecond, Rise: 2, Fall: 2}}
	if err := m.Set([]Spec{s}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Run(ctx)
	waitState := func(want State) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if st, _ := m.Status("flap"); st.State == want {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		st, _ := m.Status("flap")
		t.Fatalf("waiting for %s: status %+v", want, st)
	}
	waitState(Up)
	srv.stop()
	waitState(Down)
	if st, _ := m.Status("flap"); st.Last.Err == nil || !strings.Contains(st.Last.Err.Error(), "refused") {
		t.Errorf("down without the reason: %+v", st.Last)
	}
	srv.start()
	waitState(Up)
}

// Run returns only once its probes have, and a stopped Run hands back the
// targets still waiting for a slot: the next Run probes them.
func TestMonitorRunStopsAndResumes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewMonitor(nil, 1)
		var inflight, peak atomic.Int32
		m.newProbe = func(configs.Check, Target) (Probe, error) {
			return &scripted{script: "u", hold: time.Second, inflight: &inflight, peak: &peak}, nil
		}
		// Both are due at once (first runs spread over 1ns) and the one
		// slot serialises them.
		a, b := spec("a", time.Nanosecond, 1, 1), spec("b", time.Nanosecond, 1, 1)
		a.Check.Timeout, b.Check.Timeout = 2*time.Second, 2*time.Second
		if err := m.Set([]Spec{a, b}); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- m.Run(ctx) }()
		time.Sleep(500 * time.Millisecond)
		synctest.Wait()
		cancel() // one probe is running, the other waits for the slot
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if n := inflight.Load(); n != 0 {
			t.Fatalf("Run returned with %d probes in flight", n)
		}
		checked := func() (n int) {
			for _, st := range m.Snapshot() {
				if st.Checks > 0 {
					n++
				}
			}
			return n
		}
		if c := checked(); c != 1 {
			t.Fatalf("%d targets probed before the stop, want 1", c)
		}
		ctx, cancel = context.WithCancel(t.Context())
		go func() { done <- m.Run(ctx) }()
		time.Sleep(1500 * time.Millisecond)
		synctest.Wait()
		if c := checked(); c != 2 {
			t.Errorf("%d targets probed after the restart, want 2 (the waiting one was lost)", c)
		}
		if p := peak.Load(); p != 1 {
			t.Errorf("peak in flight %d, want 1", p)
		}
		cancel()
		<-done
	})
}

// TestMonitorDiscountsTimeoutsWhileStalled: a timeout while this process
// was not running (a stall the watch noted) is not counted against the
// backend; the probe runs again at once, and after maxDiscounted such
// runs in a row the next one counts, so a starved daemon still finds a
// backend down, in about the same time. A failure that is an answer
// (refused, a bad status) counts during a stall too.
func TestMonitorDiscountsTimeoutsWhileStalled(t *testing.T) {
	for _, tc := range []struct {
		name    string
		script  string
		stalled bool
		runs    int // probe runs by the time it is down
	}{
		{"timeouts, no stall", "utt", false, 3},
		{"timeouts during a stall", "uttttttt", true, 7},
		{"refused during a stall", "udd", true, 3},
	} {
		synctest.Test(t, func(t *testing.T) {
			m := NewMonitor(nil, 4)
			probe := &scripted{script: tc.script}
			m.newProbe = func(configs.Check, Target) (Probe, error) { return probe, nil }
			if tc.stalled {
				m.stalls.note(time.Now(), time.Now().Add(time.Hour))
			}
			sub := m.Subscribe()
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error)
			go func() { done <- m.Run(ctx) }()
			if err := m.Set([]Spec{spec("web/10.0.0.1:80", time.Second, 1, 2)}); err != nil {
				t.Fatal(err)
			}
			var changes []string
			runs := 0
			for range 40 {
				time.Sleep(100 * time.Millisecond)
				synctest.Wait()
				for _, st := range sub.Drain() {
					changes = append(changes, fmt.Sprintf("%s after %d checks", st.State, st.Checks))
					if st.State == Down {
						runs = probe.runs()
					}
				}
				if runs > 0 {
					break
				}
			}
			want := []string{"up after 1 checks", "down after 3 checks"}
			if !slices.Equal(changes, want) || runs != tc.runs {
				t.Errorf("%s: changes %v after %d probe runs, want %v after %d", tc.name, changes, runs, want, tc.runs)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// startLog is a probe that records when each run starts, per target.
type startLog struct {
	mu     *sync.Mutex
	starts map[string][]time.Time
	id     string
}

func (s *startLog) Check(context.Context) Result {
	s.mu.Lock()
	s.starts[s.id] = append(s.starts[s.id], time.Now())
	s.mu.Unlock()
	return Result{OK: true}
}

// TestMonitorBatchesDueChecks: checks due within batchSlack of each other
// start on one wake-up of the monitor (2,000 targets at 1 s would wake it
// 2,000 times a second otherwise: under emulation, a good part of the
// cost of a check), and none starts more than batchSlack before it is due.
func TestMonitorBatchesDueChecks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n, interval = 2000, time.Second
		m := NewMonitor(nil, n)
		log := &startLog{mu: new(sync.Mutex), starts: map[string][]time.Time{}}
		m.newProbe = func(c configs.Check, tg Target) (Probe, error) {
			return &startLog{mu: log.mu, starts: log.starts, id: tg.Addr.String()}, nil
		}
		var specs []Spec
		for i := range n {
			s := spec(fmt.Sprint(i), interval, 1, 1)
			s.Target.Addr = netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(1000+i))
			specs = append(specs, s)
		}
		if err := m.Set(specs); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- m.Run(ctx) }()
		time.Sleep(3*interval + interval/2)
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		instants := map[time.Time]bool{}
		for id, ts := range log.starts {
			if len(ts) < 3 {
				t.Fatalf("%s ran %d times in 3.5 intervals", id, len(ts))
			}
			for i, at := range ts {
				instants[at] = true
				if i > 0 {
					if gap := at.Sub(ts[i-1]); gap > interval || gap < interval-batchSlack {
						t.Fatalf("%s: run %d started %s after the one before, want within %s before the interval %s", id, i, gap, batchSlack, interval)
					}
				}
			}
		}
		// One wake-up per batchSlack at most (the first runs spread over
		// the first interval, the rest follow them).
		if limit := int(3*interval+interval/2)/int(batchSlack) + 1; len(instants) > limit {
			t.Errorf("checks started at %d distinct instants in 3.5 s, want at most %d (one per %s)", len(instants), limit, batchSlack)
		}
	})
}
