package cluster

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// holdDead makes n hold other dead at its real address, as one side of a
// healed partition does for a while; long enough ago that n's reconnect
// rounds leave it alone (the test is about the answers, not the rejoin).
func holdDead(n, other *node, name string) {
	n.c.mu.Lock()
	defer n.c.mu.Unlock()
	n.c.members[name] = &Member{Name: name, Addr: other.c.LocalAddr(), State: StateDead, Since: time.Now().Add(-2 * reconnectFor)}
}

// After a partition heals the two sides learn at different times that
// the other is back. A member asked for its document or its state by one
// it still holds dead answers all the same: the asker runs (the soak lab
// saw a director's requests go unanswered for 8 s, and it withdrew as
// config behind meanwhile).
func TestRequestsAnsweredToMembersHeldDead(t *testing.T) {
	tc := newTestCluster(t)
	a := tc.start("a", nil, "")
	b := tc.start("b", nil, "") // no seeds: neither knows the other
	doc, err := a.c.Propose(services(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	a.c.SetMeta(Meta{Priority: 100, Healthy: true, Reason: "a's state"})
	holdDead(a, b, "b")
	w, _ := json.Marshal(notice{From: "b"})
	(*delegate)(a.c).NotifyMsg(append([]byte{msgWant}, w...))
	(*delegate)(a.c).NotifyMsg(append([]byte{msgWantSt}, w...))
	eventually(t, 5*time.Second, "a's document and state at b", func() error {
		if got := b.c.Document(); got == nil || got.Hash != doc.Hash {
			return fmt.Errorf("b holds document %v", got)
		}
		b.c.mu.Lock()
		st := b.c.states["a"]
		b.c.mu.Unlock()
		if st.Reason != "a's state" {
			return fmt.Errorf("b holds a's state %+v", st)
		}
		return nil
	})
}

// A member whose metadata names a newer document than the one held here
// is asked for it at once: its notice went by gossip only to the members
// its author held alive, and push/pull is up to half a minute away.
func TestNewerDocumentInMetadataIsFetched(t *testing.T) {
	tc := newTestCluster(t)
	a := tc.start("a", nil, "")
	b := tc.start("b", nil, "")
	doc, err := a.c.Propose(services(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	holdDead(a, b, "b") // and a answers b although it holds it dead
	meta, err := Meta{Priority: 100, Healthy: true, ConfigVersion: doc.Version, ConfigHash: doc.Short()}.Encode(memberlist.MetaMaxSize)
	if err != nil {
		t.Fatal(err)
	}
	addr := a.c.LocalAddr()
	(*events)(b.c).NotifyUpdate(&memberlist.Node{Name: "a", Addr: addr.Addr().AsSlice(), Port: addr.Port(), Meta: meta})
	eventually(t, 5*time.Second, "a's document at b", func() error {
		if got := b.c.Document(); got == nil || got.Hash != doc.Hash {
			return fmt.Errorf("b holds document %v", got)
		}
		return nil
	})

	// Metadata naming the document held, or an older one, asks nothing.
	for _, m := range []Meta{{ConfigVersion: doc.Version, ConfigHash: doc.Short()}, {ConfigVersion: doc.Version - 1, ConfigHash: "ffffffffffff"}, {}} {
		if metaDocNewer(m, doc) {
			t.Errorf("metadata v%d/%s: newer than v%d/%s", m.ConfigVersion, m.ConfigHash, doc.Version, doc.Short())
		}
	}
	for _, m := range []Meta{{ConfigVersion: doc.Version + 1}, {ConfigVersion: doc.Version, ConfigHash: "ffffffffffff"}} {
		if !metaDocNewer(m, doc) {
			t.Errorf("metadata v%d/%s: not newer than v%d/%s", m.ConfigVersion, m.ConfigHash, doc.Version, doc.Short())
		}
	}
	if !metaDocNewer(Meta{ConfigVersion: 1, ConfigHash: "abc"}, nil) {
		t.Error("any document is newer than none")
	}
}

// A member's state that reached one member only (its author was cut off
// right after sending it) reaches the others through that member: it is
// passed on by gossip, as memberlist passes on what it learns of members.
// Push/pull is a minute away here, so only the gossip can carry it.
func TestStateIsPassedOn(t *testing.T) {
	tc := newTestCluster(t)
	tc.adjust = func(o *Options) { o.Timing = LANTiming; o.Timing.PushPull = time.Minute }
	b := tc.start("b", nil, "")
	c := tc.start("c", nil, "", "b")
	eventually(t, 5*time.Second, "b and c see each other", func() error {
		if got := alive(c.c.Members()); len(got) != 2 {
			return fmt.Errorf("c sees %v", got)
		}
		return nil
	})
	report := &HealthReport{Config: "c1", Down: []string{"web/10.1.0.11:80"}}
	msg, _ := json.Marshal(stateMsg{Name: "x", State: MemberState{Seq: 7, Reason: "passed on", Health: report}})
	(*delegate)(b.c).NotifyMsg(append([]byte{msgState}, msg...))
	eventually(t, 5*time.Second, "x's state at c", func() error {
		c.c.mu.Lock()
		st := c.c.states["x"]
		c.c.mu.Unlock()
		if st.Seq != 7 || st.Reason != "passed on" || !st.Health.Equal(report) {
			return fmt.Errorf("c holds x's state %+v", st)
		}
		return nil
	})
	// An older state is not passed on again (nor taken).
	old, _ := json.Marshal(stateMsg{Name: "x", State: MemberState{Seq: 6, Reason: "older"}})
	(*delegate)(b.c).NotifyMsg(append([]byte{msgState}, old...))
	b.c.mu.Lock()
	kept := b.c.states["x"].Reason
	b.c.mu.Unlock()
	if kept != "passed on" {
		t.Fatalf("b took an older state: %q", kept)
	}
}

// A newer document named in metadata is asked for once, not again of
// each member that adopts it meanwhile (a large document would come once
// per member), and again after askAgain if it has not come.
func TestNewerDocumentAskedOnce(t *testing.T) {
	now := time.Unix(1000, 0)
	c, err := New(Options{Name: "b", Bind: netip.MustParseAddr("127.0.0.1"), StateDir: t.TempDir(), Log: logger(t, "b"),
		Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	meta, _ := Meta{Priority: 100, Healthy: true, ConfigVersion: 3, ConfigHash: "abcdefabcdef"}.Encode(memberlist.MetaMaxSize)
	update := func(name string) {
		(*events)(c).NotifyUpdate(&memberlist.Node{Name: name, Addr: []byte{127, 0, 0, 2}, Port: 7946, Meta: meta})
	}
	update("a")
	if c.asked != "3/abcdefabcdef" || !c.askedAt.Equal(now) {
		t.Fatalf("asked %q at %v, want 3/abcdefabcdef at %v", c.asked, c.askedAt, now)
	}
	first := now
	now = now.Add(time.Second)
	update("d") // another member on it: not asked again
	if !c.askedAt.Equal(first) {
		t.Fatalf("asked again after 1s (at %v)", c.askedAt)
	}
	now = now.Add(askAgain)
	update("d")
	if !c.askedAt.Equal(now) {
		t.Fatalf("not asked again after %v (last at %v)", askAgain+time.Second, c.askedAt)
	}
}
