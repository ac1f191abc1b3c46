package ipvs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/anycastd/anycastd/internal/atomicfile"
)

// Reconciler makes a Dataplane hold a wanted table, touching only what is
// anycastd's. A service is anycastd's when the wanted table has it (an
// existing entry with the same key is adopted as it is: its connections
// stay) or when anycastd created it earlier, as recorded in the state file,
// so a service removed from the config while the daemon was down is still
// cleaned up. Every other service is foreign: left alone and reported.
// Nothing is ever flushed.
//
// A Reconciler is not safe for concurrent use; the director's loop owns it.
type Reconciler struct {
	dp        Dataplane
	drain     *Drainer
	statePath string
	owned     map[ServiceKey]bool
	// dirty: owned differs from the record on disk (a save failed).
	dirty bool

	// believed is what the dataplane holds as far as the Reconciler
	// knows: the last full read with every plan applied since (nil: read
	// in full next time). readAt is when it was read; fullRead how often
	// it is read in full anyway (0: every Reconcile).
	believed *Memory
	readAt   time.Time
	fullRead time.Duration
	// fps are the fingerprints of believed's order-sensitive services
	// (nil: unknown).
	fps map[ServiceKey]string
}

// SetFullRead makes Reconcile read the whole table from the dataplane at
// most every d (and at the first Reconcile, after any failure, and when
// the dataplane cannot read one service's destinations), and otherwise
// work from what it believes the dataplane holds: the last full read with
// every plan applied since. Between full reads a Reconcile costs the plan
// and one Ping, not a read of every destination: the time from an event
// to the kernel holding the change does not grow with the table. A
// difference found by a full read (a change made behind anycastd's back)
// is reported in Result.Drift and repaired like any other. 0 (the
// default) reads in full every time.
func (r *Reconciler) SetFullRead(d time.Duration) { r.fullRead = d }

// Result is what one Reconcile did. Its failures are kept apart because
// they mean different things to the director: a failed service costs that
// service's VIP; a failed read means nothing was applied this time; a
// failed save of the ownership record costs nothing now (the dataplane
// holds the wanted table) and is retried.
type Result struct {
	// Plan is what was applied (or tried).
	Plan Plan
	// Foreign are services in the dataplane that are not anycastd's.
	Foreign []ServiceKey
	// Draining is how many destinations are kept at weight 0 to drain.
	Draining int
	// Failed are the wanted services that the dataplane does not hold as
	// wanted, each with its reason: refused by Table.Problems (ErrInvalid;
	// whatever the dataplane holds for that key is left as it is) or by
	// the dataplane (an *OpError with the kernel's reason, or the reason
	// the apply stopped). The other services were applied.
	Failed map[ServiceKey]error
	// ReadErr is why the dataplane could not be read: nothing was applied.
	ReadErr error
	// SaveErr is why the ownership record could not be saved (the next
	// Reconcile tries again); the dataplane was reconciled all the same.
	SaveErr error
	// Errs are every failure, for logs and counters: the dataplane's
	// (each *OpError, skipped operations included), the read and the
	// save.
	Errs []error
	// FullRead tells that this Reconcile read the whole table.
	FullRead bool
	// Drift is what a full read found different from what the Reconciler
	// believed the dataplane held, in anycastd's services: the operations
	// that would undo the change made behind its back (the plan repairs
	// it either way).
	Drift Plan
}

// Err joins every failure (nil when Reconcile did all it was asked).
func (r Result) Err() error { return errors.Join(r.Errs...) }

func (r *Result) fail(k ServiceKey, err error) {
	if r.Failed == nil {
		r.Failed = map[ServiceKey]error{}
	}
	if _, ok := r.Failed[k]; !ok {
		r.Failed[k] = err
	}
}

// NewReconciler returns a Reconciler over dp that records the services it
// owns in statePath (a JSON file, written atomically; "" keeps them in
// memory only). An unreadable state file is an error: guessing would risk
// deleting foreign services or leaking ours.
func NewReconciler(dp Dataplane, statePath string) (*Reconciler, error) {
	r := &Reconciler{dp: dp, drain: NewDrainer(), statePath: statePath, owned: map[ServiceKey]bool{}}
	if statePath == "" {
		return r, nil
	}
	data, err := os.ReadFile(statePath)
	if errors.Is(err, fs.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read IPVS ownership state: %w", err)
	}
	var keys []ServiceKey
	if err := json.Unmarshal(data, &keys); err != nil {
		return nil, fmt.Errorf("IPVS ownership state %s is corrupt: %w", statePath, err)
	}
	for _, k := range keys {
		r.owned[k] = true
	}
	return r, nil
}

// Owned returns the keys of the services anycastd owns, sorted.
func (r *Reconciler) Owned() []ServiceKey {
	keys := make([]ServiceKey, 0, len(r.owned))
	for k := range r.owned {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, ServiceKey.Compare)
	return keys
}

