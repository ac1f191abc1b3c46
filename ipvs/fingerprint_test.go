package ipvs

import (
	"context"
	"testing"
	"time"
)

func TestFingerprint(t *testing.T) {
	a, b, c := dst("10.0.0.1", 1), dst("10.0.0.2", 1), dst("10.0.0.3", 1)
	base := svc("198.51.100.1", 80, "mh", a, b, c)
	fp := Fingerprint(&base)
	if len(fp) != 10 {
		t.Fatalf("fingerprint %q: want 10 hex digits", fp)
	}
	heavier := b
	heavier.Weight = 2
	fallback := base
	fallback.Flags |= SchedFlag1
	counters := svc("198.51.100.1", 80, "mh", a, b, c)
	counters.Destinations[0].ActiveConns, counters.Stats.Conns = 7, 100
	other := svc("198.51.100.1", 80, "sh", a, b, c)
	for _, tc := range []struct {
		name string
		s    Service
		same bool
	}{
		{"the same table", svc("198.51.100.1", 80, "mh", a, b, c), true},
		{"counters are not part of it", counters, true},
		{"another order", svc("198.51.100.1", 80, "mh", b, a, c), false},
		{"a weight", svc("198.51.100.1", 80, "mh", a, heavier, c), false},
		{"a destination fewer", svc("198.51.100.1", 80, "mh", a, c), false},
		{"a scheduler flag", fallback, false},
		{"another order-sensitive scheduler", other, false},
	} {
		got := Fingerprint(&tc.s)
		if (got == fp) != tc.same {
			t.Errorf("%s: %q against %q, same = %v; want %v", tc.name, got, fp, got == fp, tc.same)
		}
	}
	rr := svc("198.51.100.1", 80, "wlc", a, b, c)
	if got := Fingerprint(&rr); got != "" {
		t.Errorf("wlc's choice does not depend on the order, yet its fingerprint is %q", got)
	}
}

// TestReconcilerFingerprints: the fingerprints are those of what the
// dataplane holds as the Reconciler knows it; a reorder made behind its
// back shows at the full read that ReadInFull brings forward, which
// repairs it.
func TestReconcilerFingerprints(t *testing.T) {
	ctx := context.Background()
	dp := &countingDP{Memory: NewMemory()}
	r := mustReconciler(t, dp, "")
	r.SetFullRead(time.Hour)
	t0 := time.Unix(1000, 0)
	if r.Fingerprints() != nil {
		t.Fatal("fingerprints before the first Reconcile")
	}
	a, b, c := dst("10.0.0.1", 1), dst("10.0.0.2", 1), dst("10.0.0.3", 1)
	mh := svc("198.51.100.1", 80, "mh", a, b, c)
	rr := svc("198.51.100.2", 80, "rr", a, b)
	if _, err := r.Reconcile(ctx, tbl(mh, rr), t0); err != nil {
		t.Fatal(err)
	}
	want := Fingerprint(&mh)
	got := r.Fingerprints()
	if len(got) != 1 || got[mh.ServiceKey] != want {
		t.Fatalf("after the first Reconcile: %v; want only %s: %s", got, mh.ServiceKey, want)
	}

	// A change the Reconciler makes: its service's fingerprint follows.
	mh2 := svc("198.51.100.1", 80, "mh", a, b, c, dst("10.0.0.4", 1))
	if _, err := r.Reconcile(ctx, tbl(mh2, rr), t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := r.Fingerprints()[mh.ServiceKey]; got != Fingerprint(&mh2) {
		t.Fatalf("after adding a destination: %s; want %s", got, Fingerprint(&mh2))
	}

	// Someone deletes and adds back 10.0.0.2 (it goes to the end of the
	// kernel's list): mh's table differs, and nothing shows it before a
	// full read.
	settings := mh2
	settings.Destinations = nil
	dp.Memory.Apply(ctx, Plan{{Kind: DelDest, Service: settings, Dest: b}, {Kind: AddDest, Service: settings, Dest: b}})
	if res, _ := r.Reconcile(ctx, tbl(mh2, rr), t0.Add(2*time.Second)); res.FullRead || len(res.Plan) != 0 {
		t.Fatalf("between full reads: %+v", res)
	}
	r.ReadInFull()
	res, err := r.Reconcile(ctx, tbl(mh2, rr), t0.Add(3*time.Second))
	if err != nil || !res.FullRead || len(res.Drift) == 0 || len(res.Plan) == 0 {
		t.Fatalf("after ReadInFull: full read %v, drift %v, plan %v, err %v", res.FullRead, ops(res.Drift), ops(res.Plan), err)
	}
	held, _ := dp.Memory.Table(ctx)
	if got := Fingerprint(&held.Services[0]); got != Fingerprint(&mh2) || r.Fingerprints()[mh.ServiceKey] != got {
		t.Fatalf("after the repair: the dataplane's %s, the Reconciler's %s; want %s", got, r.Fingerprints()[mh.ServiceKey], Fingerprint(&mh2))
	}

	// A failed read: unknown.
	dp.pingErr = context.DeadlineExceeded
	r.Reconcile(ctx, tbl(mh2, rr), t0.Add(4*time.Second))
	if r.Fingerprints() != nil {
		t.Fatalf("after a failed read: %v", r.Fingerprints())
	}
}
