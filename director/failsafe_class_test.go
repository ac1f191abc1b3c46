package director

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/ipvs"
	"github.com/anycastd/anycastd/routing"
)

// timeline records, for every director, when its announced set changed:
// the upstream's view of the tier.
type timeline struct {
	mu     sync.Mutex
	events []announceEvent
}

type announceEvent struct {
	at       time.Time
	director string
	prefixes []string
}

// tlAnnouncer is a routing.Announcer that records into a timeline.
type tlAnnouncer struct {
	name string
	tl   *timeline
	mu   sync.Mutex
	set  []routing.Announcement
}

func (a *tlAnnouncer) record(anns []routing.Announcement) {
	var ps []string
	for _, x := range anns {
		ps = append(ps, x.Prefix.String())
	}
	slices.Sort(ps)
	a.tl.mu.Lock()
	a.tl.events = append(a.tl.events, announceEvent{time.Now(), a.name, ps})
	a.tl.mu.Unlock()
}

func (a *tlAnnouncer) Run(ctx context.Context) error {
	<-ctx.Done()
	a.mu.Lock()
	a.set = nil
	a.mu.Unlock()
	a.record(nil)
	return nil
}

func (a *tlAnnouncer) Set(_ context.Context, anns []routing.Announcement) error {
	a.mu.Lock()
	a.set = slices.Clone(anns)
	a.mu.Unlock()
	a.record(anns)
	return nil
}

func (a *tlAnnouncer) Changed() <-chan struct{} { return nil }

func (a *tlAnnouncer) Status() routing.Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	return routing.Status{Mode: "test", Announced: slices.Clone(a.set)}
}

// withdrawals replays the timeline and returns, for prefix, the times at
// which a director stopped announcing it.
func (tl *timeline) withdrawals(prefix string) []announceEvent {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	evs := slices.Clone(tl.events)
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].at.Before(evs[j].at) })
	on := map[string]bool{}
	var out []announceEvent
	for _, e := range evs {
		now := slices.Contains(e.prefixes, prefix)
		if on[e.director] && !now {
			out = append(out, e)
		}
		on[e.director] = now
	}
	return out
}

// announcing is how many directors announce prefix at the end of the
// timeline.
func (tl *timeline) announcing(prefix string) int {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	last := map[string]bool{}
	for _, e := range tl.events {
		last[e.director] = slices.Contains(e.prefixes, prefix)
	}
	n := 0
	for _, v := range last {
		if v {
			n++
		}
	}
	return n
}

// TestNoCorrelatedWithdrawal is the fail-safe issue's class test: five
// directors, and one change of every kind an operator or a fault makes,
// one after another: services (a backend added), a check's settings, the
// cluster key rotated as README says, max_active lowered on every
// director, a director restarted, a director that cannot save its state.
// None of these removes the VIPs or their backends, so at no moment may
// more than one director stop announcing a VIP: within any window of one
// second, at most one director withdraws it. (max_active falls one
// director per step, each step held for ActiveStepHold, longer than the
// window; a restarted director withdraws itself only.)
func TestNoCorrelatedWithdrawal(t *testing.T) {
	if testing.Short() {
		t.Skip("a minute of five directors")
	}
	b := newBackend(t)
	_, port, _ := strings.Cut(b.addr, ":")
	services := func(timeout string, extra string) string {
		return fmt.Sprintf(`
  - name: web
    vip: 192.0.2.1
    port: %[1]s
    forwarding: nat
    quorum: 1
    backends: [{address: 127.0.0.1, port: %[1]s}%[3]s]
    health: {type: tcp, interval: 1s, timeout: %[2]s}
  - name: dns
    vip: 192.0.2.2
    protocol: udp
    port: 53
    health: {type: none}
    backends: [{address: 10.9.9.9}]
`, port, timeout, extra)
	}
	k1 := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	k2 := base64.StdEncoding.EncodeToString([]byte("fedcba9876543210fedcba9876543210"))
	config := func(name, stateDir string, keys []string, maxActive int) *configs.Config {
		cfg := nodeConfig(t, name, services("500ms", ""), "")
		if stateDir != "" {
			cfg.Node.StateDir = stateDir
		}
		cfg.Cluster.Insecure, cfg.Cluster.Keys, cfg.Cluster.MaxActive = false, keys, maxActive
		return cfg
	}
	tl := &timeline{}
	const n = 5
	names := []string{"d1", "d2", "d3", "d4", "d5"}
	dirs := map[string]string{}
	nodes := map[string]*testNode{}
	start := func(name string, keys []string, maxActive int, seeds ...*testNode) *testNode {
		cfg := config(name, dirs[name], keys, maxActive)
		dirs[name] = cfg.Node.StateDir
		tn := startNodeOpts(t, cfg, &tlAnnouncer{name: name, tl: tl}, ipvs.NewMemory(), func(o *Options) {
			o.ActiveStepHold = 1500 * time.Millisecond
		}, seeds...)
		nodes[name] = tn
		return tn
	}
	first := start("d1", []string{k1}, 8)
	for _, name := range names[1:] {
		start(name, []string{k1}, 8, first)
	}
	vips := []string{"192.0.2.1/32", "192.0.2.2/32"}
	all := func(want int, what string) {
		t.Helper()
		waitFor(t, 30*time.Second, what, func() error {
			for _, v := range vips {
				if got := tl.announcing(v); got != want {
					return fmt.Errorf("%d directors announce %s, want %d", got, v, want)
				}
			}
			return nil
		})
	}
	all(n, "every director announcing")
	settle := func() { time.Sleep(1500 * time.Millisecond) } // let a change play out
	apply := func(on string, svc string) {
		t.Helper()
		tn := nodes[on]
		doc := tn.n.Cluster().Document()
		ss := nodeConfig(t, "x", svc, "").Services
		if _, _, err := tn.n.Apply(context.Background(), doc.Version, doc.Hash, ss); err != nil {
			t.Fatal(err)
		}
	}
	reload := func(name string, keys []string, maxActive int) {
		t.Helper()
		if err := nodes[name].n.Reload(config(name, dirs[name], keys, maxActive)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}

	// 1. Services: a backend added (down: nothing listens on .2).
	apply("d1", services("500ms", fmt.Sprintf(", {address: 127.0.0.2, port: %s}", port)))
	settle()
	// 2. A check's settings.
	apply("d2", services("700ms", fmt.Sprintf(", {address: 127.0.0.2, port: %s}", port)))
	settle()
	all(n, "every director announcing after the service and check changes")
	// 3. The key rotation, as README's Production notes give it.
	for _, keys := range [][]string{{k1, k2}, {k2, k1}, {k2}} {
		for _, name := range names {
			reload(name, keys, 8)
		}
	}
	settle()
	all(n, "every director announcing after the key rotation")
	// 4. A director restarted.
	nodes["d3"].stop()
	start("d3", []string{k2}, 8, nodes["d1"])
	all(n, "every director announcing after d3's restart")
	// 5. A director whose state dir cannot take the next document.
	doc := filepath.Join(dirs["d4"], "cluster-config.json")
	os.Rename(doc, doc+".away")
	os.Mkdir(doc, 0o700)
	apply("d5", services("700ms", ""))
	settle()
	all(n, "every director announcing while d4 cannot save")
	os.Remove(doc)
	// 6. max_active 5 -> 2 on every director (a rolling reload).
	for _, name := range names {
		reload(name, []string{k2}, 2)
	}
	all(2, "two directors announcing after max_active 2")

	for _, v := range vips {
		w := tl.withdrawals(v)
		var lines []string
		for _, e := range w {
			lines = append(lines, fmt.Sprintf("%s %s", e.at.Format("15:04:05.000"), e.director))
		}
		t.Logf("%s withdrawn by: %s", v, strings.Join(lines, ", "))
		for i := range w {
			for j := i + 1; j < len(w) && w[j].at.Sub(w[i].at) < time.Second; j++ {
				if w[j].director != w[i].director {
					t.Errorf("%s: %s and %s withdrew within %s of each other (%s, %s)", v, w[i].director, w[j].director,
						w[j].at.Sub(w[i].at).Round(time.Millisecond), w[i].at.Format("15:04:05.000"), w[j].at.Format("15:04:05.000"))
				}
			}
		}
		// Expected: d3 once (its restart), three for max_active 5 -> 2.
		if len(w) != 4 {
			t.Errorf("%s was withdrawn %d times, want 4 (d3's restart, three steps of max_active): %s", v, len(w), strings.Join(lines, ", "))
		}
	}
}