// Reconcile reads the dataplane, computes the plan to want (with removed
// destinations drained) and applies it. A wanted service that fails
// Table.Problems is left as the dataplane holds it, and the rest of want is
// applied; an operation the dataplane refuses costs its service only. See
// Result for how failures are reported; the error is Result.Err.
func (r *Reconciler) Reconcile(ctx context.Context, want Table, now time.Time) (Result, error) {
	var res Result
	invalid := want.Problems()
	if len(invalid) > 0 {
		keep := Table{Services: make([]Service, 0, len(want.Services))}
		for _, s := range want.Services {
			if invalid[s.ServiceKey] == nil {
				keep.Services = append(keep.Services, s)
			}
		}
		want = keep
		for _, k := range slices.SortedFunc(maps.Keys(invalid), ServiceKey.Compare) {
			res.fail(k, invalid[k])
			res.Errs = append(res.Errs, invalid[k])
		}
	}
	wantKeys := make(map[ServiceKey]bool, len(want.Services))
	for _, s := range want.Services {
		wantKeys[s.ServiceKey] = true
	}
	have, err := r.current(ctx, now, &res, func(k ServiceKey) bool { return wantKeys[k] || r.owned[k] })
	if err != nil {
		r.believed, r.fps = nil, nil
		res.ReadErr = fmt.Errorf("read the IPVS table: %w", err)
		res.Errs = append(res.Errs, res.ReadErr)
		return res, res.Err()
	}
	var ours Table
	for _, s := range have.Services {
		switch {
		case invalid[s.ServiceKey] != nil:
			// Wanted but refused: neither changed nor deleted, and
			// not foreign either.
		case wantKeys[s.ServiceKey] || r.owned[s.ServiceKey]:
			ours.Services = append(ours.Services, s)
		default:
			res.Foreign = append(res.Foreign, s.ServiceKey)
		}
	}
	adjusted := r.drain.Adjust(ours, want, now)
	res.Draining = r.drain.Draining()
	res.Plan = Diff(ours, adjusted)
	applyErr := r.dp.Apply(ctx, res.Plan)
	if applyErr != nil {
		// What the kernel holds after a partial apply is read, not
		// guessed.
		r.believed = nil
	} else if r.believed != nil && len(res.Plan) > 0 {
		if err := r.believed.Apply(ctx, res.Plan); err != nil {
			r.believed = nil
		}
	}
	r.updateFingerprints(&res)

	// Ours now: everything wanted (refused or not) and what we failed to
	// delete.
	owned := map[ServiceKey]bool{}
	for k := range wantKeys {
		owned[k] = true
	}
	for k := range invalid {
		owned[k] = true
	}
	for _, e := range unjoin(applyErr) {
		res.Errs = append(res.Errs, e)
		var oe *OpError
		if !errors.As(e, &oe) {
			// The apply stopped (its context ended): whatever was
			// not reached is not applied.
			for k := range wantKeys {
				res.fail(k, e)
			}
			continue
		}
		k := oe.Op.Service.ServiceKey
		if oe.Op.Kind == DelService {
			owned[k] = true
		}
		if wantKeys[k] && !errors.Is(oe.Err, ErrSkipped) {
			res.fail(k, oe)
		}
	}
	if r.dirty || !mapsEqual(owned, r.owned) {
		r.owned = owned
		if err := r.save(); err != nil {
			r.dirty = true
			res.SaveErr = fmt.Errorf("save the IPVS ownership record: %w", err)
			res.Errs = append(res.Errs, res.SaveErr)
		} else {
			r.dirty = false
		}
	}
	return res, res.Err()
}

// current returns what the dataplane holds: read in full when it is time
// (see SetFullRead), else what the Reconciler believes it holds, checked
// with a Ping, with the destinations of the services being drained read
// afresh (their connection counters decide when a drain ends). On a full
// read it puts into res.Drift how anycastd's services (ours) differ from
// what it believed.
func (r *Reconciler) current(ctx context.Context, now time.Time, res *Result, ours func(ServiceKey) bool) (Table, error) {
	dr, partial := r.dp.(DestReader)
	if partial && r.believed != nil && r.fullRead > 0 && now.Sub(r.readAt) < r.fullRead && !now.Before(r.readAt) {
		if err := dr.Ping(ctx); err != nil {
			return Table{}, err
		}
		t, _ := r.believed.Table(ctx)
		idx := t.Index()
		fresh := true
		for _, k := range r.drain.DrainingServices() {
			s, ok := idx[k]
			if !ok {
				continue
			}
			ds, err := dr.Destinations(ctx, k)
			if err != nil {
				fresh = false
				break
			}
			s.Destinations = ds
		}
		if fresh {
			return t, nil
		}
	}
	have, err := r.dp.Table(ctx)
	if err != nil {
		return Table{}, err
	}
	res.FullRead = true
	if r.believed != nil {
		was, _ := r.believed.Table(ctx)
		res.Drift = Diff(only(have, ours), only(was, ours))
	}
	r.believed, r.readAt = memoryOf(have), now
	return have, nil
}

// only is the part of t whose services keep says.
func only(t Table, keep func(ServiceKey) bool) Table {
	var out Table
	for _, s := range t.Services {
		if keep(s.ServiceKey) {
			out.Services = append(out.Services, s)
		}
	}
	return out
}

func (r *Reconciler) save() error {
	if r.statePath == "" {
		return nil
	}
	data, err := json.MarshalIndent(r.Owned(), "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(r.statePath, data, 0o600)
}

func unjoin(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func mapsEqual(a, b map[ServiceKey]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

// writeFileAtomic writes data to path so that a reader (or a crash) sees
// the old file or the new one, never a part; it makes the directory if
// need be.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	return atomicfile.Write(path, data, perm)
}
