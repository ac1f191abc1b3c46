package director

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anycastd/anycastd/api"
	"github.com/anycastd/anycastd/cluster"
	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/health"
	"github.com/anycastd/anycastd/ipvs"
)

// member is a live director on config "c1" whose checks report down
// (nil report when down is "-"); a "?" in down marks it undecided.
func member(name string, down ...string) cluster.Member {
	m := cluster.Member{Name: name, State: cluster.StateAlive}
	if len(down) == 1 && down[0] == "-" {
		return m
	}
	r := &cluster.HealthReport{Config: "c1"}
	for _, d := range down {
		if d == "?" {
			r.Undecided = true
			continue
		}
		r.Down = append(r.Down, d)
	}
	m.Meta.Health = r
	return m
}

func states(s string) map[string]health.State {
	out := map[string]health.State{}
	for _, f := range strings.Fields(s) {
		id, st, _ := strings.Cut(f, "=")
		out[id] = map[string]health.State{"up": health.Up, "down": health.Down, "?": health.Unknown}[st]
	}
	return out
}

func TestHealthVerdicts(t *testing.T) {
	t0 := time.Unix(1000, 0)
	hold := 30 * time.Second
	cases := []struct {
		name    string
		own     string
		members []cluster.Member
		local   bool
		since   map[string]time.Time
		now     time.Time
		want    string
		// disagree and overridden are the targets, sorted.
		disagree, overridden string
		voters               int
	}{
		{name: "alone: own checks decide", own: "a=up b=down c=?",
			want: "a=up b=down c=?", voters: 1},
		{name: "the soak's case: one director's check times out, the others' pass: it stays up here",
			own: "a=down b=up", members: []cluster.Member{member("d2"), member("d3"), member("d4")},
			want: "a=up b=up", disagree: "a", voters: 4},
		{name: "and the others keep it up too (this director is one vote down)",
			own: "a=up b=up", members: []cluster.Member{member("d2", "a"), member("d3"), member("d4")},
			want: "a=up b=up", voters: 4},
		{name: "a backend that failed: down once most directors see it",
			own: "a=down", members: []cluster.Member{member("d2", "a"), member("d3", "a"), member("d4")},
			want: "a=down", voters: 4},
		{name: "half and half is up (two directors: one failing check is not enough)",
			own: "a=down", members: []cluster.Member{member("d2")},
			want: "a=up", disagree: "a", voters: 2},
		{name: "half and half, this director up: up, no disagreement here",
			own: "a=up", members: []cluster.Member{member("d2", "a")},
			want: "a=up", voters: 2},
		{name: "held down past local_hold: out of this director's table",
			own: "a=down b=up", members: []cluster.Member{member("d2"), member("d3")},
			since: map[string]time.Time{"a": t0.Add(-hold)}, now: t0,
			want: "a=down b=up", disagree: "a", overridden: "a", voters: 3},
		{name: "held down, not yet local_hold",
			own: "a=down", members: []cluster.Member{member("d2"), member("d3")},
			since: map[string]time.Time{"a": t0.Add(-hold + time.Millisecond)}, now: t0,
			want: "a=up", disagree: "a", voters: 3},
		{name: "a restarted director takes the cluster's down verdicts before its first checks, not its up ones",
			own: "a=? b=?", members: []cluster.Member{member("d2", "a"), member("d3", "a")},
			want: "a=down b=?", voters: 3},
		{name: "undecided reports vote down, never up",
			own: "a=down b=?", members: []cluster.Member{member("d2", "?")},
			want: "a=down b=?", voters: 2},
		{name: "undecided reports: their down votes count",
			own: "a=up", members: []cluster.Member{member("d2", "a", "?"), member("d3", "a", "?")},
			want: "a=down", voters: 3},
		{name: "reports on another config, from dead, bad or old members do not count",
			own: "a=down", members: []cluster.Member{
				{Name: "d2", State: cluster.StateAlive, Meta: cluster.Meta{Health: &cluster.HealthReport{Config: "c0"}}},
				{Name: "d3", State: cluster.StateDead, Meta: cluster.Meta{Health: &cluster.HealthReport{Config: "c1"}}},
				{Name: "d4", State: cluster.StateAlive, Bad: "wrong key", Meta: cluster.Meta{Health: &cluster.HealthReport{Config: "c1"}}},
				member("d5", "-"),
				{Name: "d6", State: cluster.StateAlive, Meta: cluster.Meta{Health: &cluster.HealthReport{Config: "c1", TooMany: true}}},
			},
			want: "a=down", voters: 1},
		{name: "this director's own old report in the view is not a second vote",
			own: "a=down", members: []cluster.Member{member("d1"), member("d2")},
			want: "a=up", disagree: "a", voters: 2},
		{name: "a director listing a backend twice is one vote",
			own: "a=up", members: []cluster.Member{member("d2", "a", "a"), member("d3")},
			want: "a=up", voters: 3},
		{name: "local: own checks decide whatever the others say",
			own: "a=down b=up", members: []cluster.Member{member("d2"), member("d3", "b"), member("d4", "b")}, local: true,
			want: "a=down b=up", voters: 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			now := c.now
			if now.IsZero() {
				now = t0
			}
			v := HealthVerdicts(VerdictInput{Self: "d1", Config: "c1", Own: states(c.own), Members: c.members,
				Local: c.local, Hold: hold, Since: c.since, Now: now})
			if want := states(c.want); !maps.Equal(v.States, want) {
				t.Errorf("states %v, want %v", v.States, want)
			}
			if got := strings.Join(slices.Sorted(maps.Keys(v.Disagree)), " "); got != c.disagree {
				t.Errorf("disagree %q, want %q", got, c.disagree)
			}
			if got := strings.Join(v.Overridden, " "); got != c.overridden {
				t.Errorf("overridden %q, want %q", got, c.overridden)
			}
			if v.Voters != c.voters {
				t.Errorf("voters %d, want %d", v.Voters, c.voters)
			}
			for id, since := range v.Disagree {
				want := now
				if s, ok := c.since[id]; ok {
					want = s
				}
				if !since.Equal(want) {
					t.Errorf("%s disagrees since %v, want %v", id, since, want)
				}
				if !slices.Contains(v.Overridden, id) && !v.WakeAt.Equal(since.Add(hold)) {
					t.Errorf("wake at %v, want %v (local_hold's end)", v.WakeAt, since.Add(hold))
				}
			}
		})
	}
}

