package ipvs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"syscall"
)

// Dataplane is where IPVS tables live: the kernel, or memory in tests.
// Implementations are safe for concurrent use.
type Dataplane interface {
	// Table reads every service and its destinations, destinations in
	// insertion order.
	Table(ctx context.Context) (Table, error)
	// Apply runs the plan in order. An operation that fails does not stop
	// the others: the later operations on the same service are skipped
	// and every failure is returned, joined, as *OpError.
	Apply(ctx context.Context, p Plan) error
}

// DestReader is a Dataplane that reads one service's destinations (with
// their connection counters) without reading the whole table, and answers
// a cheap question (Ping) that tells it is still there. The Reconciler
// uses it between full reads.
type DestReader interface {
	// Destinations reads the destinations of the service s, in insertion
	// order.
	Destinations(ctx context.Context, s ServiceKey) ([]Destination, error)
	// Ping costs one round trip and fails when the dataplane is gone.
	Ping(ctx context.Context) error
}

// OpError is an operation the dataplane refused, with the kernel's reason.
type OpError struct {
	Op  Op
	Err error
}

func (e *OpError) Error() string {
	msg := fmt.Sprintf("%s: %v", e.Op, e.Err)
	if e.Op.Kind == AddService && errors.Is(e.Err, syscall.ENOENT) {
		msg += fmt.Sprintf(" (is the scheduler module ip_vs_%s available?)", e.Op.Service.Scheduler)
	}
	return msg
}

func (e *OpError) Unwrap() error { return e.Err }

// ErrSkipped is the reason of an operation not tried because an earlier
// operation on its service failed.
var ErrSkipped = errors.New("skipped: an earlier operation on this service failed")

// applyPlan runs each op with exec, isolating failures per service.
func applyPlan(ctx context.Context, p Plan, exec func(Op) error) error {
	failed := map[ServiceKey]bool{}
	var errs []error
	for _, op := range p {
		if err := ctx.Err(); err != nil {
			errs = append(errs, fmt.Errorf("apply interrupted before %s: %w", op, err))
			break
		}
		k := op.Service.ServiceKey
		if failed[k] {
			errs = append(errs, &OpError{Op: op, Err: ErrSkipped})
			continue
		}
		if err := exec(op); err != nil {
			errs = append(errs, &OpError{Op: op, Err: err})
			failed[k] = true
		}
	}
	return errors.Join(errs...)
}

// Memory is an in-memory Dataplane with the kernel's semantics where they
// matter to callers: the same errors for missing or existing entries, an
// unknown scheduler refused, destinations kept in insertion order. It is
// for the tests of other packages.
type Memory struct {
	mu       sync.Mutex
	services map[ServiceKey]*Service
	ops      int
	// Schedulers the "kernel" has; nil means all of configs' list.
	Schedulers []string
	daemons    []SyncDaemon
}

// NewMemory returns an empty in-memory dataplane.
func NewMemory() *Memory {
	return &Memory{services: map[ServiceKey]*Service{}}
}

var memSchedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh"}

// Ops returns how many operations were applied (tried) so far.
func (m *Memory) Ops() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ops
}

// SetConns sets a destination's connection counters, as traffic would.
func (m *Memory) SetConns(svc ServiceKey, dest DestKey, active, inactive int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.services[svc]
	if !ok {
		return syscall.ESRCH
	}
	for i := range s.Destinations {
		if s.Destinations[i].DestKey == dest {
			s.Destinations[i].ActiveConns, s.Destinations[i].InactiveConns = active, inactive
			return nil
		}
	}
	return syscall.ENOENT
}

// Table implements Dataplane.
func (m *Memory) Table(ctx context.Context) (Table, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var t Table
	for _, s := range m.services {
		c := *s
		c.Destinations = slices.Clone(s.Destinations)
		t.Services = append(t.Services, c)
	}
	return t.Sorted(), nil
}

// Destinations implements DestReader.
func (m *Memory) Destinations(ctx context.Context, k ServiceKey) ([]Destination, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.services[k]
	if !ok {
		return nil, syscall.ESRCH
	}
	return slices.Clone(s.Destinations), nil
}

// Ping implements DestReader.
func (m *Memory) Ping(ctx context.Context) error { return nil }

// memoryOf returns a Memory holding t (copied).
func memoryOf(t Table) *Memory {
	m := NewMemory()
	for _, s := range t.Services {
		c := s
		c.Destinations = slices.Clone(s.Destinations)
		m.services[s.ServiceKey] = &c
	}
	return m
}

// Apply implements Dataplane.
func (m *Memory) Apply(ctx context.Context, p Plan) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return applyPlan(ctx, p, m.exec)
}

func (m *Memory) exec(op Op) error {
	m.ops++
	k := op.Service.ServiceKey
	s, exists := m.services[k]
	switch op.Kind {
	case AddService, UpdateService:
		scheds := m.Schedulers
		if scheds == nil {
			scheds = memSchedulers
		}
		if !slices.Contains(scheds, op.Service.Scheduler) {
			return syscall.ENOENT
		}
		if op.Kind == AddService {
			if exists {
				return syscall.EEXIST
			}
			c := op.Service
			c.Destinations = nil
			m.services[k] = &c
			return nil
		}
		if !exists {
			return syscall.ESRCH
		}
		dests := s.Destinations
		*s = op.Service
		s.Destinations = dests
		return nil
	case DelService:
		if !exists {
			return syscall.ESRCH
		}
		delete(m.services, k)
		return nil
	}
	if !exists {
		return syscall.ESRCH
	}
	if FamilyOf(op.Dest.Addr) != k.Family {
		return syscall.EINVAL
	}
	i := slices.IndexFunc(s.Destinations, func(d Destination) bool { return d.DestKey == op.Dest.DestKey })
	switch op.Kind {
	case AddDest:
		if i >= 0 {
			return syscall.EEXIST
		}
		d := op.Dest
		d.ActiveConns, d.InactiveConns = 0, 0
		s.Destinations = append(s.Destinations, d)
	case UpdateDest:
		if i < 0 {
			return syscall.ENOENT
		}
		d := op.Dest
		d.ActiveConns, d.InactiveConns = s.Destinations[i].ActiveConns, s.Destinations[i].InactiveConns
		s.Destinations[i] = d
	case DelDest:
		if i < 0 {
			return syscall.ENOENT
		}
		s.Destinations = slices.Delete(s.Destinations, i, i+1)
	}
	return nil
}
