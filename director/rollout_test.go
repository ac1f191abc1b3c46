package director

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/api"
	"github.com/anycastd/anycastd/cluster"
	"github.com/anycastd/anycastd/configs"
)

func TestJudgeRollout(t *testing.T) {
	v1, v2 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	before := Standing{Up: map[string]bool{"web/10.0.0.1:80": true, "web/10.0.0.2:80": true, "web/10.0.0.3:80": false},
		Servable: map[netip.Addr]bool{v1: true, v2: false}, Healthy: true}
	for _, c := range []struct {
		name  string
		after Standing
		want  []string
	}{
		{"the same", before, nil},
		{"a backend down that was up", Standing{Up: map[string]bool{"web/10.0.0.1:80": false, "web/10.0.0.2:80": true},
			Servable: map[netip.Addr]bool{v1: true}, Healthy: true},
			[]string{"backend web/10.0.0.1:80 is down (it was up)"}},
		{"one down before, down still; one removed; one new and down: nothing worse", Standing{
			Up: map[string]bool{"web/10.0.0.1:80": true, "web/10.0.0.3:80": false, "web/10.0.0.9:80": false}, Servable: map[netip.Addr]bool{v1: true}, Healthy: true}, nil},
		{"a new check fails everywhere", Standing{Up: map[string]bool{"web/10.0.0.1:80": false, "web/10.0.0.2:80": false, "web/10.0.0.3:80": false},
			Servable: map[netip.Addr]bool{v1: false, v2: false}, Healthy: true},
			[]string{"backend web/10.0.0.1:80 is down (it was up)", "backend web/10.0.0.2:80 is down (it was up)",
				"VIP 192.0.2.1 can no longer be announced (below quorum or not in IPVS)"}},
		{"down here and on the directors still on the previous services: not the change's", Standing{
			Up: map[string]bool{"web/10.0.0.1:80": false, "web/10.0.0.2:80": true}, Servable: map[netip.Addr]bool{v1: true}, Healthy: true,
			DownElsewhere: map[string]bool{"web/10.0.0.1:80": true}}, nil},
		{"a service refused, own health lost", Standing{Up: before.Up, Servable: before.Servable, Refused: []string{"dns"}},
			[]string{"service dns is refused by the kernel", "this director's own health fails"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := JudgeRollout(before, c.after); !slices.Equal(got, c.want) {
				t.Errorf("got %q\nwant %q", got, c.want)
			}
		})
	}
}

