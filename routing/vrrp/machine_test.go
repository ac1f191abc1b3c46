package vrrp

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

var (
	t0   = time.Date(2026, 11, 25, 3, 0, 0, 0, time.UTC)
	ipA  = netip.MustParseAddr("10.0.0.1")
	ipB  = netip.MustParseAddr("10.0.0.2")
	vip1 = []netip.Addr{netip.MustParseAddr("192.0.2.1")}
)

func adv(prio uint8) Advert {
	return Advert{VRID: 1, Priority: prio, Interval: time.Second, Addrs: vip1}
}

func kinds(as []Action) []ActionKind {
	var out []ActionKind
	for _, a := range as {
		out = append(out, a.Kind)
	}
	return out
}

func TestMasterDownInterval(t *testing.T) {
	m := NewMachine(Config{VRID: 1, Priority: 100, Interval: time.Second, Self: ipA})
	// 3 x 1s + (256-100)/256 s = 3.609375 s (RFC 5798 6.1).
	if got := m.MasterDownInterval(); got != 3609375*time.Microsecond {
		t.Errorf("master down interval %v", got)
	}
	m = NewMachine(Config{VRID: 1, Priority: 254, Interval: 100 * time.Millisecond, Self: ipA})
	if got := m.MasterDownInterval(); got != 300*time.Millisecond+781250*time.Nanosecond {
		t.Errorf("master down interval at 100ms, priority 254: %v", got)
	}
}

// VRRPv2's timers (RFC 3768 6.1): the skew time is in seconds whatever
// the interval, and a backup keeps its own interval (an advertisement with
// another one is a misconfiguration the router drops before the machine).
func TestMasterDownIntervalV2(t *testing.T) {
	m := NewMachine(Config{Version: Version2, VRID: 1, Priority: 100, Interval: 2 * time.Second, Self: ipA})
	// 3 x 2s + (256-100)/256 s = 6.609375 s (v3 would be 6.21875 s).
	if got := m.MasterDownInterval(); got != 6609375*time.Microsecond {
		t.Errorf("master down interval %v", got)
	}
	m.Start(t0)
	a := adv(200)
	a.Version, a.Interval = Version2, 5*time.Second
	m.Receive(t0, ipB, a)
	if got := m.MasterDownInterval(); got != 6609375*time.Microsecond {
		t.Errorf("after an advertisement at 5s: %v (v2 learns no interval)", got)
	}
	v3 := NewMachine(Config{VRID: 1, Priority: 100, Interval: 2 * time.Second, Self: ipA})
	v3.Start(t0)
	v3.Receive(t0, ipB, a)
	if got := v3.MasterDownInterval(); got != 15*time.Second+3046875*time.Microsecond {
		t.Errorf("v3 after an advertisement at 5s: %v (learns it)", got)
	}
}

