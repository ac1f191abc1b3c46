package director

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/anycastd/anycastd/api"
	"github.com/anycastd/anycastd/cluster"
	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/ipvs"
)

// Tests of the fail-safe rules (DESIGN.md, "Failure principles"): a fault
// on one part costs that part, and the control plane's uncertainty is not
// a reason to withdraw.

const twoUDPVIPs = `
  - name: dns
    vip: 192.0.2.2
    protocol: udp
    port: 53
    health: {type: none}
    backends: [{address: 10.9.9.9}]
  - name: ntp
    vip: 192.0.2.3
    protocol: udp
    port: 123
    health: {type: none}
    backends: [{address: 10.9.9.11}]
`

// flakyReads is a dataplane whose reads fail while failing is set: the
// full read, one service's, and the ping between full reads, as a
// netlink socket that fails does.
type flakyReads struct {
	*ipvs.Memory
	failing atomic.Bool
}

func (f *flakyReads) err() error {
	if f.failing.Load() {
		return fmt.Errorf("netlink: %w", syscall.ENOBUFS)
	}
	return nil
}

func (f *flakyReads) Table(ctx context.Context) (ipvs.Table, error) {
	if err := f.err(); err != nil {
		return ipvs.Table{}, err
	}
	return f.Memory.Table(ctx)
}

func (f *flakyReads) Destinations(ctx context.Context, k ipvs.ServiceKey) ([]ipvs.Destination, error) {
	if err := f.err(); err != nil {
		return nil, err
	}
	return f.Memory.Destinations(ctx, k)
}

func (f *flakyReads) Ping(ctx context.Context) error { return f.err() }

// withdrawnSince reports a set given to the announcer since the n-th that
// lacks one of want.
func withdrawnSince(r *recorder, n int, want ...string) error {
	sets := r.sets()
	for i, s := range sets[min(n, len(sets)):] {
		for _, w := range want {
			if !slices.Contains(strings.Split(s, ","), w) {
				return fmt.Errorf("set %d withdrew %s: %q", n+i, w, s)
			}
		}
	}
	return nil
}

// Case 5 of the fail-safe issue: a failed save of the IPVS ownership
// record was joined with read errors and read as "IPVS unreachable", and
// one failed read withdrew every VIP. Now a save failure costs nothing but
// a report (and is retried), and reads must fail for a while before the
// director withdraws.
func TestIPVSSaveAndReadFailuresDoNotWithdraw(t *testing.T) {
	cfg := nodeConfig(t, "d1", twoUDPVIPs, "")
	dp := &flakyReads{Memory: ipvs.NewMemory()}
	rec := &recorder{}
	d1 := startNodeDP(t, cfg, rec, dp)
	both := []string{"192.0.2.2/32", "192.0.2.3/32"}
	waitFor(t, 10*time.Second, "announce", func() error { return expectAnnounced(both...)(d1) })
	mark := len(rec.sets())

	// The ownership record cannot be written (its path is a directory):
	// a change of services must still be applied and announced.
	owned := filepath.Join(cfg.Node.StateDir, "ipvs-owned.json")
	os.Remove(owned)
	if err := os.Mkdir(owned, 0o700); err != nil {
		t.Fatal(err)
	}
	doc := d1.n.Cluster().Document()
	more := nodeConfig(t, "d1", twoUDPVIPs+`  - name: syslog
    vip: 192.0.2.4
    protocol: udp
    port: 514
    health: {type: none}
    backends: [{address: 10.9.9.12}]
`, "").Services
	if _, _, err := d1.n.Apply(context.Background(), doc.Version, doc.Hash, more); err != nil {
		t.Fatal(err)
	}
	all3 := append(slices.Clone(both), "192.0.2.4/32")
	waitFor(t, 5*time.Second, "the new service announced despite the failed save", func() error {
		if err := expectAnnounced(all3...)(d1); err != nil {
			return err
		}
		if st := d1.n.StatusView(); st.Reconcile.SaveError == "" {
			return fmt.Errorf("the save error is not reported: %+v", st.Reconcile)
		}
		return nil
	})
	os.Remove(owned)
	waitFor(t, 5*time.Second, "the save retried", func() error {
		b, err := os.ReadFile(owned)
		if err != nil || !strings.Contains(string(b), "192.0.2.4") {
			return fmt.Errorf("record %q: %v", b, err)
		}
		return nil
	})
	if err := withdrawnSince(rec, mark, both...); err != nil {
		t.Fatal(err)
	}

	// Reads fail for a moment: nothing is withdrawn.
	mark = len(rec.sets())
	loops := d1.n.StatusView().Reconcile.Loops
	dp.failing.Store(true)
	waitFor(t, 5*time.Second, "a turn with a failed read", func() error {
		if st := d1.n.StatusView(); st.Reconcile.Loops < loops+2 {
			return fmt.Errorf("loops %d", st.Reconcile.Loops)
		}
		return nil
	})
	dp.failing.Store(false)
	if err := withdrawnSince(rec, mark, all3...); err != nil {
		t.Fatal(err)
	}

	// Reads that keep failing are a verdict: this director withdraws.
	dp.failing.Store(true)
	waitFor(t, 10*time.Second, "withdrawn once IPVS stays unreadable", func() error { return expectAnnounced()(d1) })
	dp.failing.Store(false)
	waitFor(t, 10*time.Second, "announced again", func() error { return expectAnnounced(all3...)(d1) })
}

// Case 2 of the fail-safe issue: a change of only a check's settings made
// every backend of the service Unknown on every director at once (the
// document reaches all within milliseconds), so the VIP went below quorum
// everywhere until the next probes.
func TestCheckSettingsChangeKeepsVIP(t *testing.T) {
	b := newBackend(t)
	_, port, _ := strings.Cut(b.addr, ":")
	svc := func(timeout string) string {
		return fmt.Sprintf(`
  - name: web
    vip: 192.0.2.1
    port: %s
    forwarding: nat
    quorum: 1
    backends: [{address: 127.0.0.1, port: %s}]
    health: {type: tcp, interval: 3s, timeout: %s}
`, port, port, timeout)
	}
	cfg := nodeConfig(t, "d1", svc("1s"), "")
	rec := &recorder{}
	d1 := startNodeWith(t, cfg, rec)
	waitFor(t, 10*time.Second, "announce", func() error { return expectAnnounced("192.0.2.1/32")(d1) })
	mark := len(rec.sets())
	doc := d1.n.Cluster().Document()
	if _, _, err := d1.n.Apply(context.Background(), doc.Version, doc.Hash, nodeConfig(t, "d1", svc("2s"), "").Services); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the new document applied", func() error {
		if v := d1.n.ConfigView().Version; v != doc.Version+1 {
			return fmt.Errorf("version %d", v)
		}
		return nil
	})
	// The next probe is up to 3 s away: let the loop turn a few times on
	// the new document before it.
	loops := d1.n.StatusView().Reconcile.Loops
	waitFor(t, 2*time.Second, "three turns", func() error {
		if l := d1.n.StatusView().Reconcile.Loops; l < loops+3 {
			return fmt.Errorf("loops %d", l)
		}
		return nil
	})
	if err := withdrawnSince(rec, mark, "192.0.2.1/32"); err != nil {
		t.Fatal(err)
	}
	if err := expectAnnounced("192.0.2.1/32")(d1); err != nil {
		t.Fatal(err)
	}

	// The check moves to another port of the backend (where something
	// listens too): the same, its probes had started over from unknown
	// (TestVMDaemons saw the canary of a staged rollout withdraw).
	other := newBackend(t)
	_, otherPort, _ := strings.Cut(other.addr, ":")
	moved := strings.Replace(svc("2s"), "timeout: 2s}", "timeout: 2s, port: "+otherPort+"}", 1)
	mark = len(rec.sets())
	doc = d1.n.Cluster().Document()
	if _, _, err := d1.n.Apply(context.Background(), doc.Version, doc.Hash, nodeConfig(t, "d1", moved, "").Services); err != nil {
		t.Fatal(err)
	}
	loops = d1.n.StatusView().Reconcile.Loops
	waitFor(t, 2*time.Second, "three turns on the moved check", func() error {
		if l := d1.n.StatusView().Reconcile.Loops; l < loops+3 || d1.n.ConfigView().Version != doc.Version+1 {
			return fmt.Errorf("loops %d", l)
		}
		return nil
	})
	if err := withdrawnSince(rec, mark, "192.0.2.1/32"); err != nil {
		t.Fatal(err)
	}
}

// A cluster document this director cannot apply (here: a check whose CA
// file is missing on this host) failed the "config" self check, and so
// withdrew every VIP; on every director at once when the cause is in the
// document. Now the director keeps serving the document it applied and
// says why in its status.
func TestUnappliableDocumentKeepsServingTheLastOne(t *testing.T) {
	cfg := nodeConfig(t, "d1", twoUDPVIPs, "")
	rec := &recorder{}
	d1 := startNodeWith(t, cfg, rec)
	both := []string{"192.0.2.2/32", "192.0.2.3/32"}
	waitFor(t, 10*time.Second, "announce", func() error { return expectAnnounced(both...)(d1) })
	mark := len(rec.sets())
	doc := d1.n.Cluster().Document()
	bad := nodeConfig(t, "d1", twoUDPVIPs+`  - name: web
    vip: 192.0.2.4
    port: 443
    backends: [{address: 10.9.9.13}]
    health: {type: https, ca_cert: /nonexistent/anycastd-test-ca.pem}
`, "").Services
	if _, _, err := d1.n.Apply(context.Background(), doc.Version, doc.Hash, bad); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the refusal reported", func() error {
		if st := d1.n.StatusView(); st.Config.Error == "" {
			return fmt.Errorf("no error in status: %+v", st.Config)
		}
		return nil
	})
	// Self checks run every second: give them two.
	time.Sleep(2 * time.Second)
	if err := withdrawnSince(rec, mark, both...); err != nil {
		t.Fatal(err)
	}
	if st := d1.n.StatusView(); !st.Eligible {
		t.Errorf("not eligible: %s", st.Reason)
	}
}

// Case 12: a reload whose proposal failed had already changed the local
// settings (while logging that nothing changed) and stored the file's
// hash, so the next SIGHUP of the same file did nothing.
func TestReloadAllOrNothingAndRetried(t *testing.T) {
	cfg := nodeConfig(t, "d1", twoUDPVIPs, "")
	d1 := startNode(t, cfg)
	waitFor(t, 10*time.Second, "announce", func() error { return expectAnnounced("192.0.2.2/32", "192.0.2.3/32")(d1) })
	v := d1.n.ConfigView().Version

	cfg2 := nodeConfig(t, "d1", twoUDPVIPs+`  - name: syslog
    vip: 192.0.2.4
    protocol: udp
    port: 514
    health: {type: none}
    backends: [{address: 10.9.9.12}]
`, "")
	cfg2.Node.StateDir = cfg.Node.StateDir
	cfg2.Cluster.MaxActive = 5
	cfg2.Health.Self.Checks = []configs.SelfCheck{{Name: "marker", Check: configs.Check{Type: configs.CheckExec,
		Command: []string{"true"}, Interval: time.Second, Timeout: time.Second, Rise: 1, Fall: 1}}}
	hasMarker := func() bool {
		for _, c := range d1.n.StatusView().SelfChecks {
			if c.Name == "marker" {
				return true
			}
		}
		return false
	}

	// The document cannot be saved: the proposal fails, and nothing of
	// the reload is applied.
	doc := filepath.Join(cfg.Node.StateDir, "cluster-config.json")
	os.Rename(doc, doc+".away")
	if err := os.Mkdir(doc, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := d1.n.Reload(cfg2); err == nil {
		t.Fatal("a reload whose proposal failed reported success")
	}
	d1.n.Wake()
	time.Sleep(1500 * time.Millisecond) // a self-check round
	if d1.n.ConfigView().Version != v || hasMarker() {
		t.Fatalf("a failed reload changed something: version %d (was %d), marker check %v", d1.n.ConfigView().Version, v, hasMarker())
	}
	d1.n.mu.Lock()
	maxActive := d1.n.cfg.Cluster.MaxActive
	d1.n.mu.Unlock()
	if maxActive != cfg.Cluster.MaxActive {
		t.Errorf("a failed reload changed max_active to %d", maxActive)
	}

	// The same file again, once the state dir is writable: applied.
	os.Remove(doc)
	os.Rename(doc+".away", doc)
	if err := d1.n.Reload(cfg2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the retried reload applied", func() error {
		if got := d1.n.ConfigView().Version; got != v+1 {
			return fmt.Errorf("version %d, want %d", got, v+1)
		}
		if !hasMarker() {
			return fmt.Errorf("no marker self check")
		}
		return expectAnnounced("192.0.2.2/32", "192.0.2.3/32", "192.0.2.4/32")(d1)
	})
}

// Case 13: two daemons on one state dir overwrote each other's files.
func TestStateDirLocked(t *testing.T) {
	cfg := nodeConfig(t, "d1", twoUDPVIPs, "")
	d1 := startNode(t, cfg)
	cfg2 := nodeConfig(t, "d2", twoUDPVIPs, "")
	cfg2.Node.StateDir = cfg.Node.StateDir
	if _, err := New(Options{Config: cfg2, Dataplane: ipvs.NewMemory(), Announcer: &recorder{}}); err == nil ||
		!strings.Contains(err.Error(), "in use by another anycastd (pid ") {
		t.Fatalf("a second director on the same state dir: %v", err)
	}
	// Released when the first stops.
	d1.stop()
	n, err := New(Options{Config: cfg2, Dataplane: ipvs.NewMemory(), Announcer: &recorder{}})
	if err != nil {
		t.Fatalf("after the first stopped: %v", err)
	}
	n.lock.Close()
}

// Case 14: a drain whose file could not be written failed and left the
// director undrained. The operator's intent takes effect at once; the
// save is reported and retried.
func TestDrainTakesEffectWhenItCannotBeSaved(t *testing.T) {
	cfg := nodeConfig(t, "d1", twoUDPVIPs, "")
	d1 := startNode(t, cfg)
	waitFor(t, 10*time.Second, "announce", func() error { return expectAnnounced("192.0.2.2/32", "192.0.2.3/32")(d1) })
	path := filepath.Join(cfg.Node.StateDir, "drain.json")
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := d1.n.Drain(true, "maintenance"); !errors.Is(err, ErrDrainNotSaved) {
		t.Fatalf("want ErrDrainNotSaved, got %v", err)
	}
	if v := d1.n.drainView(); !v.Drained || v.SaveError == "" {
		t.Errorf("drain view %+v: want drained, with the save error", v)
	}
	waitFor(t, 5*time.Second, "withdrawn after the GSHUT hold", func() error { return expectAnnounced()(d1) })
	os.Remove(path)
	waitFor(t, 10*time.Second, "the drain saved once it can be", func() error {
		b, err := os.ReadFile(path)
		if err != nil || !strings.Contains(string(b), `"drained":true`) {
			return fmt.Errorf("drain.json %q, %v", b, err)
		}
		if v := d1.n.drainView(); v.SaveError != "" {
			return fmt.Errorf("still reports %s", v.SaveError)
		}
		return nil
	})
}

// Case 22: every API error came back as "invalid services config (1
// problems)".
func TestAPIErrorsSayWhatTheyAre(t *testing.T) {
	cfg := nodeConfig(t, "d1", twoUDPVIPs, "")
	d1 := startNode(t, cfg)
	h := d1.n.Handler()
	cases := []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"POST", "/v1/drain", `{"reason": 5}`, 400, "request body: json: cannot unmarshal number"},
		{"POST", "/v1/drain", `{"why": "x"}`, 400, `request body: json: unknown field "why"`},
		{"GET", "/v1/nope", "", 404, "no such API call: GET /v1/nope"},
		{"POST", "/v1/config", `{"services": [{"name": "a"}]}`, 422, "invalid services config"},
	}
	for _, tc := range cases {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body)))
		var resp api.ErrorResponse
		json.Unmarshal(rec.Body.Bytes(), &resp)
		if rec.Code != tc.code || !strings.HasPrefix(resp.Error, tc.want) {
			t.Errorf("%s %s %s: %d %q, want %d %q", tc.method, tc.path, tc.body, rec.Code, resp.Error, tc.code, tc.want)
		}
		if !strings.HasPrefix(tc.want, "invalid services config") && len(resp.Problems) > 0 {
			t.Errorf("%s %s: not a config error, but problems %v", tc.method, tc.path, resp.Problems)
		}
	}
}