// TestNextRollout walks a rollout through its stages, and each way it
// ends early, as the driver decides them.
func TestNextRollout(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	hold := 2 * time.Second
	mkDoc := func(stage cluster.Stage, reached ...string) *cluster.Document {
		return &cluster.Document{Version: 9, Hash: "new", Rollout: &cluster.Rollout{ID: 8, Stage: stage, Reached: reached, Hold: hold},
			Previous: json.RawMessage("[]"), PreviousHash: "old"}
	}
	// d1, d2 active; d3, d4 standby; every one holds v9.
	roles := map[string]cluster.Role{"d1": cluster.RoleActive, "d2": cluster.RoleActive, "d3": cluster.RoleStandby, "d4": cluster.RoleStandby}
	view := func(mod func(m *cluster.Member)) []cluster.Member {
		var ms []cluster.Member
		for _, n := range []string{"d1", "d2", "d3", "d4"} {
			m := cluster.Member{Name: n, State: cluster.StateAlive, Meta: cluster.Meta{ConfigVersion: 9, Staged: true}}
			if mod != nil {
				mod(&m)
			}
			ms = append(ms, m)
		}
		return ms
	}
	report := func(state cluster.RolloutState, names ...string) func(m *cluster.Member) {
		return func(m *cluster.Member) {
			if slices.Contains(names, m.Name) {
				m.Meta.Rollout = &cluster.RolloutReport{ID: 8, State: state}
				if state == cluster.RolloutWorse {
					m.Meta.Rollout.Problems = []string{"backend web/10.0.0.1:80 is down (it was up)"}
				}
			}
		}
	}
	both := func(fs ...func(m *cluster.Member)) func(m *cluster.Member) {
		return func(m *cluster.Member) {
			for _, f := range fs {
				f(m)
			}
		}
	}
	type want struct {
		stage   cluster.Stage
		reached []string
		outcome cluster.Outcome
		reason  string // a part of it
		none    bool   // nothing to do
	}
	for _, c := range []struct {
		name    string
		self    string
		doc     *cluster.Document
		members []cluster.Member
		now     time.Duration // after Seen
		want    want
	}{
		{"started: the first standby", "d1", mkDoc(cluster.StageStandby), view(nil), 0,
			want{stage: cluster.StageStandby, reached: []string{"d3"}}},
		{"only the driver moves it", "d2", mkDoc(cluster.StageStandby), view(nil), 0, want{none: true}},
		{"the standby holds", "d1", mkDoc(cluster.StageStandby, "d3"), view(report(cluster.RolloutHolding, "d3")), time.Second, want{none: true}},
		{"the standby good: one active", "d1", mkDoc(cluster.StageStandby, "d3"), view(report(cluster.RolloutOK, "d3")), time.Second,
			want{stage: cluster.StageActive, reached: []string{"d3", "d1"}}},
		{"the standby worse: rolled back", "d1", mkDoc(cluster.StageStandby, "d3"), view(report(cluster.RolloutWorse, "d3")), time.Second,
			want{outcome: cluster.OutcomeRolledBack, reason: "on d3 (stage standby) backend web/10.0.0.1:80 is down"}},
		{"a report of another rollout does not count", "d1", mkDoc(cluster.StageStandby, "d3"),
			view(func(m *cluster.Member) { m.Meta.Rollout = &cluster.RolloutReport{ID: 7, State: cluster.RolloutOK} }), time.Second, want{none: true}},
		{"no report in time: rolled back", "d1", mkDoc(cluster.StageStandby, "d3"), view(nil), StageTimeout(hold),
			want{outcome: cluster.OutcomeRolledBack, reason: "d3 did not report the new services good"}},
		{"the standby died: another", "d1", mkDoc(cluster.StageStandby, "d3"),
			view(func(m *cluster.Member) {
				if m.Name == "d3" {
					m.State = cluster.StateDead
				}
			}), time.Second, want{stage: cluster.StageStandby, reached: []string{"d3", "d4"}}},
		{"no standby: straight to an active one", "d1", mkDoc(cluster.StageStandby),
			view(func(m *cluster.Member) {
				if m.Name == "d3" || m.Name == "d4" {
					m.State = cluster.StateDead
				}
			}), 0, want{stage: cluster.StageActive, reached: []string{"d1"}}},
		{"the active one good: everyone", "d1", mkDoc(cluster.StageActive, "d3", "d1"), view(report(cluster.RolloutOK, "d3", "d1")), time.Second,
			want{stage: cluster.StageAll, reached: []string{"d3", "d1", "d2", "d4"}}},
		{"the active one worse: rolled back", "d1", mkDoc(cluster.StageActive, "d3", "d1"),
			view(both(report(cluster.RolloutOK, "d3"), report(cluster.RolloutWorse, "d1"))), time.Second,
			want{outcome: cluster.OutcomeRolledBack, reason: "on d1 (stage active)"}},
		{"all good: rolled out", "d1", mkDoc(cluster.StageAll, "d3", "d1", "d2", "d4"), view(report(cluster.RolloutOK, "d1", "d2", "d3", "d4")), time.Second,
			want{stage: cluster.StageAll, reached: []string{"d3", "d1", "d2", "d4"}, outcome: cluster.OutcomeRolledOut}},
		{"all but one good: waits", "d1", mkDoc(cluster.StageAll, "d3", "d1", "d2", "d4"), view(report(cluster.RolloutOK, "d1", "d2", "d3")), time.Second,
			want{none: true}},
		{"a director that does not hold the document yet: the stage waits for it", "d1", mkDoc(cluster.StageStandby),
			view(func(m *cluster.Member) {
				if m.Name == "d3" {
					m.Meta.ConfigVersion = 8
				}
			}), time.Second, want{none: true}},
		{"one that never takes it: rolled back", "d1", mkDoc(cluster.StageStandby),
			view(func(m *cluster.Member) {
				if m.Name == "d3" {
					m.Meta.ConfigVersion = 8
				}
			}), StageTimeout(hold), want{outcome: cluster.OutcomeRolledBack, reason: "d3 did not take the rollout's document"}},
		{"the first live member that understands rollouts drives", "d2", mkDoc(cluster.StageStandby),
			view(func(m *cluster.Member) {
				if m.Name == "d1" {
					m.Meta.Staged = false
				}
			}), 0, want{stage: cluster.StageStandby, reached: []string{"d3"}}},
		{"a rollout that ended: nothing", "d1", &cluster.Document{Version: 9, Hash: "new", Rollout: &cluster.Rollout{ID: 8, Outcome: cluster.OutcomeRolledOut}},
			view(nil), 0, want{none: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			seen := t0
			step := NextRollout(RolloutInput{Self: c.self, Doc: c.doc, Members: c.members, Roles: roles, Seen: seen, Now: seen.Add(c.now)})
			if c.want.none {
				if step.Update != nil {
					t.Fatalf("moved it: %+v (%s)", step.Update, step.Why)
				}
				return
			}
			u := step.Update
			if u == nil {
				t.Fatalf("did nothing (wakes at %v)", step.WakeAt)
			}
			if u.ID != 8 || u.Outcome != c.want.outcome || !strings.Contains(u.Reason, c.want.reason) {
				t.Errorf("outcome %q, reason %q; want %q, %q", u.Outcome, u.Reason, c.want.outcome, c.want.reason)
			}
			if c.want.outcome != cluster.OutcomeRolledBack && (u.Stage != c.want.stage || !reflect.DeepEqual(u.Reached, c.want.reached)) {
				t.Errorf("stage %s reached %v; want %s %v", u.Stage, u.Reached, c.want.stage, c.want.reached)
			}
			if slices.Equal(c.doc.Rollout.Reached, u.Reached) && len(u.Reached) > 0 && u.Outcome == "" {
				t.Error("the update changed nothing")
			}
		})
	}
}