func TestHealthReport(t *testing.T) {
	r := healthReport("c1", states("b=down a=down c=up d=?"))
	want := &cluster.HealthReport{Config: "c1", Down: []string{"a", "b"}, Undecided: true}
	if !r.Equal(want) {
		t.Fatalf("report %+v, want %+v", r, want)
	}
	// A first check answering while others have not yet changes nothing
	// the others count: the report stays the same, and is not sent again.
	if r2 := healthReport("c1", states("b=down a=down c=up d=? e=?")); !r2.Equal(r) {
		t.Fatalf("report with two undecided %+v, with one %+v: not the same", r2, r)
	}
	many := map[string]health.State{}
	for i := range cluster.MaxReportDown + 1 {
		many[strings.Repeat("x", i+1)] = health.Down
	}
	if r := healthReport("c1", many); !r.TooMany || r.Down != nil {
		t.Fatalf("a report of %d down: %+v, want TooMany and no list", len(many), r)
	}
	// What this director reports is what the others count: a round
	// trip through HealthVerdicts on another director.
	v := HealthVerdicts(VerdictInput{Self: "d2", Config: "c1", Own: states("a=up b=up c=up d=up"),
		Members: []cluster.Member{{Name: "d1", State: cluster.StateAlive, Meta: cluster.Meta{Health: r}},
			member("d3", "a", "b")}})
	if want := states("a=down b=down c=up d=up"); !maps.Equal(v.States, want) {
		t.Fatalf("states %v, want %v", v.States, want)
	}
}

// failingProbes makes this director's probes of one port fail while fail
// is set, the way a busy director's checks time out while the others'
// pass.
// failingProbes fail on demand, the probes to port (0: every port).
type failingProbes struct {
	port int
	fail atomic.Bool
}

