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
	s := svc("198.51.100.1", 80, "wlc", dst("10.0.0.1", 1), dst("10.0.0.2", 1), dst("10.0.0.3", 1))
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

// TestDrainOrderSensitiveLastsItsTimeout: for mh the drain does not end
// when this director's connections have: it lasts DrainTimeout, so every
// director deletes the destination at about the same time and their mh
// tables do not differ meanwhile (a standby, with no connections, would
// delete it at once).
func TestDrainOrderSensitiveLastsItsTimeout(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	s := svc("198.51.100.1", 80, "mh", dst("10.0.0.1", 1), dst("10.0.0.2", 1), dst("10.0.0.3", 1))
	s.DrainTimeout = time.Minute
	m.Apply(ctx, Diff(Table{}, tbl(s)))
	r := mustReconciler(t, m, "")
	want := s
	want.Destinations = []Destination{dst("10.0.0.1", 1), dst("10.0.0.3", 1)}
	t0 := time.Unix(1000, 0)
	res, _ := r.Reconcile(ctx, tbl(want), t0)
	if got := ops(res.Plan); !slices.Equal(got, []string{"update-dest tcp 198.51.100.1:80 10.0.0.2 w0"}) {
		t.Fatalf("drain starts: %v", got)
	}
	// No connections at all (a standby): it stays, in its place.
	if res, _ = r.Reconcile(ctx, tbl(want), t0.Add(59*time.Second)); len(res.Plan) != 0 || res.Draining != 1 {
		t.Fatalf("idle before the timeout: plan %v, draining %d", ops(res.Plan), res.Draining)
	}
	got, _ := m.Table(ctx)
	if fp := Fingerprint(&got.Services[0]); fp != Fingerprint(&Service{ServiceKey: s.ServiceKey, Scheduler: "mh",
		Destinations: []Destination{dst("10.0.0.1", 1), dst("10.0.0.2", 0), dst("10.0.0.3", 1)}}) {
		t.Fatalf("while draining: %+v", got.Services[0].Destinations)
	}
	res, _ = r.Reconcile(ctx, tbl(want), t0.Add(61*time.Second))
	if got := ops(res.Plan); !slices.Equal(got, []string{"del-dest tcp 198.51.100.1:80 10.0.0.2"}) {
		t.Fatalf("after the timeout: %v", got)
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

// countingDP counts the full reads and the partial ones.
type countingDP struct {
	*Memory
	full, dests, pings int
	pingErr            error
}

func (c *countingDP) Table(ctx context.Context) (Table, error) {
	c.full++
	return c.Memory.Table(ctx)
}

func (c *countingDP) Destinations(ctx context.Context, k ServiceKey) ([]Destination, error) {
	c.dests++
	return c.Memory.Destinations(ctx, k)
}

func (c *countingDP) Ping(ctx context.Context) error {
	c.pings++
	return c.pingErr
}

// TestReconcileFullReadWhenDue: with SetFullRead, a Reconcile reads the
// whole table only at the start, when the interval is up, and after a
// failure; in between it works from what it applied (issue 18: O(change),
// not O(table)), and a change made behind its back is found by the next
// full read, reported as Drift and repaired.
func TestReconcileFullReadWhenDue(t *testing.T) {
	ctx := context.Background()
	dp := &countingDP{Memory: NewMemory()}
	r := mustReconciler(t, dp, "")
	r.SetFullRead(30 * time.Second)
	t0 := time.Unix(1000, 0)
	s := svc("198.51.100.1", 80, "mh", dst("10.0.0.1", 1), dst("10.0.0.2", 1))
	check := func(what string, full, pings int) {
		t.Helper()
		if dp.full != full || dp.pings != pings {
			t.Fatalf("%s: %d full reads, %d pings; want %d, %d", what, dp.full, dp.pings, full, pings)
		}
	}

	res, err := r.Reconcile(ctx, tbl(s), t0)
	if err != nil || !res.FullRead || len(res.Plan) != 3 {
		t.Fatalf("first: %+v %v", res, err)
	}
	check("first Reconcile", 1, 0)

	// A weight changes: applied without reading the table.
	s2 := svc("198.51.100.1", 80, "mh", dst("10.0.0.1", 1), dst("10.0.0.2", 5))
	res, _ = r.Reconcile(ctx, tbl(s2), t0.Add(time.Second))
	if res.FullRead || !slices.Equal(ops(res.Plan), []string{"update-dest tcp 198.51.100.1:80 10.0.0.2 w5"}) {
		t.Fatalf("weight change: full %v plan %v", res.FullRead, ops(res.Plan))
	}
	check("a change between full reads", 1, 1)
	if got, _ := dp.Memory.Table(ctx); got.Services[0].Destinations[1].Weight != 5 {
		t.Fatalf("the dataplane does not hold the change: %+v", got)
	}

	// Someone sets the weight back with ipvsadm: not seen until the next
	// full read, which reports and repairs it.
	behind := s2
	behind.Destinations = []Destination{dst("10.0.0.2", 1)}
	dp.Memory.Apply(ctx, Plan{{Kind: UpdateDest, Service: behind, Dest: dst("10.0.0.2", 1)}})
	if res, _ = r.Reconcile(ctx, tbl(s2), t0.Add(10*time.Second)); len(res.Plan) != 0 || res.FullRead {
		t.Fatalf("between full reads: %+v", res)
	}
	res, _ = r.Reconcile(ctx, tbl(s2), t0.Add(31*time.Second))
	if !res.FullRead || !slices.Equal(ops(res.Drift), []string{"update-dest tcp 198.51.100.1:80 10.0.0.2 w5"}) ||
		!slices.Equal(ops(res.Plan), []string{"update-dest tcp 198.51.100.1:80 10.0.0.2 w5"}) {
		t.Fatalf("full read: full %v drift %v plan %v", res.FullRead, ops(res.Drift), ops(res.Plan))
	}
	check("the full read when due", 2, 2)

	// A failed apply: the next Reconcile reads in full.
	dp.Memory.Schedulers = []string{"rr"}
	bad := svc("198.51.100.9", 80, "mh", dst("10.0.0.1", 1))
	if _, err := r.Reconcile(ctx, tbl(s2, bad), t0.Add(32*time.Second)); err == nil {
		t.Fatal("the refused scheduler was accepted")
	}
	dp.Memory.Schedulers = nil
	if res, _ = r.Reconcile(ctx, tbl(s2), t0.Add(33*time.Second)); !res.FullRead {
		t.Fatal("no full read after a failed apply")
	}

	// A dataplane that stops answering fails the Ping: a read error, and
	// the next Reconcile reads in full.
	dp.pingErr = syscall.EIO
	if res, _ = r.Reconcile(ctx, tbl(s2), t0.Add(34*time.Second)); !errors.Is(res.ReadErr, syscall.EIO) {
		t.Fatalf("a failed ping: %+v", res)
	}
	dp.pingErr = nil
	if res, _ = r.Reconcile(ctx, tbl(s2), t0.Add(35*time.Second)); !res.FullRead || res.ReadErr != nil {
		t.Fatalf("after a failed ping: %+v", res)
	}
}

// TestReconcileDrainBetweenFullReads: a drain ends on the counters read
// afresh for its service alone, not on the stale ones of the last full
// read.
func TestReconcileDrainBetweenFullReads(t *testing.T) {
	ctx := context.Background()
	dp := &countingDP{Memory: NewMemory()}
	r := mustReconciler(t, dp, "")
	r.SetFullRead(time.Hour)
	t0 := time.Unix(1000, 0)
	s := svc("198.51.100.1", 80, "wlc", dst("10.0.0.1", 1), dst("10.0.0.2", 1))
	s.DrainTimeout = time.Minute
	r.Reconcile(ctx, tbl(s), t0)
	removed := DestKey{addr("10.0.0.2"), 80}
	dp.SetConns(s.ServiceKey, removed, 2, 0)
	want := s
	want.Destinations = []Destination{dst("10.0.0.1", 1)}
	if res, _ := r.Reconcile(ctx, tbl(want), t0.Add(time.Second)); !slices.Equal(ops(res.Plan), []string{"update-dest tcp 198.51.100.1:80 10.0.0.2 w0"}) {
		t.Fatalf("drain starts: %v", ops(res.Plan))
	}
	if res, _ := r.Reconcile(ctx, tbl(want), t0.Add(2*time.Second)); len(res.Plan) != 0 || res.Draining != 1 {
		t.Fatalf("connections open: %v", ops(res.Plan))
	}
	dp.SetConns(s.ServiceKey, removed, 0, 0)
	res, _ := r.Reconcile(ctx, tbl(want), t0.Add(3*time.Second))
	if !slices.Equal(ops(res.Plan), []string{"del-dest tcp 198.51.100.1:80 10.0.0.2"}) {
		t.Fatalf("connections ended: %v", ops(res.Plan))
	}
	if dp.full != 1 || dp.dests < 2 {
		t.Errorf("%d full reads, %d per-service reads: want 1 and the drained service read each turn", dp.full, dp.dests)
	}
}