// TestNodesStagedRollout: four directors (d1, d2 active, d3, d4 warm
// standbys). A good change goes through the stages, a standby first, then
// an active director, then the rest, and ends rolled out with every
// director on it. A change whose new health check fails on every backend
// stops at the standby canary and is rolled back by the cluster itself:
// no active director ever withdraws anything, and every director ends on
// the previous services again.
func TestNodesStagedRollout(t *testing.T) {
	b1, b2 := newBackend(t), newBackend(t)
	port := func(b *backend) string { return strings.Split(b.addr, ":")[1] }
	svc := fmt.Sprintf(`
  - name: web
    vip: 192.0.2.1
    port: %s
    quorum: 1
    forwarding: nat
    backends: [{address: 127.0.0.1, port: %s}, {address: 127.0.0.1, port: %s}]
    health: {type: tcp}
`, port(b1), port(b1), port(b2))
	var nodes []*testNode
	var recs []*recorder
	for i := 1; i <= 4; i++ {
		r := &recorder{}
		recs = append(recs, r)
		nodes = append(nodes, startNodeWith(t, nodeConfig(t, fmt.Sprintf("d%d", i), svc, ""), r, nodes...))
	}
	d1 := nodes[0]
	waitFor(t, 10*time.Second, "d1 and d2 announce", func() error {
		for i, tn := range nodes {
			want := []string(nil)
			if i < 2 {
				want = []string{"192.0.2.1/32"}
			}
			if err := expectAnnounced(want...)(tn); err != nil {
				return err
			}
		}
		return nil
	})
	srv := httptest.NewServer(d1.n.Handler())
	defer srv.Close()
	applies := func(hash string) func(*testNode) error {
		return func(tn *testNode) error {
			tn.n.mu.Lock()
			h := tn.n.appliedHash
			tn.n.mu.Unlock()
			if h != hash {
				return fmt.Errorf("%s applies %s, want %s", tn.n.cfg.Node.Name, shortHash(h), shortHash(hash))
			}
			return nil
		}
	}
	// follow polls the config until its rollout has ended, and returns the
	// stages it saw (stage:reached) and the last answer.
	follow := func(id uint64) ([]string, api.ConfigResponse) {
		t.Helper()
		var seen []string
		var cur api.ConfigResponse
		waitFor(t, 30*time.Second, "the rollout to end", func() error {
			getJSON(t, srv.URL+"/v1/config", &cur)
			r := cur.Rollout
			if r == nil || r.ID != id {
				return fmt.Errorf("rollout %+v", r)
			}
			if st := r.Stage + ":" + strings.Join(r.Reached, ","); len(seen) == 0 || seen[len(seen)-1] != st {
				seen = append(seen, st)
			}
			if r.Outcome == "" {
				return fmt.Errorf("stage %s", r.Stage)
			}
			return nil
		})
		return seen, cur
	}
	marks := make([]int, len(recs))
	for i, r := range recs[:2] {
		marks[i] = len(r.sets())
	}

	// A good change: a second backend port list order kept, a new VIP.
	var cur api.ConfigResponse
	getJSON(t, srv.URL+"/v1/config", &cur)
	good := slices.Clone(cur.Services)
	extra := good[0]
	extra.Name, extra.VIP = "web2", mustAddr("192.0.2.2")
	good = append(good, extra)
	code, body := postJSON(t, srv.URL+"/v1/config", api.ApplyRequest{BaseVersion: cur.Version, BaseHash: cur.Hash, Services: good})
	if code != http.StatusOK {
		t.Fatalf("staged apply: %d %s", code, body)
	}
	var started api.ConfigResponse
	json.Unmarshal([]byte(body), &started)
	if started.Rollout == nil || started.Rollout.Outcome != "" || started.Rollout.Stage != "standby" {
		t.Fatalf("the answer to a staged apply: %+v", started.Rollout)
	}
	stages, end := follow(started.Rollout.ID)
	t.Logf("good change: stages %v, outcome %s", stages, end.Rollout.Outcome)
	if end.Rollout.Outcome != "rolled_out" {
		t.Fatalf("the good change ended %s: %s", end.Rollout.Outcome, end.Rollout.Reason)
	}
	if want := []string{"standby:d3", "active:d3,d1", "all:d3,d1,d2,d4"}; !slices.Equal(stages[1:], want) && !slices.Equal(stages, want) {
		t.Errorf("stages %v, want %v", stages, want)
	}
	waitFor(t, 10*time.Second, "every director on the new services", all(nodes, applies(end.Hash)))
	waitFor(t, 10*time.Second, "d1 and d2 announce both VIPs", all(nodes[:2], expectAnnounced("192.0.2.1/32", "192.0.2.2/32")))

	// A bad change: the check goes to a port nobody listens on.
	getJSON(t, srv.URL+"/v1/config", &cur)
	goodHash := cur.Hash
	bad := slices.Clone(cur.Services)
	for i := range bad {
		bad[i].Health.Port = 1
	}
	for i, r := range recs[:2] {
		marks[i] = len(r.sets())
	}
	code, body = postJSON(t, srv.URL+"/v1/config", api.ApplyRequest{BaseVersion: cur.Version, BaseHash: cur.Hash, Services: bad})
	if code != http.StatusOK {
		t.Fatalf("staged apply: %d %s", code, body)
	}
	json.Unmarshal([]byte(body), &started)
	stages, end = follow(started.Rollout.ID)
	t.Logf("bad change: stages %v, outcome %s: %s", stages, end.Rollout.Outcome, end.Rollout.Reason)
	if end.Rollout.Outcome != "rolled_back" || !strings.Contains(end.Rollout.Reason, "on d3 (stage standby)") ||
		!strings.Contains(end.Rollout.Reason, "is down (it was up)") {
		t.Fatalf("the bad change ended %s: %s", end.Rollout.Outcome, end.Rollout.Reason)
	}
	if end.Hash != goodHash {
		t.Errorf("after the rollback the config is %s, want the previous %s", shortHash(end.Hash), shortHash(goodHash))
	}
	waitFor(t, 10*time.Second, "every director back on the previous services", all(nodes, applies(goodHash)))
	for i, r := range recs[:2] {
		if err := withdrawnSince(r, marks[i], "192.0.2.1/32", "192.0.2.2/32"); err != nil {
			t.Errorf("d%d: %v", i+1, err)
		}
	}
	// A staged change while one is in progress is refused; --now is not.
	getJSON(t, srv.URL+"/v1/config", &cur)
	if code, body = postJSON(t, srv.URL+"/v1/config", api.ApplyRequest{BaseVersion: cur.Version, BaseHash: cur.Hash, Services: cur.Services}); code != http.StatusConflict {
		t.Errorf("a staged apply of the services the cluster has: %d %s", code, body)
	}
}

