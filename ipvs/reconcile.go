package ipvs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"
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
}

// Result is what one Reconcile did.
type Result struct {
	// Plan is what was applied (or tried).
	Plan Plan
	// Foreign are services in the dataplane that are not anycastd's.
	Foreign []ServiceKey
	// Draining is how many destinations are kept at weight 0 to drain.
	Draining int
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
// destinations drained) and applies it. A want that fails Check changes
// nothing. Operations the kernel refuses are returned joined as *OpError
// along with the Result; the rest of the plan is still applied.
func (r *Reconciler) Reconcile(ctx context.Context, want Table, now time.Time) (Result, error) {
	if err := want.Check(); err != nil {
		return Result{}, fmt.Errorf("wanted IPVS table is invalid, nothing applied: %w", err)
	}
	have, err := r.dp.Table(ctx)
	if err != nil {
		return Result{}, err
	}
	wantKeys := map[ServiceKey]bool{}
	for _, s := range want.Services {
		wantKeys[s.ServiceKey] = true
	}
	var ours Table
	var res Result
	for _, s := range have.Services {
		if wantKeys[s.ServiceKey] || r.owned[s.ServiceKey] {
			ours.Services = append(ours.Services, s)
		} else {
			res.Foreign = append(res.Foreign, s.ServiceKey)
		}
	}
	adjusted := r.drain.Adjust(ours, want, now)
	res.Draining = r.drain.Draining()
	res.Plan = Diff(ours, adjusted)
	applyErr := r.dp.Apply(ctx, res.Plan)

	// Ours now: everything wanted, and what we failed to delete.
	owned := map[ServiceKey]bool{}
	for k := range wantKeys {
		owned[k] = true
	}
	var oe *OpError
	for _, e := range unjoin(applyErr) {
		if errors.As(e, &oe) && oe.Op.Kind == DelService {
			owned[oe.Op.Service.ServiceKey] = true
		}
	}
	if !mapsEqual(owned, r.owned) {
		r.owned = owned
		if err := r.save(); err != nil {
			applyErr = errors.Join(applyErr, err)
		}
	}
	return res, applyErr
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
// the old file or the new one, never a part.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	return nil
}
