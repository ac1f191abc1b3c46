package ipvs

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestDrainKeepsRemovedAtWeightZero(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	s := svc("198.51.100.1", 80, "mh", dst("10.0.0.1", 1), dst("10.0.0.2", 1), dst("10.0.0.3", 1))
	s.DrainTimeout = time.Minute
	if err := m.Apply(ctx, Diff(Table{}, tbl(s))); err != nil {
		t.Fatal(err)
	}
	r, err := NewReconciler(m, "")
	if err != nil {
		t.Fatal(err)
	}
	removed := DestKey{addr("10.0.0.2"), 80}
	if err := m.SetConns(s.ServiceKey, removed, 3, 1); err != nil {
		t.Fatal(err)
	}
	want := s
	want.Destinations = []Destination{dst("10.0.0.1", 1), dst("10.0.0.3", 1)}
	t0 := time.Unix(1000, 0)

	// 1: the removed backend goes to weight 0, in its place.
	res, err := r.Reconcile(ctx, tbl(want), t0)
	if err != nil {
		t.Fatal(err)
	}
	if got := ops(res.Plan); !slices.Equal(got, []string{"update-dest tcp 198.51.100.1:80 10.0.0.2 w0"}) {
		t.Fatalf("first round: %v", got)
	}
	// 2: still has connections: stays.
	if res, _ = r.Reconcile(ctx, tbl(want), t0.Add(10*time.Second)); len(res.Plan) != 0 || res.Draining != 1 {
		t.Fatalf("draining with connections: plan %v draining %d", ops(res.Plan), res.Draining)
	}
	// 3: connections ended: deleted.
	m.SetConns(s.ServiceKey, removed, 0, 0)
	res, _ = r.Reconcile(ctx, tbl(want), t0.Add(20*time.Second))
	if got := ops(res.Plan); !slices.Equal(got, []string{"del-dest tcp 198.51.100.1:80 10.0.0.2"}) {
		t.Fatalf("drained: %v", got)
	}
	got, _ := m.Table(ctx)
	if len(got.Services[0].Destinations) != 2 {
		t.Fatalf("after drain: %+v", got.Services[0].Destinations)
	}
}

func TestDrainTimeout(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	s := svc("198.51.100.1", 80, "rr", dst("10.0.0.1", 1), dst("10.0.0.2", 1))
	s.DrainTimeout = 30 * time.Second
	m.Apply(ctx, Diff(Table{}, tbl(s)))
	m.SetConns(s.ServiceKey, DestKey{addr("10.0.0.2"), 80}, 100, 0)
	r, _ := NewReconciler(m, "")
	want := s
	want.Destinations = want.Destinations[:1]
	t0 := time.Unix(1000, 0)
	r.Reconcile(ctx, tbl(want), t0)
	if res, _ := r.Reconcile(ctx, tbl(want), t0.Add(29*time.Second)); len(res.Plan) != 0 {
		t.Fatalf("deleted before the timeout: %v", ops(res.Plan))
	}
	res, _ := r.Reconcile(ctx, tbl(want), t0.Add(31*time.Second))
	if got := ops(res.Plan); !slices.Equal(got, []string{"del-dest tcp 198.51.100.1:80 10.0.0.2"}) {
		t.Fatalf("after the timeout: %v", got)
	}
}

func TestDrainCancelledWhenBackendReturns(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	s := svc("198.51.100.1", 80, "mh", dst("10.0.0.1", 1), dst("10.0.0.2", 1))
	s.DrainTimeout = time.Minute
	m.Apply(ctx, Diff(Table{}, tbl(s)))
	m.SetConns(s.ServiceKey, DestKey{addr("10.0.0.2"), 80}, 1, 0)
	r, _ := NewReconciler(m, "")
	want := s
	want.Destinations = want.Destinations[:1]
	r.Reconcile(ctx, tbl(want), time.Unix(0, 0))
	res, _ := r.Reconcile(ctx, tbl(s), time.Unix(1, 0))
	if got := ops(res.Plan); !slices.Equal(got, []string{"update-dest tcp 198.51.100.1:80 10.0.0.2 w1"}) {
		t.Fatalf("returning backend: %v", got)
	}
	if res.Draining != 0 {
		t.Errorf("still draining %d", res.Draining)
	}
}

