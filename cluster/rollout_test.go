package cluster

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestRolloutDocuments: a staged rollout travels as documents: started
// against the current one (compare-and-swap), each stage a newer version
// with the same services, its end either the new services for everyone
// or, rolled back, the previous ones under a newer version. Every member
// holds the same rollout state; it is signed like the rest, saved, and
// loaded again after a restart.
func TestRolloutDocuments(t *testing.T) {
	tc := newTestCluster(t)
	keys := [][]byte{key1}
	a := tc.start("a", keys, "")
	b := tc.start("b", keys, "", "a")
	same := func(what string, want *Document) {
		t.Helper()
		eventually(t, 10*time.Second, what, func() error {
			for _, n := range []*node{a, b} {
				got := n.c.Document()
				if got == nil || got.Version != want.Version || got.Hash != want.Hash || got.stateDigest() != want.stateDigest() {
					return fmt.Errorf("a member holds %+v", got)
				}
			}
			return nil
		})
	}
	old, err := a.c.Propose(services(t, 2))
	if err != nil {
		t.Fatal(err)
	}
	same("the first document", old)
	oldSS, _ := old.Decode()

	// Against a stale base: refused, as ProposeIf.
	if _, err := b.c.ProposeRollout(old.Version-1, old.Hash, services(t, 3), 5*time.Second); !errors.Is(err, ErrConflict) {
		t.Fatalf("a rollout against a stale base: %v", err)
	}
	if _, err := b.c.ProposeRollout(old.Version, old.Hash, oldSS, 5*time.Second); !errors.Is(err, ErrRollout) {
		t.Fatalf("a rollout of what the cluster has: %v", err)
	}
	r1, err := b.c.ProposeRollout(old.Version, old.Hash, services(t, 3), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !r1.InProgress() || r1.Rollout.ID != r1.Version || r1.Rollout.Stage != StageStandby || r1.PreviousHash != old.Hash {
		t.Fatalf("the rollout's first document: %+v %+v", r1, r1.Rollout)
	}
	same("the rollout", r1)
	// Nobody is reached yet: everyone applies the old services.
	for _, name := range []string{"a", "b"} {
		if _, h, err := a.c.Document().For(name); err != nil || h != old.Hash {
			t.Fatalf("%s applies %s, %v: want the previous services %s", name, h, err, old.Short())
		}
	}
	if _, err := a.c.ProposeRollout(r1.Version, r1.Hash, services(t, 4), time.Second); !errors.Is(err, ErrRollout) {
		t.Fatalf("a second rollout while one is in progress: %v", err)
	}

	// A stage: b reached.
	st := *r1.Rollout
	st.Reached = []string{"b"}
	r2, err := a.c.UpdateRollout(r1.Version, r1.Hash, st)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Version <= r1.Version || r2.Hash != r1.Hash {
		t.Fatalf("a stage: v%d/%s after v%d/%s", r2.Version, r2.Short(), r1.Version, r1.Short())
	}
	same("the stage", r2)
	if _, h, _ := b.c.Document().For("b"); h != r1.Hash {
		t.Fatal("b, reached, does not apply the new services")
	}
	if _, h, _ := b.c.Document().For("a"); h != old.Hash {
		t.Fatal("a, not reached, applies the new services")
	}
	// An update against the stage before is refused.
	if _, err := b.c.UpdateRollout(r1.Version, r1.Hash, st); !errors.Is(err, ErrConflict) {
		t.Fatalf("an update of a stale stage: %v", err)
	}

	// Restarted, b holds the rollout where it was.
	b.stop()
	loaded, err := LoadDocument(b.dir, keys)
	if err != nil || loaded.Version != r2.Version || !slices.Equal(loaded.Rollout.Reached, []string{"b"}) || loaded.stateDigest() != r2.stateDigest() {
		t.Fatalf("loaded after a restart: %+v %v", loaded, err)
	}
	b = tc.start("b", keys, b.dir, "a")
	same("after b's restart", r2)

	// Rolled back: the previous services, newer, for everyone.
	st.Outcome, st.Reason = OutcomeRolledBack, "b: service web below quorum"
	back, err := b.c.UpdateRollout(r2.Version, r2.Hash, st)
	if err != nil {
		t.Fatal(err)
	}
	if back.Hash != old.Hash || back.InProgress() || back.Previous != nil || back.Rollout.Outcome != OutcomeRolledBack || !back.Newer(r2) {
		t.Fatalf("the rollback: %+v %+v", back, back.Rollout)
	}
	same("the rollback", back)
	for _, name := range []string{"a", "b"} {
		if _, h, _ := a.c.Document().For(name); h != old.Hash {
			t.Fatalf("after the rollback %s applies %s", name, h)
		}
	}

	// A rollout that goes through.
	r3, err := a.c.ProposeRollout(back.Version, back.Hash, services(t, 5), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	done := *r3.Rollout
	done.Stage, done.Reached, done.Outcome = StageAll, []string{"a", "b"}, OutcomeRolledOut
	out, err := a.c.UpdateRollout(r3.Version, r3.Hash, done)
	if err != nil {
		t.Fatal(err)
	}
	same("the rollout done", out)
	if out.Hash != r3.Hash || out.InProgress() || out.Previous != nil {
		t.Fatalf("rolled out: %+v", out)
	}
	if _, err := a.c.UpdateRollout(out.Version, out.Hash, done); !errors.Is(err, ErrRollout) {
		t.Fatalf("an update of a rollout that ended: %v", err)
	}
}

// TestRolloutDocumentChecks: a rollout's state is signed with the rest,
// and a document whose rollout state does not hold together is refused.
func TestRolloutDocumentChecks(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	old, _ := NewDocument(services(t, 2), 4, "a", now, nil)
	mk := func(mut func(d *Document)) *Document {
		d, _ := NewDocument(services(t, 3), 5, "a", now, nil)
		d.Rollout = &Rollout{ID: 5, Stage: StageStandby, Hold: time.Second, Started: now}
		d.Previous, d.PreviousHash = old.Services, old.Hash
		if mut != nil {
			mut(d)
		}
		return d.sign(key1)
	}
	if err := mk(nil).Check(); err != nil {
		t.Fatalf("a good rollout document: %v", err)
	}
	if err := mk(nil).Verify([][]byte{key1}); err != nil {
		t.Fatalf("a good rollout document's tag: %v", err)
	}
	tampered := mk(nil)
	tampered.Rollout.Reached = []string{"evil"}
	if err := tampered.Verify([][]byte{key1}); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("the rollout state changed after signing: %v", err)
	}
	for name, mut := range map[string]func(d *Document){
		"previous services without a rollout": func(d *Document) { d.Rollout = nil },
		"a rollout without previous services": func(d *Document) { d.Previous = nil },
		"previous services that fail their hash": func(d *Document) {
			d.PreviousHash = d.Hash
		},
		"an unknown stage":   func(d *Document) { d.Rollout.Stage = "canary" },
		"an unknown outcome": func(d *Document) { d.Rollout.Outcome = "maybe" },
	} {
		if err := mk(mut).Check(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
