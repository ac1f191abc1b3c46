package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/anycastd/anycastd/configs"
	"github.com/vishvananda/netlink"
)

// CheckFunc is a local check of the director: nil means healthy, an error
// says why not. It must honour ctx.
type CheckFunc func(ctx context.Context) error

// CheckStatus is one self check's verdict.
type CheckStatus struct {
	Name   string
	OK     bool
	Reason string
	// Since is when the check's verdict last changed: for an operator
	// check the time of the probe result that decided it, for a built-in
	// one the evaluation that first saw it (zero until it changes once).
	Since time.Time `json:",omitzero"`
}

// SelfStatus is whether this director may announce, and why not.
type SelfStatus struct {
	Healthy bool
	Checks  []CheckStatus
}

// Reason joins the reasons of the failing checks ("" when healthy).
func (s SelfStatus) Reason() string {
	var rs []string
	for _, c := range s.Checks {
		if !c.OK {
			rs = append(rs, c.Name+": "+c.Reason)
		}
	}
	return strings.Join(rs, "; ")
}

// Self is the director's own health: built-in checks the director
// registers (IPVS reachable, config applied), the uplink interface and
// the operator's checks (exec, tcp, http, https, with rise/fall). The
// operator's drain is not health: director.Plan takes it apart. Safe for
// concurrent use.
type Self struct {
	monitor *Monitor
	sub     *Subscription // the operator checks' state changes

	mu        sync.Mutex
	checks    []namedCheck
	operator  []string // monitor IDs of operator checks, in config order
	evalLimit time.Duration
	builtin   map[string]verdict // the built-in checks' last verdicts
}

type verdict struct {
	ok    bool
	since time.Time
}

type namedCheck struct {
	name string
	fn   CheckFunc
}

// NewSelf returns a Self with no checks: healthy until one is added.
func NewSelf(log *slog.Logger) *Self {
	m := NewMonitor(log, 4)
	return &Self{monitor: m, sub: m.Subscribe(), evalLimit: 2 * time.Second, builtin: map[string]verdict{}}
}

// Changed is signalled when an operator check goes up or down: the caller
// evaluates at once rather than on its next tick, so a failing probe
// withdraws the director within the loop's turn, not up to a tick later.
// Evaluate consumes what signalled it.
func (s *Self) Changed() <-chan struct{} { return s.sub.C() }

// AddCheck registers a built-in check, evaluated on each Evaluate.
func (s *Self) AddCheck(name string, fn CheckFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks = append(s.checks, namedCheck{name, fn})
}

// SetOperatorChecks replaces the operator's checks (health.self.checks).
// A check that cannot be built changes nothing and is returned.
func (s *Self) SetOperatorChecks(checks []configs.SelfCheck) error {
	p, err := PrepareOperatorChecks(checks)
	if err != nil {
		return err
	}
	return s.SetPrepared(p)
}

// OperatorChecks are operator self checks resolved and known to build
// (PrepareOperatorChecks), ready for SetPrepared.
type OperatorChecks struct {
	specs []Spec
	ids   []string
}

// PrepareOperatorChecks resolves the checks' targets and builds their
// probes once, to report every problem before anything changes: a reload
// checks everything first and then applies all of itself or nothing.
func PrepareOperatorChecks(checks []configs.SelfCheck) (OperatorChecks, error) {
	var p OperatorChecks
	var errs []error
	for _, c := range checks {
		t := Target{}
		if c.Target != "" {
			ap, err := resolveTarget(c.Target)
			if err != nil {
				errs = append(errs, fmt.Errorf("self check %s: %w", c.Name, err))
				continue
			}
			t.Addr = ap
		}
		if _, err := New(c.Check, t); err != nil {
			errs = append(errs, fmt.Errorf("self check %s: %w", c.Name, err))
			continue
		}
		id := "self/" + c.Name
		p.specs = append(p.specs, Spec{ID: id, Check: c.Check, Target: t})
		p.ids = append(p.ids, id)
	}
	return p, errors.Join(errs...)
}

// SetPrepared makes p the operator's checks.
func (s *Self) SetPrepared(p OperatorChecks) error {
	if err := s.monitor.Set(p.specs); err != nil {
		return err
	}
	s.mu.Lock()
	s.operator = p.ids
	s.mu.Unlock()
	return nil
}

// Run runs the operator checks until ctx ends.
func (s *Self) Run(ctx context.Context) error { return s.monitor.Run(ctx) }

// Evaluate runs the built-in checks (each bounded in time) and combines
// them with the operator checks' current statuses. An
// operator check that has not run yet counts as failing: a director does
// not announce before it knows.
func (s *Self) Evaluate(ctx context.Context) SelfStatus {
	s.mu.Lock()
	checks := slices.Clone(s.checks)
	operator := slices.Clone(s.operator)
	limit := s.evalLimit
	s.mu.Unlock()

	s.sub.Drain() // the changes are read below, from the monitor itself
	st := SelfStatus{Healthy: true}
	add := func(name string, err error, since time.Time) {
		c := CheckStatus{Name: name, OK: err == nil, Since: since}
		if err != nil {
			c.Reason = err.Error()
			st.Healthy = false
		}
		st.Checks = append(st.Checks, c)
	}
	for _, c := range checks {
		cctx, cancel := context.WithTimeout(ctx, limit)
		err := c.fn(cctx)
		cancel()
		add(c.name, err, s.builtinSince(c.name, err == nil))
	}
	for _, id := range operator {
		name := strings.TrimPrefix(id, "self/")
		ms, ok := s.monitor.Status(id)
		switch {
		case !ok || ms.State == Unknown:
			add(name, errors.New("not checked yet"), time.Time{})
		case ms.State == Down:
			reason := "down"
			if ms.Last.Err != nil {
				reason = ms.Last.Err.Error()
			}
			add(name, errors.New(reason), ms.Since)
		default:
			add(name, nil, ms.Since)
		}
	}
	return st
}

// builtinSince records a built-in check's verdict and returns when it
// last changed.
func (s *Self) builtinSince(name string, ok bool) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, seen := s.builtin[name]
	if !seen {
		s.builtin[name] = verdict{ok: ok}
		return time.Time{}
	}
	if v.ok != ok {
		v = verdict{ok: ok, since: time.Now()}
		s.builtin[name] = v
	}
	return v.since
}

// UplinkCheck is a CheckFunc that fails while interface ifname is missing,
// administratively down or without carrier.
func UplinkCheck(ifname string) CheckFunc {
	return func(ctx context.Context) error {
		link, err := netlink.LinkByName(ifname)
		if err != nil {
			return fmt.Errorf("interface %s: %w", ifname, err)
		}
		a := link.Attrs()
		if a.Flags&net.FlagUp == 0 {
			return fmt.Errorf("interface %s is administratively down", ifname)
		}
		switch a.OperState {
		case netlink.OperUp, netlink.OperUnknown:
			// Unknown: drivers without carrier reporting (lo, tun).
			return nil
		default:
			return fmt.Errorf("interface %s is %s (no carrier)", ifname, a.OperState)
		}
	}
}