func (f *failingProbes) newProbe(c configs.Check, t health.Target) (health.Probe, error) {
	p, err := health.New(c, t)
	if err != nil || (f.port != 0 && int(t.Addr.Port()) != f.port) {
		return p, err
	}
	return probeFunc(func(ctx context.Context) health.Result {
		if f.fail.Load() {
			return health.Result{Err: errors.New("scripted: this director's check fails")}
		}
		return p.Check(ctx)
	}), nil
}

type probeFunc func(ctx context.Context) health.Result

func (f probeFunc) Check(ctx context.Context) health.Result { return f(ctx) }

// weights is a director's IPVS table as "port:weight" per destination.
func weights(t *testing.T, tn *testNode) string {
	t.Helper()
	tab, err := tn.dp.Table(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range tab.Services {
		for _, d := range s.Destinations {
			out = append(out, fmt.Sprintf("%d:%d", d.Port, d.Weight))
		}
	}
	return strings.Join(out, " ")
}

// threeDirectors starts d1, d2 and d3 (seeded by d1) in process on the
// services svc, each config changed by adjust; the directors i for which
// failing says so probe through fp.
func threeDirectors(t *testing.T, svc string, fp *failingProbes, failing func(i int) bool, adjust func(*configs.Config)) []*testNode {
	var nodes []*testNode
	for i := 1; i <= 3; i++ {
		cfg := nodeConfig(t, fmt.Sprintf("d%d", i), svc, "")
		adjust(cfg)
		var opt func(*Options)
		if failing(i) {
			opt = func(o *Options) { o.newProbe = fp.newProbe }
		}
		var seeds []*testNode
		if i > 1 {
			seeds = nodes[:1]
		}
		nodes = append(nodes, startNodeOpts(t, cfg, &recorder{}, ipvs.NewMemory(), opt, seeds...))
	}
	return nodes
}

// One director's checks of a backend fail while the others' pass: every
// director's table keeps it (the same table everywhere, so mh picks the
// same real server on each), the director says it disagrees, and only
// after health.local_hold does it take the backend out of its own table.
// A backend that really fails goes out of every table. Before the
// verdicts were shared, that director zeroed the backend at once, alone.
func TestOneDirectorsFailingCheckKeepsTablesEqual(t *testing.T) {
	b1, b2 := newBackend(t), newBackend(t)
	p1, p2 := strings.Split(b1.addr, ":")[1], strings.Split(b2.addr, ":")[1]
	svc := fmt.Sprintf(`
  - name: web
    vip: 192.0.2.1
    port: 80
    quorum: 1
    forwarding: nat
    backends: [{address: 127.0.0.1, port: %s}, {address: 127.0.0.1, port: %s}]
    health: {type: tcp}
`, p1, p2)
	port1, _ := strconv.Atoi(p1)
	fp := &failingProbes{port: port1}
	nodes := threeDirectors(t, svc, fp, func(i int) bool { return i == 1 },
		func(cfg *configs.Config) { cfg.Health.LocalHold = 3 * time.Second })
	d1 := nodes[0]
	both := fmt.Sprintf("%s:1 %s:1", p1, p2)
	tables := func(want ...string) func() error {
		return func() error {
			for i, tn := range nodes {
				if got := weights(t, tn); got != want[i] {
					return fmt.Errorf("d%d's table %q, want %q", i+1, got, want[i])
				}
			}
			return nil
		}
	}
	waitFor(t, 15*time.Second, "every table with both backends up, d2's and d3's reports at d1", func() error {
		if err := tables(both, both, both)(); err != nil {
			return err
		}
		ms := d1.n.Cluster().Members()
		if len(ms) != 3 {
			return fmt.Errorf("d1 sees %d members", len(ms))
		}
		for _, m := range ms {
			if m.Name != "d1" && (m.Meta.Health == nil || m.Meta.Health.Undecided) {
				return fmt.Errorf("%s's report at d1: %+v", m.Name, m.Meta.Health)
			}
		}
		return nil
	})

	fp.fail.Store(true)
	id := TargetID("web", configs.Backend{Address: mustAddr("127.0.0.1"), Port: port1})
	waitFor(t, 5*time.Second, "d1's check holding the backend down", func() error {
		if st, _ := d1.n.mon.Status(id); st.State != health.Down {
			return fmt.Errorf("d1's check says %v", st.State)
		}
		return nil
	})
	seen := time.Now()
	// Until local_hold (3 s) has passed, every table keeps it.
	for time.Since(seen) < time.Second {
		if err := tables(both, both, both)(); err != nil {
			t.Fatalf("%v after d1's check held the backend down %s", err, time.Since(seen).Round(time.Millisecond))
		}
		time.Sleep(20 * time.Millisecond)
	}
	sv, err := d1.n.ServicesView(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if b := sv.Services[0].Backends[0]; b.Health != "down" || b.Verdict != "up" || b.DownVotes != 1 || b.Voters != 3 ||
		b.DisagreeSince.IsZero() || b.Overridden {
		t.Fatalf("d1's view of the backend: %+v, want its check down, verdict up by 1/3 down, disagreeing, not overridden", b)
	}
	if sv.Services[0].Up != 2 {
		t.Fatalf("d1 counts %d backends up for the quorum, want 2 (the verdict's)", sv.Services[0].Up)
	}

	// Past local_hold, d1 alone takes it out.
	zeroed := fmt.Sprintf("%s:0 %s:1", p1, p2)
	waitFor(t, 10*time.Second, "d1 alone overriding after local_hold", tables(zeroed, both, both))
	if b := mustServices(t, d1).Services[0].Backends[0]; !b.Overridden || b.Verdict != "down" {
		t.Fatalf("d1's view: %+v, want overridden, down", b)
	}
	fp.fail.Store(false)
	waitFor(t, 10*time.Second, "d1 back to the cluster's table once its check passes", tables(both, both, both))

	// A backend that really fails leaves every table.
	b2.stop()
	waitFor(t, 10*time.Second, "the stopped backend out of every table", tables(
		fmt.Sprintf("%s:1 %s:0", p1, p2), fmt.Sprintf("%s:1 %s:0", p1, p2), fmt.Sprintf("%s:1 %s:0", p1, p2)))
}

// Most directors' checks fail at once (their hosts saturated, say) while
// one director's pass: the shared verdict would take the service below
// quorum on every director, and every one would withdraw. The director
// whose checks pass keeps serving on them; the others withdraw, each on
// its own checks, as before verdicts were shared.
func TestMajorityFailingChecksDoNotWithdrawEveryDirector(t *testing.T) {
	b1 := newBackend(t)
	p1 := strings.Split(b1.addr, ":")[1]
	svc := fmt.Sprintf(`
  - name: web
    vip: 192.0.2.1
    port: 80
    quorum: 1
    forwarding: nat
    backends: [{address: 127.0.0.1, port: %s}]
    health: {type: tcp}
`, p1)
	fp := &failingProbes{} // every probe of d1 and d2
	nodes := threeDirectors(t, svc, fp, func(i int) bool { return i < 3 },
		func(cfg *configs.Config) { cfg.Cluster.MaxActive = 3 })
	up, zero := p1+":1", p1+":0"
	announced := func(want ...bool) func() error {
		return func() error {
			for i, tn := range nodes {
				if got := mustServices(t, tn).Services[0].Announced; got != want[i] {
					return fmt.Errorf("d%d announces: %v, want %v (%+v)", i+1, got, want[i], tn.n.StatusView().VIPs)
				}
			}
			return nil
		}
	}
	waitFor(t, 15*time.Second, "every director announcing with the backend up", func() error {
		for i, tn := range nodes {
			if got := weights(t, tn); got != up {
				return fmt.Errorf("d%d's table %q", i+1, got)
			}
		}
		if ms := nodes[2].n.Cluster().Members(); len(ms) != 3 {
			return fmt.Errorf("d3 sees %d members", len(ms))
		}
		return announced(true, true, true)()
	})

	fp.fail.Store(true)
	waitFor(t, 10*time.Second, "d1 and d2 withdrawn, d3 serving on its own checks", func() error {
		if err := announced(false, false, true)(); err != nil {
			return err
		}
		for i, want := range []string{zero, zero, up} {
			if got := weights(t, nodes[i]); got != want {
				return fmt.Errorf("d%d's table %q, want %q", i+1, got, want)
			}
		}
		return nil
	})
	// And it stays so: the verdict is 2 of 3 down, d3 holds it up.
	for range 20 {
		if err := announced(false, false, true)(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if s := mustServices(t, nodes[2]).Services[0]; !s.FailOpen || s.Up != 1 || s.Backends[0].Verdict != "up" || s.Backends[0].DownVotes != 2 {
		t.Fatalf("d3's view of the service: fail_open %v, up %d, backend %+v", s.FailOpen, s.Up, s.Backends[0])
	}
	fp.fail.Store(false)
	waitFor(t, 10*time.Second, "every director back on the shared verdict", func() error {
		if mustServices(t, nodes[2]).Services[0].FailOpen {
			return errors.New("d3 still on its own checks")
		}
		return announced(true, true, true)()
	})
}

func TestFailOpen(t *testing.T) {
	svc := func(name string, quorum int, check string, weights ...int) configs.Service {
		s := configs.Service{Name: name, Quorum: quorum, Health: configs.Check{Type: check}}
		for i, w := range weights {
			s.Backends = append(s.Backends, configs.Backend{Address: mustAddr(fmt.Sprintf("10.0.0.%d", i+1)), Port: 80, Weight: w})
		}
		return s
	}
	id := func(s string, i int) string {
		return TargetID(s, configs.Backend{Address: mustAddr(fmt.Sprintf("10.0.0.%d", i)), Port: 80})
	}
	services := []configs.Service{svc("a", 1, "tcp", 1, 1), svc("b", 2, "tcp", 1, 1, 1), svc("c", 1, "none", 1), svc("d", 1, "tcp", 0, 1)}
	st := func(pairs ...any) map[string]health.State {
		out := map[string]health.State{}
		for i := 0; i < len(pairs); i += 2 {
			out[pairs[i].(string)] = pairs[i+1].(health.State)
		}
		return out
	}
	U, D, X := health.Up, health.Down, health.Unknown
	cases := []struct {
		name        string
		own, shared map[string]health.State
		want        map[string]health.State
		failOpen    []string
	}{
		{name: "the shared verdict keeps the quorum: it stands",
			own: st(id("a", 1), U, id("a", 2), U), shared: st(id("a", 1), D, id("a", 2), U),
			want: st(id("a", 1), D, id("a", 2), U)},
		{name: "below quorum by the verdict, at quorum here: own checks",
			own: st(id("a", 1), U, id("a", 2), D), shared: st(id("a", 1), D, id("a", 2), D),
			want: st(id("a", 1), U, id("a", 2), D), failOpen: []string{"a"}},
		{name: "below quorum both ways: the verdict stands",
			own: st(id("a", 1), D, id("a", 2), X), shared: st(id("a", 1), D, id("a", 2), D),
			want: st(id("a", 1), D, id("a", 2), D)},
		{name: "quorum 2: one up here is not enough",
			own: st(id("b", 1), U, id("b", 2), D, id("b", 3), D), shared: st(id("b", 1), D, id("b", 2), D, id("b", 3), D),
			want: st(id("b", 1), D, id("b", 2), D, id("b", 3), D)},
		{name: "quorum 2, two up here: the whole service on own checks, the other service on the verdict",
			own:    st(id("b", 1), U, id("b", 2), U, id("b", 3), D, id("a", 1), U, id("a", 2), D),
			shared: st(id("b", 1), D, id("b", 2), U, id("b", 3), D, id("a", 1), D, id("a", 2), U),
			want:   st(id("b", 1), U, id("b", 2), U, id("b", 3), D, id("a", 1), D, id("a", 2), U), failOpen: []string{"b"}},
		{name: "a backend at weight 0 does not count toward the quorum",
			own: st(id("d", 1), U, id("d", 2), D), shared: st(id("d", 1), D, id("d", 2), D),
			want: st(id("d", 1), D, id("d", 2), D)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			shared := maps.Clone(tc.shared)
			v := FailOpen(services, tc.own, Verdicts{States: tc.shared})
			if !maps.Equal(v.States, tc.want) {
				t.Errorf("states %v, want %v", v.States, tc.want)
			}
			if !slices.Equal(v.FailOpen, tc.failOpen) {
				t.Errorf("fail open %v, want %v", v.FailOpen, tc.failOpen)
			}
			if !maps.Equal(tc.shared, shared) {
				t.Errorf("the verdicts' map was changed: %v", tc.shared)
			}
		})
	}
}

func mustServices(t *testing.T, tn *testNode) api.ServicesResponse {
	t.Helper()
	sv, err := tn.n.ServicesView(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return sv
}

// BenchmarkHealthVerdicts is a turn's cost on 10,000 backends and eight
// directors, two of which hold ten of them down.
func BenchmarkHealthVerdicts(b *testing.B) {
	own := map[string]health.State{}
	for i := range 10000 {
		own[fmt.Sprintf("svc%d/10.1.%d.%d:80", i/10, i/250, i%250)] = health.Up
	}
	var down []string
	for t := range own {
		if len(down) == 10 {
			break
		}
		down = append(down, t)
	}
	members := []cluster.Member{member("d2", down...), member("d3", down...)}
	for i := 4; i <= 8; i++ {
		members = append(members, member(fmt.Sprintf("d%d", i)))
	}
	in := VerdictInput{Self: "d1", Config: "c1", Own: own, Members: members, Hold: time.Second, Now: time.Unix(1000, 0)}
	b.ReportAllocs()
	for b.Loop() {
		HealthVerdicts(in)
	}
}

// zeroWatch is a memory dataplane that remembers whether a plan ever set
// a destination on port to weight 0 (a poll of the table can miss a
// moment's change).
type zeroWatch struct {
	*ipvs.Memory
	port   uint16
	zeroed atomic.Bool
}

func (z *zeroWatch) Apply(ctx context.Context, p ipvs.Plan) error {
	for _, op := range p {
		if op.Dest.Port == z.port && op.Dest.Weight == 0 && (op.Kind == ipvs.AddDest || op.Kind == ipvs.UpdateDest) {
			z.zeroed.Store(true)
		}
	}
	return z.Memory.Apply(ctx, p)
}

func TestTargetSet(t *testing.T) {
	svc := func(s string) []configs.Service { return nodeConfig(t, "d1", s, "").Services }
	base := TargetSet(svc(`
  - {name: web, vip: 192.0.2.1, port: 80, health: {type: tcp, interval: 2s, timeout: 1s}, backends: [{address: 10.1.0.11}, {address: 10.1.0.12, weight: 2}]}
  - {name: dns, vip: 192.0.2.2, port: 53, protocol: udp, health: {type: none}, backends: [{address: 10.1.0.21}]}
`))
	for _, c := range []struct {
		name, services string
		same           bool
	}{
		{"a check's settings, a weight, the order, an unchecked service's backends: the same set", `
  - {name: dns, vip: 192.0.2.2, port: 53, protocol: udp, health: {type: none}, backends: [{address: 10.1.0.22}]}
  - {name: web, vip: 192.0.2.1, port: 80, health: {type: tcp, interval: 3s, timeout: 2s}, backends: [{address: 10.1.0.12}, {address: 10.1.0.11, weight: 3}]}
`, true},
		{"a backend added", `
  - {name: web, vip: 192.0.2.1, port: 80, health: {type: tcp, interval: 2s, timeout: 1s}, backends: [{address: 10.1.0.11}, {address: 10.1.0.12, weight: 2}, {address: 10.1.0.13}]}
  - {name: dns, vip: 192.0.2.2, port: 53, protocol: udp, health: {type: none}, backends: [{address: 10.1.0.21}]}
`, false},
		{"a service renamed", `
  - {name: www, vip: 192.0.2.1, port: 80, health: {type: tcp, interval: 2s, timeout: 1s}, backends: [{address: 10.1.0.11}, {address: 10.1.0.12, weight: 2}]}
  - {name: dns, vip: 192.0.2.2, port: 53, protocol: udp, health: {type: none}, backends: [{address: 10.1.0.21}]}
`, false},
	} {
		if got := TargetSet(svc(c.services)) == base; got != c.same {
			t.Errorf("%s: same set %v, want %v", c.name, got, c.same)
		}
	}
}

// A check's settings changed (the soak's "check" fault): the directors
// adopt the new document one after another. Two directors, d1's check of
// the backend failing, d2's passing: the tie keeps it up, also while
// they are on different documents. When votes were keyed by the
// document, d1 counted only itself between the two adoptions, and zeroed
// the backend for that moment.
func TestCheckChangeKeepsVotes(t *testing.T) {
	b1 := newBackend(t)
	p1 := strings.Split(b1.addr, ":")[1]
	svc := func(timeout string) string {
		return fmt.Sprintf(`
  - name: web
    vip: 192.0.2.1
    port: 80
    quorum: 1
    forwarding: nat
    backends: [{address: 127.0.0.1, port: %s}]
    health: {type: tcp, timeout: %s}
`, p1, timeout)
	}
	port1, _ := strconv.Atoi(p1)
	fp := &failingProbes{port: port1}
	fp.fail.Store(true)
	zw := &zeroWatch{Memory: ipvs.NewMemory(), port: uint16(port1)}
	cfg1 := nodeConfig(t, "d1", svc("100ms"), "")
	cfg1.Health.LocalHold = time.Hour
	cfg2 := nodeConfig(t, "d2", svc("100ms"), "")
	d2 := startNode(t, cfg2)
	d1 := startNodeOpts(t, cfg1, &recorder{}, zw, func(o *Options) { o.newProbe = fp.newProbe }, d2)
	d1.dp = zw.Memory
	id := TargetID("web", configs.Backend{Address: mustAddr("127.0.0.1"), Port: port1})
	waitFor(t, 15*time.Second, "d1 holding the backend up by d2's vote", func() error {
		sv := mustServices(t, d1)
		if len(sv.Services) == 0 {
			return errors.New("no services yet")
		}
		b := sv.Services[0].Backends[0]
		if b.Health != "down" || b.Verdict != "up" || b.Voters != 2 {
			return fmt.Errorf("d1's view %+v", b)
		}
		return nil
	})
	// Before d2's vote arrived d1 may have zeroed it: from here on it
	// must not.
	zw.zeroed.Store(false)
	if got := weights(t, d1); got != p1+":1" {
		t.Fatalf("d1's table %q", got)
	}
	for i, timeout := range []string{"90ms", "80ms", "70ms"} {
		doc := d2.n.Cluster().Document()
		if _, _, err := d2.n.Apply(context.Background(), doc.Version, doc.Hash, nodeConfig(t, "d2", svc(timeout), "").Services); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "both on the new document", func() error {
			for _, tn := range []*testNode{d1, d2} {
				if v := tn.n.ConfigView().Version; v != doc.Version+1 {
					return fmt.Errorf("%s on v%d", tn.n.cfg.Node.Name, v)
				}
			}
			return nil
		})
		waitFor(t, 5*time.Second, "d1 counting d2's vote again", func() error {
			if b := mustServices(t, d1).Services[0].Backends[0]; b.Voters != 2 {
				return fmt.Errorf("d1's view %+v", b)
			}
			return nil
		})
		if zw.zeroed.Load() {
			t.Fatalf("change %d: d1 zeroed %s while the two adopted the new document", i+1, id)
		}
	}
}

// A disagreement is news only when it lasts: while a failed backend is
// being found by the directors one after another, each one's check
// disagrees for a second or two, and the log says nothing of it.
func TestDisagreementLoggedWhenItLasts(t *testing.T) {
	var buf strings.Builder
	n := &Node{log: slog.New(slog.NewTextHandler(&buf, nil))}
	t0 := time.Unix(1000, 0)
	turn := func(dis map[string]time.Time, at time.Duration) string {
		buf.Reset()
		n.logVerdicts(Verdicts{}, Verdicts{Disagree: dis, Voters: 3}, 30*time.Second, t0.Add(at))
		return buf.String()
	}
	short := map[string]time.Time{"web/a": t0}
	if out := turn(short, time.Second) + turn(nil, 2*time.Second); out != "" {
		t.Fatalf("a 2 s disagreement logged:\n%s", out)
	}
	if out := turn(short, disagreeLogAfter); !strings.Contains(out, "hold it down") || !strings.Contains(out, "target=web/a") {
		t.Fatalf("at %s: %q", disagreeLogAfter, out)
	}
	if out := turn(short, disagreeLogAfter+time.Second); out != "" {
		t.Fatalf("logged twice: %q", out)
	}
	if out := turn(nil, disagreeLogAfter+2*time.Second); !strings.Contains(out, "agree again") {
		t.Fatalf("the end not logged: %q", out)
	}
}