func TestReconcileAdoptsAndLeavesForeign(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	ours := svc("198.51.100.1", 80, "mh", dst("10.0.0.1", 1), dst("10.0.0.2", 1))
	foreign := svc("192.0.2.50", 22, "rr", dst("10.9.9.9", 1))
	// What a previous run left: ours (with its connections) and a service
	// someone else made with ipvsadm.
	m.Apply(ctx, Diff(Table{}, tbl(ours, foreign)))
	m.SetConns(ours.ServiceKey, DestKey{addr("10.0.0.1"), 80}, 7, 0)
	state := filepath.Join(t.TempDir(), "ipvs-owned.json")
	r, err := NewReconciler(m, state)
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.Reconcile(ctx, tbl(ours), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Plan) != 0 {
		t.Errorf("adopting an identical table must change nothing, plan:\n%s", res.Plan)
	}
	if !slices.Equal(res.Foreign, []ServiceKey{foreign.ServiceKey}) {
		t.Errorf("foreign %v", res.Foreign)
	}
	got, _ := m.Table(ctx)
	if got.Index()[ours.ServiceKey].Destinations[0].ActiveConns != 7 {
		t.Errorf("adopted destination lost its connections")
	}

	// A restart (new Reconciler, same state) with ours removed from the
	// config deletes ours and still leaves the foreign one.
	r2, err := NewReconciler(m, state)
	if err != nil {
		t.Fatal(err)
	}
	res, err = r2.Reconcile(ctx, Table{}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got := ops(res.Plan); !slices.Equal(got, []string{"del-service tcp 198.51.100.1:80"}) {
		t.Errorf("cleanup after restart: %v", got)
	}
	got, _ = m.Table(ctx)
	if len(got.Services) != 1 || got.Services[0].ServiceKey != foreign.ServiceKey {
		t.Errorf("foreign service touched: %+v", got.Services)
	}
}

func TestReconcileIsolatesRefusedService(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	m.Schedulers = []string{"rr", "mh"}
	good := svc("198.51.100.1", 80, "mh", dst("10.0.0.1", 1))
	bad := svc("198.51.100.2", 80, "lblcr", dst("10.0.0.1", 1))
	r, _ := NewReconciler(m, "")
	_, err := r.Reconcile(ctx, tbl(good, bad), time.Now())
	var oe *OpError
	if !errors.As(err, &oe) || oe.Op.Kind != AddService || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("want the refused AddService with the kernel's reason, got %v", err)
	}
	if want := "is the scheduler module ip_vs_lblcr available?"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q should hint %q", err, want)
	}
	if !errors.Is(err, ErrSkipped) {
		t.Errorf("the refused service's destinations should be reported skipped: %v", err)
	}
	got, _ := m.Table(ctx)
	if len(got.Services) != 1 || got.Services[0].ServiceKey != good.ServiceKey || len(got.Services[0].Destinations) != 1 {
		t.Errorf("the good service must still be applied: %+v", got)
	}
}

func TestReconcileRefusesOnlyTheInvalidService(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	twice := svc("198.51.100.1", 80, "mh", dst("10.0.0.1", 1))
	other := svc("198.51.100.2", 80, "mh", dst("10.0.0.2", 1))
	// What an earlier turn left for the service now wanted twice: kept.
	if err := m.Apply(ctx, Diff(Table{}, tbl(twice))); err != nil {
		t.Fatal(err)
	}
	r, _ := NewReconciler(m, "")
	changed := twice
	changed.Destinations = []Destination{dst("10.0.0.9", 1)}
	res, err := r.Reconcile(ctx, tbl(changed, other, changed), time.Now())
	if err == nil || !errors.Is(res.Failed[twice.ServiceKey], ErrInvalid) {
		t.Fatalf("the repeated service must be refused on its own: failed %v, err %v", res.Failed, err)
	}
	if len(res.Failed) != 1 || res.ReadErr != nil || res.SaveErr != nil {
		t.Errorf("only the repeated service may fail: %+v", res)
	}
	got, _ := m.Table(ctx)
	idx := got.Index()
	if s := idx[other.ServiceKey]; s == nil || len(s.Destinations) != 1 {
		t.Errorf("the valid service must be applied: %+v", got)
	}
	if s := idx[twice.ServiceKey]; s == nil || s.Destinations[0].Addr != addr("10.0.0.1") {
		t.Errorf("the refused service must be left as the dataplane held it: %+v", got)
	}
	if !slices.Contains(r.Owned(), twice.ServiceKey) || len(res.Foreign) != 0 {
		t.Errorf("a refused service stays ours: owned %v, foreign %v", r.Owned(), res.Foreign)
	}
}

// failingTable is a dataplane whose reads fail.
type failingTable struct{ *Memory }

func (failingTable) Table(context.Context) (Table, error) { return Table{}, syscall.EIO }

func TestReconcileKeepsReadSaveAndServiceFailuresApart(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	m.Schedulers = []string{"mh"}
	good := svc("198.51.100.1", 80, "mh", dst("10.0.0.1", 1))
	refused := svc("198.51.100.2", 80, "lblcr", dst("10.0.0.1", 1))

	res, _ := mustReconciler(t, failingTable{m}, "").Reconcile(ctx, tbl(good), time.Now())
	if !errors.Is(res.ReadErr, syscall.EIO) || res.SaveErr != nil || len(res.Failed) != 0 || m.Ops() != 0 {
		t.Errorf("a failed read: %+v, ops %d", res, m.Ops())
	}

	// The record's path is a directory for a while: the save fails, the
	// table is applied all the same, and the save is retried.
	state := filepath.Join(t.TempDir(), "owned.json")
	r := mustReconciler(t, m, state)
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	res, err := r.Reconcile(ctx, tbl(good, refused), time.Now())
	if res.SaveErr == nil || res.ReadErr != nil || err == nil {
		t.Fatalf("want a save error only: %+v", res)
	}
	if len(res.Failed) != 1 || res.Failed[refused.ServiceKey] == nil {
		t.Errorf("only the refused service fails: %v", res.Failed)
	}
	if got, _ := m.Table(ctx); len(got.Services) != 1 {
		t.Errorf("a failed save must not stop the apply: %+v", got)
	}
	os.Remove(state)
	if res, _ = r.Reconcile(ctx, tbl(good), time.Now()); res.SaveErr != nil {
		t.Fatal(res.SaveErr)
	}
	if b, err := os.ReadFile(state); err != nil || !strings.Contains(string(b), "198.51.100.1") {
		t.Errorf("the save was not retried: %q, %v", b, err)
	}
}

func mustReconciler(t *testing.T, dp Dataplane, state string) *Reconciler {
	t.Helper()
	r, err := NewReconciler(dp, state)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestCorruptStateIsAnError(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.json")
	os.WriteFile(p, []byte("{not json"), 0o600)
	if _, err := NewReconciler(NewMemory(), p); err == nil {
		t.Fatal("corrupt ownership state accepted")
	}
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }
