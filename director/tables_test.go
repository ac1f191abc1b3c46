package director

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/api"
	"github.com/anycastd/anycastd/cluster"
	"github.com/anycastd/anycastd/ipvs"
)

func TestCompareTables(t *testing.T) {
	peer := func(name string, tables map[string]string, mod ...func(*cluster.Member)) cluster.Member {
		m := cluster.Member{Name: name, State: cluster.StateAlive,
			Meta: cluster.Meta{ConfigVersion: 7, ConfigHash: "abc", Tables: tables}}
		for _, f := range mod {
			f(&m)
		}
		return m
	}
	same := map[string]string{"web": "aaaa", "dns": "dddd"}
	other := map[string]string{"web": "bbbb", "dns": "dddd"}
	for _, tc := range []struct {
		name    string
		own     map[string]string
		members []cluster.Member
		want    TableCheck
	}{
		{"all agree", same,
			[]cluster.Member{peer("d1", same), peer("d2", same), peer("d3", same)},
			TableCheck{Compared: 2}},
		{"the odd one out is outvoted", other,
			[]cluster.Member{peer("d1", other), peer("d2", same), peer("d3", same)},
			TableCheck{Compared: 2, Differ: map[string][]string{"web": {"d2", "d3"}}, Outvoted: []string{"web"}}},
		{"the majority sees the odd one, and is not outvoted", same,
			[]cluster.Member{peer("d1", same), peer("d2", other), peer("d3", same)},
			TableCheck{Compared: 2, Differ: map[string][]string{"web": {"d2"}}}},
		{"two that differ: no majority, nobody outvoted", same,
			[]cluster.Member{peer("d1", same), peer("d2", other)},
			TableCheck{Compared: 1, Differ: map[string][]string{"web": {"d2"}}}},
		{"three values among four: no strict majority", same,
			[]cluster.Member{peer("d1", same), peer("d2", other), peer("d3", map[string]string{"web": "cccc", "dns": "dddd"}), peer("d4", other)},
			TableCheck{Compared: 3, Differ: map[string][]string{"web": {"d2", "d3", "d4"}}}},
		{"only directors on the same config count", other,
			[]cluster.Member{peer("d1", other),
				peer("d2", same, func(m *cluster.Member) { m.Meta.ConfigVersion = 8 }),
				peer("d3", same, func(m *cluster.Member) { m.Meta.ConfigHash = "xyz" })},
			TableCheck{}},
		{"dead, unreadable and silent members do not count", other,
			[]cluster.Member{peer("d1", other),
				peer("d2", same, func(m *cluster.Member) { m.State = cluster.StateDead }),
				peer("d3", same, func(m *cluster.Member) { m.Bad = "garbled" }),
				peer("d4", nil)},
			TableCheck{}},
		{"a service a peer lacks is compared among the rest", other,
			[]cluster.Member{peer("d1", other), peer("d2", map[string]string{"dns": "dddd"}), peer("d3", same)},
			TableCheck{Compared: 2, Differ: map[string][]string{"web": {"d3"}}}},
		{"unknown here: nothing compared", nil,
			[]cluster.Member{peer("d1", nil), peer("d2", same)},
			TableCheck{Compared: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := CompareTables("d1", 7, "abc", tc.own, tc.members)
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestNodesCompareTables runs directors with an mh service. A backend
// removed from the config drains at weight 0 for drain_timeout on d1, d2
// and d4, where mh keeps its slots; d3 starts meanwhile (a director that
// restarted in the middle of a change) and builds its table without it:
// its table is the odd one out. It says so (status, metric), reads its
// table in full to repair it (which cannot mend a difference in what the
// table is built from), and when d1 stops and d3 takes its active slot,
// d3 holds the VIP for at most TableHold before it announces; the others
// see d3 differ.
func TestNodesCompareTables(t *testing.T) {
	const svc = `
  - name: web
    vip: 192.0.2.1
    port: 80
    scheduler: mh
    drain_timeout: 1m
    health: {type: none}
    backends: [{address: 10.9.9.1}, {address: 10.9.9.2}, {address: 10.9.9.3}]
`
	var nodes []*testNode
	for _, name := range []string{"d1", "d2", "d4"} {
		nodes = append(nodes, startNode(t, nodeConfig(t, name, svc, ""), nodes...))
	}
	d1, d2, d4 := nodes[0], nodes[1], nodes[2]
	waitFor(t, 10*time.Second, "d1 and d2 announce, the tables agree everywhere", func() error {
		for _, tn := range nodes {
			want := []string(nil)
			if tn != d4 {
				want = []string{"192.0.2.1/32"}
			}
			if err := expectAnnounced(want...)(tn); err != nil {
				return err
			}
			tv := tn.n.StatusView().Tables
			if tv == nil || tv.Compared != 2 || len(tv.Differ) != 0 || len(tv.Fingerprints) != 1 {
				return fmt.Errorf("%s: tables %+v", tn.n.cfg.Node.Name, tv)
			}
		}
		return nil
	})

	// 10.9.9.3 is removed: it drains at weight 0 on d1, d2 and d4.
	srv := httptest.NewServer(d1.n.Handler())
	defer srv.Close()
	var cur api.ConfigResponse
	getJSON(t, srv.URL+"/v1/config", &cur)
	next := slices.Clone(cur.Services)
	next[0].Backends = next[0].Backends[:2]
	if code, body := postJSON(t, srv.URL+"/v1/config", api.ApplyRequest{BaseVersion: cur.Version, BaseHash: cur.Hash, Services: next, Now: true}); code != http.StatusOK {
		t.Fatalf("apply: %d %s", code, body)
	}
	key := ipvs.ServiceKey{Family: ipvs.IPv4, Protocol: ipvs.TCP, Addr: mustAddr("192.0.2.1"), Port: 80}
	waitFor(t, 10*time.Second, "10.9.9.3 at weight 0 everywhere", all(nodes, func(tn *testNode) error {
		ds, _ := tn.dp.Destinations(context.Background(), key)
		if len(ds) != 3 || ds[2].Weight != 0 {
			return fmt.Errorf("%s: %+v", tn.n.cfg.Node.Name, ds)
		}
		return nil
	}))

	// d3 starts during the drain.
	d3 := startNode(t, nodeConfig(t, "d3", svc, ""), d1, d2, d4)
	nodes = append(nodes, d3)
	waitFor(t, 10*time.Second, "d3 outvoted and repairing; the others see it differ", func() error {
		tv := d3.n.StatusView().Tables
		if tv == nil || !slices.Equal(tv.Outvoted, []string{"web"}) || tv.Repairs == 0 {
			return fmt.Errorf("d3: tables %+v", tv)
		}
		for _, tn := range []*testNode{d1, d2, d4} {
			tv := tn.n.StatusView().Tables
			if tv == nil || len(tv.Outvoted) != 0 || !slices.Equal(tv.Differ["web"], []string{"d3"}) {
				return fmt.Errorf("%s: tables %+v", tn.n.cfg.Node.Name, tv)
			}
		}
		return nil
	})
	m := scrape(t, d3)
	for _, want := range []string{`anycastd_ipvs_table_outvoted{service="web"} 1`, `anycastd_ipvs_table_mismatches{service="web"} 3`} {
		if !strings.Contains(m, want) {
			t.Errorf("d3's metrics lack %s", want)
		}
	}
	if !strings.Contains(scrape(t, d1), `anycastd_ipvs_table_mismatches{service="web"} 1`) {
		t.Error("d1's metrics do not count d3's difference")
	}

	// d1 stops: d3 takes its slot, waits while outvoted, then announces.
	d1.stop()
	waitFor(t, 10*time.Second, "d3 active, its VIP held for its table", func() error {
		st := d3.n.StatusView()
		if st.Role != "active" || len(st.VIPs) != 1 || !slices.Equal(st.VIPs[0].Why, []string{string(WhyTableDiffers)}) {
			return fmt.Errorf("d3 is %s, VIPs %+v", st.Role, st.VIPs)
		}
		return nil
	})
	if err := expectAnnounced()(d3); err != nil {
		t.Fatal(err)
	}
	waitFor(t, TableHold+5*time.Second, "d3 announces after the hold", func() error { return expectAnnounced("192.0.2.1/32")(d3) })
	if err := expectAnnounced("192.0.2.1/32")(d2); err != nil {
		t.Errorf("d2 stopped announcing meanwhile: %v", err)
	}
}

func scrape(t *testing.T, tn *testNode) string {
	t.Helper()
	srv := httptest.NewServer(tn.n.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
