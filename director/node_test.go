package director

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anycastd/anycastd/api"
	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/ipvs"
	"github.com/anycastd/anycastd/labs/labtest"
	"github.com/anycastd/anycastd/routing"
)

// A backend that answers TCP on loopback, and can be stopped and started.
type backend struct {
	mu   sync.Mutex
	addr string
	l    net.Listener
}

func newBackend(t *testing.T) *backend {
	b := &backend{}
	b.start(t)
	t.Cleanup(b.stop)
	return b
}

func (b *backend) start(t *testing.T) {
	b.mu.Lock()
	defer b.mu.Unlock()
	addr := b.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	b.l, b.addr = l, l.Addr().String()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

func (b *backend) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.l != nil {
		b.l.Close()
		b.l = nil
	}
}

type testNode struct {
	n      *Node
	cancel context.CancelFunc
	done   chan error
	dp     *ipvs.Memory
}

func (tn *testNode) stop() {
	if tn.cancel != nil {
		tn.cancel()
		<-tn.done
		tn.cancel = nil
	}
}

func nodeConfig(t *testing.T, name, services string, extra string) *configs.Config {
	t.Helper()
	doc := fmt.Sprintf(`node: {name: %s, state_dir: %s, dataplane: memory}
cluster: {bind: 127.0.0.1, port: 7946, insecure: true, max_active: 2, priority: 100}
routing:
  mode: bgp
  bgp:
    asn: 65001
    router_id: 127.0.0.1
    listen_port: -1
    graceful_shutdown: 1s
    communities: ["65001:100"]
    neighbors: [{address: 127.0.0.99, asn: 65000}]
health: {interval: 100ms, timeout: 100ms, rise: 1, fall: 1}
%s
services:
%s`, name, t.TempDir(), extra, services)
	cfg, err := configs.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Cluster.Port = 0 // any free port
	return cfg
}

func startNode(t *testing.T, cfg *configs.Config, seeds ...*testNode) *testNode {
	t.Helper()
	return startNodeWith(t, cfg, &recorder{}, seeds...)
}

func startNodeWith(t *testing.T, cfg *configs.Config, ann routing.Announcer, seeds ...*testNode) *testNode {
	t.Helper()
	return startNodeDP(t, cfg, ann, ipvs.NewMemory(), seeds...)
}

// startNodeDP starts a node on dp, a Memory or a wrapper of one (which
// then stands in for it as the dataplane).
func startNodeDP(t *testing.T, cfg *configs.Config, ann routing.Announcer, dpi ipvs.Dataplane, seeds ...*testNode) *testNode {
	t.Helper()
	return startNodeOpts(t, cfg, ann, dpi, nil, seeds...)
}

// startNodeOpts is startNodeDP with the node's options changed by opt.
func startNodeOpts(t *testing.T, cfg *configs.Config, ann routing.Announcer, dpi ipvs.Dataplane, opt func(*Options), seeds ...*testNode) *testNode {
	t.Helper()
	for _, s := range seeds {
		cfg.Cluster.Seeds = append(cfg.Cluster.Seeds, s.n.Cluster().LocalAddr().String())
	}
	dp, _ := dpi.(*ipvs.Memory)
	log := slog.New(slog.DiscardHandler)
	if testing.Verbose() && os.Getenv("ANYCASTD_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", cfg.Node.Name)
	}
	// GoBGP keeps route-selection settings in package variables, so
	// several speakers in one process race (harmless, but -race says so):
	// in-process nodes record their announcements; the real speaker runs
	// one per process in the multi-process and lab tests.
	o := Options{Config: cfg, Log: log, Dataplane: dpi, Announcer: ann, JoinWait: 2 * time.Second,
		Resync: 200 * time.Millisecond, BehindGrace: time.Second}
	if opt != nil {
		opt(&o)
	}
	n, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tn := &testNode{n: n, cancel: cancel, done: make(chan error, 1), dp: dp}
	go func() { tn.done <- n.Run(ctx) }()
	t.Cleanup(tn.stop)
	select {
	case <-n.Cluster().Ready():
	case err := <-tn.done:
		t.Fatal(err)
	}
	return tn
}

// oneBackendService is the services section of one service, web on
// 192.0.2.1 at b's port with quorum 1, b its only backend, checked by
// health (YAML).
func oneBackendService(b *backend, health string) string {
	port := strings.Split(b.addr, ":")[1]
	return fmt.Sprintf(`
  - name: web
    vip: 192.0.2.1
    port: %s
    quorum: 1
    backends: [{address: 127.0.0.1, port: %s}]
    health: %s
`, port, port, health)
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	return labtest.Poll(t, 10*time.Millisecond, timeout, what, cond)
}