func TestMachine(t *testing.T) {
	type step struct {
		at      time.Duration
		event   string // start, stop, tick, recv, prio
		from    netip.Addr
		prio    uint8
		actions []ActionKind
		state   State
	}
	cases := []struct {
		name  string
		cfg   Config
		steps []step
	}{
		{"address owner is master at once", Config{Priority: 255},
			[]step{{0, "start", ipA, 0, []ActionKind{Send, TakeOver}, Master},
				{time.Second, "tick", ipA, 0, []ActionKind{Send}, Master}}},
		{"backup takes over after the master-down interval", Config{Priority: 100},
			[]step{{0, "start", ipA, 0, nil, Backup},
				{3600 * time.Millisecond, "tick", ipA, 0, nil, Backup},
				{3610 * time.Millisecond, "tick", ipA, 0, []ActionKind{Send, TakeOver}, Master}}},
		{"adverts keep a backup a backup", Config{Priority: 100},
			[]step{{0, "start", ipA, 0, nil, Backup},
				{3 * time.Second, "recv", ipB, 200, nil, Backup},
				{6500 * time.Millisecond, "tick", ipA, 0, nil, Backup},
				{6700 * time.Millisecond, "tick", ipA, 0, []ActionKind{Send, TakeOver}, Master}}},
		{"priority 0 from the master: take over after the skew time", Config{Priority: 100},
			[]step{{0, "start", ipA, 0, nil, Backup},
				{time.Second, "recv", ipB, 0, nil, Backup},
				{1600 * time.Millisecond, "tick", ipA, 0, nil, Backup},
				{1610 * time.Millisecond, "tick", ipA, 0, []ActionKind{Send, TakeOver}, Master}}},
		{"master yields to a higher priority", Config{Priority: 255},
			[]step{{0, "start", ipA, 0, []ActionKind{Send, TakeOver}, Master},
				{time.Second, "prio", ipA, 100, []ActionKind{Send}, Master},
				{1500 * time.Millisecond, "recv", ipB, 150, []ActionKind{Release}, Backup}}},
		{"master keeps the role against a lower priority", Config{Priority: 255},
			[]step{{0, "start", ipA, 0, []ActionKind{Send, TakeOver}, Master},
				{500 * time.Millisecond, "recv", ipB, 100, nil, Master}}},
		{"equal priorities: the higher address wins", Config{Priority: 255},
			[]step{{0, "start", ipA, 0, []ActionKind{Send, TakeOver}, Master},
				{0, "prio", ipA, 100, []ActionKind{Send}, Master},
				{500 * time.Millisecond, "recv", netip.MustParseAddr("10.0.0.0"), 100, nil, Master},
				{600 * time.Millisecond, "recv", ipB, 100, []ActionKind{Release}, Backup}}},
		{"preempt: a higher-priority backup ignores a lower master and takes over", Config{Priority: 200, Preempt: true},
			[]step{{0, "start", ipA, 0, nil, Backup},
				{time.Second, "recv", ipB, 100, nil, Backup},
				{2 * time.Second, "recv", ipB, 100, nil, Backup},
				{3300 * time.Millisecond, "tick", ipA, 0, []ActionKind{Send, TakeOver}, Master}}},
		{"no preempt: a higher-priority backup stays backup", Config{Priority: 200, Preempt: false},
			[]step{{0, "start", ipA, 0, nil, Backup},
				{time.Second, "recv", ipB, 100, nil, Backup},
				{3 * time.Second, "recv", ipB, 100, nil, Backup},
				{5 * time.Second, "recv", ipB, 100, nil, Backup},
				{7 * time.Second, "tick", ipA, 0, nil, Backup}}},
		{"preempt delay holds off preemption after start", Config{Priority: 200, Preempt: true, PreemptDelay: 10 * time.Second},
			[]step{{0, "start", ipA, 0, nil, Backup},
				{3 * time.Second, "recv", ipB, 100, nil, Backup},
				{6 * time.Second, "recv", ipB, 100, nil, Backup},
				{9 * time.Second, "recv", ipB, 100, nil, Backup},
				{11 * time.Second, "recv", ipB, 100, nil, Backup},
				{12300 * time.Millisecond, "tick", ipA, 0, []ActionKind{Send, TakeOver}, Master}}},
		{"stop: a master says priority 0 and releases", Config{Priority: 255},
			[]step{{0, "start", ipA, 0, []ActionKind{Send, TakeOver}, Master},
				{time.Second, "stop", ipA, 0, []ActionKind{Send, Release}, Initialize},
				{5 * time.Second, "tick", ipA, 0, nil, Initialize}}},
		{"health: priority 0 resigns a master, and a resigned backup never takes over", Config{Priority: 255},
			[]step{{0, "start", ipA, 0, []ActionKind{Send, TakeOver}, Master},
				{time.Second, "prio", ipA, 0, []ActionKind{Send, Release}, Backup},
				{10 * time.Second, "tick", ipA, 0, nil, Backup},
				{20 * time.Second, "tick", ipA, 0, nil, Backup},
				{21 * time.Second, "prio", ipA, 100, nil, Backup},
				{24700 * time.Millisecond, "tick", ipA, 0, []ActionKind{Send, TakeOver}, Master}}},
		{"a master hearing another master leave asserts itself", Config{Priority: 100},
			[]step{{0, "start", ipA, 0, nil, Backup},
				{4 * time.Second, "tick", ipA, 0, []ActionKind{Send, TakeOver}, Master},
				{4200 * time.Millisecond, "recv", ipB, 0, []ActionKind{Send}, Master}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.cfg.VRID, c.cfg.Interval, c.cfg.Self = 1, time.Second, ipA
			m := NewMachine(c.cfg)
			for i, s := range c.steps {
				now := t0.Add(s.at)
				var got []Action
				switch s.event {
				case "start":
					got = m.Start(now)
				case "stop":
					got = m.Stop(now)
				case "tick":
					got = m.Tick(now)
				case "recv":
					got = m.Receive(now, s.from, adv(s.prio))
				case "prio":
					got = m.SetPriority(now, s.prio)
				}
				if !slices.Equal(kinds(got), s.actions) || m.State() != s.state {
					t.Fatalf("step %d (%s at %v): actions %v state %s, want %v %s", i, s.event, s.at, kinds(got), m.State(), s.actions, s.state)
				}
				for _, a := range got {
					if a.Kind == Send && a.Priority != m.Priority() && a.Priority != PriorityStop {
						t.Errorf("step %d: sends priority %d, configured %d", i, a.Priority, m.Priority())
					}
				}
			}
		})
	}
}

// net simulates routers on one segment: each advertisement reaches every
// other router at once.
type segment struct {
	ms    map[netip.Addr]*Machine
	alive map[netip.Addr]bool
}