// TestStagedRolloutRefusedForAnOldBuild: a live member that does not
// understand rollouts (a build before them, here a bare cluster member
// that publishes no such flag) would reject the rollout's document, fall
// behind and withdraw: a staged apply is refused, naming it, and changes
// nothing; --now still works.
func TestStagedRolloutRefusedForAnOldBuild(t *testing.T) {
	d1 := startNode(t, nodeConfig(t, "d1", twoUDPVIPs, ""))
	old, err := cluster.New(cluster.Options{Name: "old", Bind: mustAddr("127.0.0.1"), StateDir: t.TempDir(),
		Seeds: []string{d1.n.Cluster().LocalAddr().String()}, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- old.Run(ctx) }()
	defer func() { cancel(); <-done }()
	old.SetMeta(cluster.Meta{Priority: 100, Healthy: true, Build: "v0.2.0"})
	waitFor(t, 10*time.Second, "d1 sees the old member", func() error {
		for _, m := range d1.n.Cluster().Members() {
			if m.Name == "old" && m.State == cluster.StateAlive {
				return nil
			}
		}
		return fmt.Errorf("not yet")
	})
	srv := httptest.NewServer(d1.n.Handler())
	defer srv.Close()
	var cur api.ConfigResponse
	waitFor(t, 10*time.Second, "d1's config", func() error {
		getJSON(t, srv.URL+"/v1/config", &cur)
		if len(cur.Services) == 0 {
			return fmt.Errorf("none yet")
		}
		return nil
	})
	next := slices.Clone(cur.Services)
	next[0].Backends = append(next[0].Backends, configs.Backend{Address: mustAddr("10.9.9.10"), Port: 53, Weight: 1})
	code, body := postJSON(t, srv.URL+"/v1/config", api.ApplyRequest{BaseVersion: cur.Version, BaseHash: cur.Hash, Services: next})
	if code != http.StatusPreconditionFailed || !strings.Contains(body, "old runs anycastd v0.2.0") {
		t.Fatalf("a staged apply with an old build alive: %d %s", code, body)
	}
	var after api.ConfigResponse
	getJSON(t, srv.URL+"/v1/config", &after)
	if after.Version != cur.Version || after.Hash != cur.Hash {
		t.Fatalf("the refused apply changed the config: v%d -> v%d", cur.Version, after.Version)
	}
	if code, body = postJSON(t, srv.URL+"/v1/config", api.ApplyRequest{BaseVersion: cur.Version, BaseHash: cur.Hash, Services: next, Now: true}); code != http.StatusOK {
		t.Fatalf("--now with an old build alive: %d %s", code, body)
	}
}