func announced(tn *testNode) []string {
	var out []string
	for _, a := range tn.n.ann.Status().Announced {
		s := a.Prefix.String()
		if a.GracefulShutdown {
			s += "+gshut"
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func expectAnnounced(want ...string) func(tn *testNode) error {
	return func(tn *testNode) error {
		if got := announced(tn); !slices.Equal(got, want) {
			return fmt.Errorf("%s announces %v, want %v", tn.n.cfg.Node.Name, got, want)
		}
		return nil
	}
}

func all(nodes []*testNode, f func(*testNode) error) func() error {
	return func() error {
		for _, tn := range nodes {
			if err := f(tn); err != nil {
				return err
			}
		}
		return nil
	}
}

func TestNodesEndToEnd(t *testing.T) {
	b1, b2 := newBackend(t), newBackend(t)
	svc := fmt.Sprintf(`
  - name: web
    vip: 192.0.2.1
    port: %s
    quorum: 2
    forwarding: nat
    backends: [{address: 127.0.0.1, port: %s}, {address: 127.0.0.1, port: %s}]
    health: {type: tcp}
  - name: dns
    vip: 192.0.2.2
    protocol: udp
    port: 53
    quorum: 0
    health: {type: none}
    backends: [{address: 10.9.9.9}]
`, strings.Split(b1.addr, ":")[1], strings.Split(b1.addr, ":")[1], strings.Split(b2.addr, ":")[1])
	// dN with priority: d1 and d2 active, d3 standby (max_active 2).
	var nodes []*testNode
	for i := 1; i <= 3; i++ {
		cfg := nodeConfig(t, fmt.Sprintf("d%d", i), svc, "")
		cfg.Cluster.Priority = 100 + i
		nodes = append(nodes, startNode(t, cfg, nodes...))
	}
	d1, d2, d3 := nodes[0], nodes[1], nodes[2]

	waitFor(t, 10*time.Second, "d1, d2 announce both VIPs, d3 standby", func() error {
		for _, tn := range nodes[:2] {
			if err := expectAnnounced("192.0.2.1/32", "192.0.2.2/32")(tn); err != nil {
				return err
			}
		}
		if err := expectAnnounced()(d3); err != nil {
			return err
		}
		if r := d3.n.StatusView().Role; r != "standby" {
			return fmt.Errorf("d3 is %s", r)
		}
		return nil
	})
	// Same IPVS table on every director, standby included.
	tables := func() error {
		var first ipvs.Table
		for i, tn := range nodes {
			tb, _ := tn.dp.Table(context.Background())
			if len(tb.Services) != 2 {
				return fmt.Errorf("d%d has %d services", i+1, len(tb.Services))
			}
			if i == 0 {
				first = tb
			} else if len(ipvs.Diff(first, tb)) != 0 {
				return fmt.Errorf("d%d's table differs from d1's: %v", i+1, ipvs.Diff(first, tb))
			}
		}
		return nil
	}
	waitFor(t, 5*time.Second, "identical IPVS tables", tables)

	// The API's member view: 2 active, 1 standby, same config.
	srv := httptest.NewServer(d1.n.Handler())
	defer srv.Close()
	var mr api.MembersResponse
	getJSON(t, srv.URL+"/v1/members", &mr)
	roles := map[string]string{}
	for _, m := range mr.Members {
		roles[m.Name] = m.Role
	}
	if roles["d1"] != "active" || roles["d2"] != "active" || roles["d3"] != "standby" {
		t.Errorf("roles in the API: %v", roles)
	}

	// One backend down: below quorum 2, every director withdraws
	// 192.0.2.1 and zeroes the backend's weight; 192.0.2.2 stays.
	b2.stop()
	waitFor(t, 10*time.Second, "192.0.2.1 withdrawn below quorum", all(nodes[:2], expectAnnounced("192.0.2.2/32")))
	waitFor(t, 5*time.Second, "weight 0 everywhere", all(nodes, func(tn *testNode) error {
		tb, _ := tn.dp.Table(context.Background())
		for _, s := range tb.Services {
			if s.Port != 53 && s.Destinations[1].Weight != 0 {
				return fmt.Errorf("%s: %s weight %d", tn.n.cfg.Node.Name, s.Destinations[1].DestKey, s.Destinations[1].Weight)
			}
		}
		return nil
	}))
	b2.start(t)
	waitFor(t, 10*time.Second, "back above quorum", all(nodes[:2], expectAnnounced("192.0.2.1/32", "192.0.2.2/32")))

	// A config applied through d2's API reaches every director.
	srv2 := httptest.NewServer(d2.n.Handler())
	defer srv2.Close()
	var cur api.ConfigResponse
	getJSON(t, srv2.URL+"/v1/config", &cur)
	next := slices.Clone(cur.Services)
	next[1].Backends = append(next[1].Backends, configs.Backend{Address: mustAddr("10.9.9.10"), Port: 53, Weight: 1})
	start := time.Now()
	code, body := postJSON(t, srv2.URL+"/v1/config", api.ApplyRequest{BaseVersion: cur.Version, BaseHash: cur.Hash, Services: next})
	if code != http.StatusOK {
		t.Fatalf("apply: %d %s", code, body)
	}
	el := waitFor(t, 10*time.Second, "new backend on every director", all(nodes, func(tn *testNode) error {
		tb, _ := tn.dp.Table(context.Background())
		for _, s := range tb.Services {
			if s.Port == 53 && len(s.Destinations) == 2 {
				return nil
			}
		}
		return fmt.Errorf("%s has not applied it", tn.n.cfg.Node.Name)
	}))
	t.Logf("config applied on d2 reached all 3 IPVS tables in %v", time.Since(start).Round(time.Millisecond))
	_ = el
	// The same base again is a conflict and changes nothing.
	code, body = postJSON(t, srv2.URL+"/v1/config", api.ApplyRequest{BaseVersion: cur.Version, BaseHash: cur.Hash, Services: cur.Services})
	if code != http.StatusConflict || !strings.Contains(body, "changed meanwhile") {
		t.Errorf("stale apply: %d %s", code, body)
	}
	// An invalid config is refused with its problems.
	bad := slices.Clone(next)
	bad[0].Port = 70000
	code, body = postJSON(t, srv2.URL+"/v1/config", api.ApplyRequest{BaseVersion: cur.Version + 1, Services: bad})
	if code != http.StatusUnprocessableEntity || !strings.Contains(body, "services[0].port") {
		t.Errorf("invalid apply: %d %s", code, body)
	}

	// Drain d1: GSHUT for the hold, then withdrawn; d3 moves up.
	if err := d1.n.Drain(true, "kernel upgrade"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "d1 announces with GSHUT", func() error {
		return expectAnnounced("192.0.2.1/32+gshut", "192.0.2.2/32+gshut")(d1)
	})
	waitFor(t, 5*time.Second, "d1 withdrawn, d3 active", func() error {
		if err := expectAnnounced()(d1); err != nil {
			return err
		}
		return expectAnnounced("192.0.2.1/32", "192.0.2.2/32")(d3)
	})
	if err := d1.n.Drain(false, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "d1 back, d3 standby again", func() error {
		if err := expectAnnounced("192.0.2.1/32", "192.0.2.2/32")(d1); err != nil {
			return err
		}
		return expectAnnounced()(d3)
	})

	// Stopping d2 (SIGTERM): GSHUT, withdraw, leave; d3 takes its slot.
	d2.cancel()
	waitFor(t, 10*time.Second, "d3 active after d2 left", func() error { return expectAnnounced("192.0.2.1/32", "192.0.2.2/32")(d3) })
	if err := <-d2.done; err != nil {
		t.Errorf("d2 stopped with %v", err)
	}
	d2.cancel = nil
	if got := announced(d2); len(got) != 0 {
		t.Errorf("d2 still announces %v after stopping", got)
	}
	tb, _ := d2.dp.Table(context.Background())
	if len(tb.Services) != 2 {
		t.Errorf("d2's IPVS table was not left in place: %d services", len(tb.Services))
	}
}

func TestNodeRestartKeepsClusterConfig(t *testing.T) {
	svc := `
  - name: dns
    vip: 192.0.2.2
    protocol: udp
    port: 53
    health: {type: none}
    backends: [{address: 10.9.9.9}]
`
	cfg1 := nodeConfig(t, "d1", svc, "")
	d1 := startNode(t, cfg1)
	cfg2 := nodeConfig(t, "d2", svc, "")
	d2 := startNode(t, cfg2, d1)
	waitFor(t, 10*time.Second, "both announce", all([]*testNode{d1, d2}, expectAnnounced("192.0.2.2/32")))

	// The cluster moves on (apply on d1) while d2 is down.
	d2.stop()
	cur := d1.n.ConfigView()
	next := slices.Clone(cur.Services)
	next[0].Backends = append(next[0].Backends, configs.Backend{Address: mustAddr("10.9.9.10"), Port: 53, Weight: 1})
	doc, _, err := d1.n.Apply(context.Background(), cur.Version, cur.Hash, next)
	if err != nil {
		t.Fatal(err)
	}
	want := doc.Version

	// d2 restarts with its unchanged file: it must take the cluster's
	// newer config, not bring its file's back.
	cfg2b := *cfg2
	cfg2b.Cluster.Seeds = nil
	d2b := startNode(t, &cfg2b, d1)
	waitFor(t, 10*time.Second, "d2 on the cluster's config", func() error {
		if v := d2b.n.ConfigView().Version; v != want {
			return fmt.Errorf("d2 at v%d, want v%d", v, want)
		}
		if v := d1.n.ConfigView().Version; v != want {
			return fmt.Errorf("d1 moved to v%d", v)
		}
		return nil
	})

	// Alone (d1 gone), a restarted d2 serves what it served before.
	d1.stop()
	d2b.stop()
	cfg2c := *cfg2
	cfg2c.Cluster.Seeds = nil
	d2c := startNode(t, &cfg2c)
	waitFor(t, 10*time.Second, "lone d2 serves the persisted config", func() error {
		if v := d2c.n.ConfigView().Version; v != want {
			return fmt.Errorf("d2 at v%d, want v%d", v, want)
		}
		return expectAnnounced("192.0.2.2/32")(d2c)
	})

	// An edit of the file while down is a change: proposed at start.
	d2c.stop()
	cfg2d := nodeConfig(t, "d2", svc+`  - name: ntp
    vip: 192.0.2.3
    protocol: udp
    port: 123
    health: {type: none}
    backends: [{address: 10.9.9.11}]
`, "")
	cfg2d.Node.StateDir = cfg2.Node.StateDir
	d2d := startNode(t, cfg2d)
	waitFor(t, 10*time.Second, "edited file proposed", func() error {
		cv := d2d.n.ConfigView()
		if cv.Version != want+1 || len(cv.Services) != 2 {
			return fmt.Errorf("d2 at v%d with %d services", cv.Version, len(cv.Services))
		}
		return nil
	})
}

func TestNodeReloadInvalidAndDrainPersist(t *testing.T) {
	svc := `
  - name: dns
    vip: 192.0.2.2
    protocol: udp
    port: 53
    health: {type: none}
    backends: [{address: 10.9.9.9}]
`
	cfg := nodeConfig(t, "d1", svc, "")
	d1 := startNode(t, cfg)
	waitFor(t, 10*time.Second, "announce", func() error { return expectAnnounced("192.0.2.2/32")(d1) })
	v := d1.n.ConfigView().Version

	// A reload with changed services proposes them.
	cfg2 := nodeConfig(t, "d1", svc+`  - name: ntp
    vip: 192.0.2.3
    protocol: udp
    port: 123
    health: {type: none}
    backends: [{address: 10.9.9.11}]
`, "")
	cfg2.Node.StateDir = cfg.Node.StateDir
	if err := d1.n.Reload(cfg2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "reloaded services announced", func() error { return expectAnnounced("192.0.2.2/32", "192.0.2.3/32")(d1) })
	if got := d1.n.ConfigView().Version; got != v+1 {
		t.Errorf("version %d after reload, want %d", got, v+1)
	}
	// The same file again is no change.
	if err := d1.n.Reload(cfg2); err != nil {
		t.Fatal(err)
	}
	if got := d1.n.ConfigView().Version; got != v+1 {
		t.Errorf("version %d after an unchanged reload", got)
	}

	// Drain survives a restart.
	if err := d1.n.Drain(true, "maintenance"); err != nil {
		t.Fatal(err)
	}
	d1.stop()
	d1b := startNode(t, cfg2)
	waitFor(t, 5*time.Second, "restarted drained", func() error {
		st := d1b.n.StatusView()
		if !st.Drain.Drained || st.Drain.Reason != "maintenance" {
			return fmt.Errorf("drain %+v", st.Drain)
		}
		return expectAnnounced()(d1b)
	})
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

func postJSON(t *testing.T, url string, v any) (int, string) {
	t.Helper()
	b, _ := json.Marshal(v)
	resp, err := http.Post(url, "application/json", strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sb strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, sb.String()
}

// recorder is a routing.Announcer that keeps the set it was given, and
// every set it was given.
type recorder struct {
	mu      sync.Mutex
	set     []routing.Announcement
	history [][]routing.Announcement
}

// sets are the sets given so far, as sorted prefix lists.
func (r *recorder) sets() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, s := range r.history {
		var ps []string
		for _, a := range s {
			ps = append(ps, a.Prefix.String())
		}
		slices.Sort(ps)
		out = append(out, strings.Join(ps, ","))
	}
	return out
}

// electorRecorder is a recorder that elects (routing.Elects).
type electorRecorder struct {
	recorder
	changed chan struct{}
}

func (e *electorRecorder) Changed() <-chan struct{} { return e.changed }

func (r *recorder) Run(ctx context.Context) error {
	<-ctx.Done()
	r.mu.Lock()
	r.set = nil
	r.mu.Unlock()
	return nil
}

func (r *recorder) Set(_ context.Context, anns []routing.Announcement) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.set = slices.Clone(anns)
	r.history = append(r.history, r.set)
	return nil
}

func (r *recorder) Changed() <-chan struct{} { return nil }

func (r *recorder) Status() routing.Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return routing.Status{Mode: "test", Announced: slices.Clone(r.set)}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// A change that removes one VIP and adds another: a plain announcer
// (BGP) is first given the withdraw-only set (what stays), then the full
// set; one that elects (VRRP) only the full set, as a withdraw-only set would
// make it resign what it holds for an instant.
func TestWithdrawPhaseSkippedForElector(t *testing.T) {
	svc := func(name, vip string) string {
		return fmt.Sprintf("  - name: %s\n    vip: %s\n    protocol: udp\n    port: 53\n    health: {type: none}\n    backends: [{address: 10.9.9.9}]\n", name, vip)
	}
	for _, tc := range []struct {
		name         string
		ann          interface{ sets() []string }
		withdrawOnly bool
	}{
		{"plain", &recorder{}, true},
		{"elector", &electorRecorder{changed: make(chan struct{})}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := nodeConfig(t, "d1", svc("a", "192.0.2.2")+svc("b", "192.0.2.3"), "")
			d1 := startNodeWith(t, cfg, tc.ann.(routing.Announcer))
			waitFor(t, 10*time.Second, "announce", func() error { return expectAnnounced("192.0.2.2/32", "192.0.2.3/32")(d1) })
			before := len(tc.ann.sets())
			cfg2 := nodeConfig(t, "d1", svc("a", "192.0.2.2")+svc("c", "192.0.2.4"), "")
			cfg2.Node.StateDir = cfg.Node.StateDir
			if err := d1.n.Reload(cfg2); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 5*time.Second, "new set", func() error { return expectAnnounced("192.0.2.2/32", "192.0.2.4/32")(d1) })
			after := tc.ann.sets()[before:]
			got := slices.Contains(after, "192.0.2.2/32")
			if got != tc.withdrawOnly {
				t.Errorf("sets after the change %q: withdraw-only set given: %v, want %v", after, got, tc.withdrawOnly)
			}
		})
	}
}

// A VIP that comes back above quorum is announced only once its backends'
// health has settled: right after the backend is seen up again the VIP is
// held ("settling"), and announced one settle time (rise x interval +
// timeout, here 10 x 100 ms + 100 ms) later. Without the hold the VIP was
// announced at the first backend up, while the others (whose paths had
// failed with this director's own) were still at weight 0 here: the soak
// lab saw flows moved to a director back from a blackhole reset so.
func TestNodeSettlesBeforeAnnouncing(t *testing.T) {
	b := newBackend(t)
	tn := startNode(t, nodeConfig(t, "d1", oneBackendService(b, "{type: tcp, interval: 100ms, timeout: 100ms, rise: 10, fall: 1}"), ""))
	vip := func() api.VIPView {
		for _, v := range tn.n.StatusView().VIPs {
			return v
		}
		return api.VIPView{}
	}
	waitFor(t, 10*time.Second, "192.0.2.1 announced", func() error { return expectAnnounced("192.0.2.1/32")(tn) })
	b.stop()
	waitFor(t, 10*time.Second, "192.0.2.1 withdrawn below quorum", func() error { return expectAnnounced()(tn) })
	b.start(t)
	waitFor(t, 10*time.Second, "the backend seen up again", func() error {
		if r := vip().Reason; strings.Contains(r, "below quorum") {
			return fmt.Errorf("reason %q", r)
		}
		return nil
	})
	if v := vip(); v.Announced || !strings.HasPrefix(v.Reason, "settling: ") {
		t.Fatalf("right after the backend came back: announced %v, reason %q; want held, settling", v.Announced, v.Reason)
	}
	if got := announced(tn); len(got) != 0 {
		t.Fatalf("announces %v while settling", got)
	}
	waitFor(t, 10*time.Second, "192.0.2.1 announced after settling", func() error { return expectAnnounced("192.0.2.1/32")(tn) })
}