func (n *segment) deliver(now time.Time, from netip.Addr, acts []Action) {
	for _, a := range acts {
		if a.Kind != Send || !n.alive[from] {
			continue
		}
		for addr, m := range n.ms {
			if addr != from && n.alive[addr] {
				n.deliver(now, addr, m.Receive(now, from, adv(a.Priority)))
			}
		}
	}
}

func (n *segment) run(from, to time.Time) {
	for now := from; !now.After(to); now = now.Add(10 * time.Millisecond) {
		for addr, m := range n.ms {
			if n.alive[addr] {
				n.deliver(now, addr, m.Tick(now))
			}
		}
	}
}

func (n *segment) masters() []netip.Addr {
	var out []netip.Addr
	for a, m := range n.ms {
		if n.alive[a] && m.State() == Master {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// Two routers for one VRID: the higher priority is master; when it dies
// the other takes over within the master-down interval; when it comes
// back with preempt it takes the role back; exactly one master whenever
// the segment has settled.
func TestTwoRouters(t *testing.T) {
	n := &segment{ms: map[netip.Addr]*Machine{
		ipA: NewMachine(Config{VRID: 1, Priority: 200, Interval: time.Second, Preempt: true, Self: ipA}),
		ipB: NewMachine(Config{VRID: 1, Priority: 100, Interval: time.Second, Preempt: true, Self: ipB}),
	}, alive: map[netip.Addr]bool{ipA: true, ipB: true}}
	for a, m := range n.ms {
		n.deliver(t0, a, m.Start(t0))
	}
	n.run(t0, t0.Add(10*time.Second))
	if got := n.masters(); !slices.Equal(got, []netip.Addr{ipA}) {
		t.Fatalf("masters %v, want A", got)
	}
	// A dies silently.
	n.alive[ipA] = false
	dead := t0.Add(10 * time.Second)
	var took time.Duration
	for now := dead; now.Before(dead.Add(10 * time.Second)); now = now.Add(10 * time.Millisecond) {
		n.run(now, now)
		if n.ms[ipB].State() == Master {
			took = now.Sub(dead)
			break
		}
	}
	// Last advert from A at most 1s before it died; B waits 3s + skew
	// (609ms) after the last advert it heard.
	if took == 0 || took > 3610*time.Millisecond {
		t.Errorf("B took over after %v", took)
	}
	// A comes back: it starts as backup, ignores lower-priority B (preempt)
	// and takes over after its master-down interval; B yields.
	n.alive[ipA] = true
	n.ms[ipA] = NewMachine(Config{VRID: 1, Priority: 200, Interval: time.Second, Preempt: true, Self: ipA})
	back := dead.Add(20 * time.Second)
	n.deliver(back, ipA, n.ms[ipA].Start(back))
	n.run(back, back.Add(10*time.Second))
	if got := n.masters(); !slices.Equal(got, []netip.Addr{ipA}) {
		t.Errorf("after A's return: masters %v, want A", got)
	}
}

func TestStandIn(t *testing.T) {
	m := NewMachine(Config{VRID: 1, Priority: 100, Interval: time.Second, Self: ipA})
	m.Start(t0)
	m.Receive(t0.Add(time.Second), ipB, adv(200))
	m.Tick(t0.Add(5 * time.Second)) // the 200 went silent
	if m.State() != Master || !m.StandIn() {
		t.Fatalf("state %s, stand-in %v: want a stand-in master", m.State(), m.StandIn())
	}
	m.Receive(t0.Add(6*time.Second), ipB, adv(200)) // it is back
	if m.State() != Backup || m.StandIn() {
		t.Fatalf("state %s, stand-in %v after the 200 came back", m.State(), m.StandIn())
	}
	// A higher-priority master that leaves cleanly (priority 0): the one
	// that takes over stands in for it too.
	m2 := NewMachine(Config{VRID: 1, Priority: 200, Interval: time.Second, Self: ipA})
	m2.Start(t0)
	m2.Receive(t0.Add(time.Second), ipB, adv(250))
	m2.Receive(t0.Add(2*time.Second), ipB, adv(0))
	m2.Tick(t0.Add(3 * time.Second))
	if m2.State() != Master || !m2.StandIn() {
		t.Errorf("after a priority-0 goodbye: state %s, stand-in %v", m2.State(), m2.StandIn())
	}
	// The highest priority on the segment is nobody's stand-in.
	m3 := NewMachine(Config{VRID: 1, Priority: 200, Interval: time.Second, Preempt: true, Self: ipA})
	m3.Start(t0)
	m3.Receive(t0.Add(time.Second), ipB, adv(100))
	m3.Tick(t0.Add(5 * time.Second))
	if m3.State() != Master || m3.StandIn() {
		t.Errorf("preempting a lower master: state %s, stand-in %v", m3.State(), m3.StandIn())
	}
}