// Case 21: a directory above the API socket that others can write let
// another user replace the socket and capture `anyctl drain`.
func TestSocketDirMustBeRootOnly(t *testing.T) {
	base := t.TempDir()
	open := filepath.Join(base, "open")
	os.Mkdir(open, 0o755)
	os.Chmod(open, 0o777)
	under := filepath.Join(open, "run")
	os.Mkdir(under, 0o755)
	sticky := filepath.Join(base, "sticky")
	os.Mkdir(sticky, 0o755)
	os.Chmod(sticky, 0o1777|os.ModeSticky)
	safeUnderSticky := filepath.Join(sticky, "run")
	os.Mkdir(safeUnderSticky, 0o700)
	for _, tc := range []struct {
		dir  string
		want string
	}{
		{open, "is writable by others (mode 0777)"},
		{under, "directory " + open + " is writable by others"},
		{sticky, "is writable by others (mode 1777)"}, // the socket's own directory: sticky is not enough
		{safeUnderSticky, ""},
		{base, ""},
	} {
		err := checkSocketDir(tc.dir)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.dir, err, tc.want)
		}
	}
}

// Case 17: two applies at once on two directors with the same base both
// returned success; the tie was settled later by hash and one change was
// silently lost. Now exactly one succeeds and the other is told it lost,
// with the winner, and every director runs the winner.
func TestConcurrentAppliesOneLoses(t *testing.T) {
	d1 := startNode(t, nodeConfig(t, "d1", twoUDPVIPs, ""))
	d2 := startNode(t, nodeConfig(t, "d2", twoUDPVIPs, ""), d1)
	nodes := []*testNode{d1, d2}
	waitFor(t, 10*time.Second, "one config on both", func() error {
		a, b := d1.n.cl.Document(), d2.n.cl.Document()
		if a.IsZero() || b.IsZero() || a.Hash != b.Hash {
			return fmt.Errorf("d1 %s, d2 %s", a.Short(), b.Short())
		}
		if len(d1.n.cl.Members()) != 2 || len(d2.n.cl.Members()) != 2 {
			return fmt.Errorf("members")
		}
		return nil
	})
	for round := range 3 {
		base := d1.n.cl.Document()
		type result struct {
			name string
			doc  *cluster.Document
			err  error
		}
		res := make(chan result, 2)
		var start sync.WaitGroup
		start.Add(1)
		for i, tn := range nodes {
			svc := nodeConfig(t, "x", twoUDPVIPs+fmt.Sprintf(`  - name: r%d-from-%d
    vip: 192.0.2.%d
    protocol: udp
    port: 514
    health: {type: none}
    backends: [{address: 10.9.9.12}]
`, round, i, 10+i), "").Services
			go func() {
				start.Wait()
				doc, _, err := tn.n.Apply(context.Background(), base.Version, base.Hash, svc)
				res <- result{tn.n.cfg.Node.Name, doc, err}
			}()
		}
		start.Done()
		var won, lost []result
		for range 2 {
			r := <-res
			switch {
			case r.err == nil:
				won = append(won, r)
			case errors.Is(r.err, ErrLost) || errors.Is(r.err, cluster.ErrConflict):
				lost = append(lost, r)
			default:
				t.Fatalf("%s: %v", r.name, r.err)
			}
		}
		if len(won) != 1 || len(lost) != 1 {
			t.Fatalf("round %d: %d applies reported success, %d lost (want 1 and 1): %+v %+v", round, len(won), len(lost), won, lost)
		}
		w := won[0].doc
		if lost[0].doc != nil && lost[0].doc.Hash != w.Hash {
			t.Errorf("the loser was told of %s, the winner is %s", lost[0].doc.Short(), w.Short())
		}
		waitFor(t, 5*time.Second, "both on the winner", func() error {
			for _, tn := range nodes {
				if d := tn.n.cl.Document(); d.Hash != w.Hash {
					return fmt.Errorf("%s runs %s, not the winner %s", tn.n.cfg.Node.Name, d.Short(), w.Short())
				}
			}
			return nil
		})
	}
}
