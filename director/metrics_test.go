package director

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/routing"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// scrape returns the value of the sample that matches name{labels} exactly
// (labels in the exposition's order), or an error.
func sample(text, series string) (float64, error) {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` ([0-9.e+-]+)$`)
	m := re.FindStringSubmatch(text)
	if m == nil {
		return 0, fmt.Errorf("no sample %s", series)
	}
	return strconv.ParseFloat(m[1], 64)
}

func TestMetricsScrape(t *testing.T) {
	b1 := newBackend(t)
	port := strings.Split(b1.addr, ":")[1]
	tn := startNode(t, nodeConfig(t, "d1", oneBackendService(b1, "{type: tcp}"), ""))
	waitFor(t, 10*time.Second, "announce", func() error { return expectAnnounced("192.0.2.1/32")(tn) })
	srv := httptest.NewServer(tn.n.Handler())
	defer srv.Close()
	var text string
	waitFor(t, 5*time.Second, "metrics", func() error {
		resp, err := http.Get(srv.URL + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		text = string(b)
		if _, err := sample(text, `anycastd_backend_up{backend="127.0.0.1:`+port+`",service="web"}`); err != nil {
			return err
		}
		return nil
	})
	want := map[string]float64{
		`anycastd_members{state="alive"}`:                                     1,
		`anycastd_role{role="active"}`:                                        1,
		`anycastd_role{role="standby"}`:                                       0,
		`anycastd_self_healthy`:                                               1,
		`anycastd_self_check_ok{check="ipvs"}`:                                1,
		`anycastd_drained`:                                                    0,
		`anycastd_eligible`:                                                   1,
		`anycastd_config_version`:                                             1,
		`anycastd_vip_announced{vip="192.0.2.1"}`:                             1,
		`anycastd_backend_up{backend="127.0.0.1:` + port + `",service="web"}`: 1,
		`anycastd_ipvs_backend_weight{backend="127.0.0.1:` + port + `",service="web"}`:             1,
		`anycastd_ipvs_backend_active_connections{backend="127.0.0.1:` + port + `",service="web"}`: 0,
		`anycastd_ipvs_connections_total{service="web"}`:                                           0,
	}
	for series, v := range want {
		got, err := sample(text, series)
		if err != nil || got != v {
			t.Errorf("%s = %v (%v), want %v", series, got, err, v)
		}
	}
	for _, series := range []string{`anycastd_ipvs_operations_total{op="add-service"}`, `anycastd_reconcile_duration_seconds_count`,
		`anycastd_loop_runs_total`, `anycastd_backend_probes_total{backend="127.0.0.1:` + port + `",service="web"}`} {
		if got, err := sample(text, series); err != nil || got < 1 {
			t.Errorf("%s = %v (%v), want at least 1", series, got, err)
		}
	}
	// The backend goes down: its metric follows.
	b1.stop()
	waitFor(t, 10*time.Second, "backend down in the metrics", func() error {
		resp, err := http.Get(srv.URL + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if v, err := sample(string(b), `anycastd_backend_up{backend="127.0.0.1:`+port+`",service="web"}`); err != nil || v != 0 {
			return fmt.Errorf("backend_up %v %v", v, err)
		}
		return nil
	})
	// Prometheus' own linter: names, units, help texts.
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// peerCollector exposes peerMetrics for one status.
type peerCollector struct{ st routing.Status }

func (c peerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPeerUp, descFlaps, descVRRP, descVRRPFl, descVRRPRej, descBFD, descBFDFl} {
		ch <- d
	}
}
func (c peerCollector) Collect(ch chan<- prometheus.Metric) { peerMetrics(ch, c.st) }

func TestPeerMetrics(t *testing.T) {
	cases := []struct {
		name string
		st   routing.Status
		want string
	}{
		{"bgp", routing.Status{Mode: configs.ModeBGP, Peers: []routing.Peer{
			{Address: mustAddr("10.0.1.0"), ASN: 65000, State: "established", BFD: "up", Flaps: 2, BFDFlaps: 1},
			{Address: mustAddr("10.0.2.0"), ASN: 65000, State: "active", BFD: "down", Flaps: 5},
			{Address: mustAddr("10.0.3.0"), ASN: 65000, State: "connect"},
		}}, `
# HELP anycastd_bfd_flaps_total Times this director took the BGP session with the peer down because BFD found the path failed (its own detection, or the peer's BFD reporting a failure; never an AdminDown).
# TYPE anycastd_bfd_flaps_total counter
anycastd_bfd_flaps_total{peer="10.0.1.0"} 1
anycastd_bfd_flaps_total{peer="10.0.2.0"} 0
# HELP anycastd_bfd_up 1 if the BFD session with the peer is up.
# TYPE anycastd_bfd_up gauge
anycastd_bfd_up{peer="10.0.1.0"} 1
anycastd_bfd_up{peer="10.0.2.0"} 0
# HELP anycastd_routing_peer_flaps_total Times the session left established.
# TYPE anycastd_routing_peer_flaps_total counter
anycastd_routing_peer_flaps_total{peer="10.0.1.0"} 2
anycastd_routing_peer_flaps_total{peer="10.0.2.0"} 5
anycastd_routing_peer_flaps_total{peer="10.0.3.0"} 0
# HELP anycastd_routing_peer_up 1 if the routing session is established (BGP) or this router is master (VRRP).
# TYPE anycastd_routing_peer_up gauge
anycastd_routing_peer_up{peer="10.0.1.0",state="established"} 1
anycastd_routing_peer_up{peer="10.0.2.0",state="active"} 0
anycastd_routing_peer_up{peer="10.0.3.0",state="connect"} 0
`},
		{"vrrp", routing.Status{Mode: configs.ModeVRRP, Peers: []routing.Peer{
			{Address: mustAddr("10.2.0.1"), ASN: 51, State: "master", Flaps: 1, Rejected: map[string]uint64{"version": 40, "auth": 2}},
			{Address: mustAddr("10.2.0.2"), ASN: 52, State: "backup", Flaps: 0},
		}}, `
# HELP anycastd_routing_peer_up 1 if the routing session is established (BGP) or this router is master (VRRP).
# TYPE anycastd_routing_peer_up gauge
anycastd_routing_peer_up{peer="vrid 51",state="master"} 1
anycastd_routing_peer_up{peer="vrid 52",state="backup"} 0
# HELP anycastd_vrrp_master_losses_total Times the VRRP instance left master.
# TYPE anycastd_vrrp_master_losses_total counter
anycastd_vrrp_master_losses_total{vrid="51"} 1
anycastd_vrrp_master_losses_total{vrid="52"} 0
# HELP anycastd_vrrp_rejected_adverts_total Advertisements for the VRRP instance dropped as misconfigured, by reason (version, auth, interval, addresses, vrid, malformed): a peer that is not heard, so both may be master.
# TYPE anycastd_vrrp_rejected_adverts_total counter
anycastd_vrrp_rejected_adverts_total{reason="auth",vrid="51"} 2
anycastd_vrrp_rejected_adverts_total{reason="version",vrid="51"} 40
# HELP anycastd_vrrp_state 1 for the VRRP instance's current state (initialize, backup, master).
# TYPE anycastd_vrrp_state gauge
anycastd_vrrp_state{state="backup",vrid="51"} 0
anycastd_vrrp_state{state="backup",vrid="52"} 1
anycastd_vrrp_state{state="initialize",vrid="51"} 0
anycastd_vrrp_state{state="initialize",vrid="52"} 0
anycastd_vrrp_state{state="master",vrid="51"} 1
anycastd_vrrp_state{state="master",vrid="52"} 0
`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := testutil.CollectAndCompare(peerCollector{tc.st}, strings.NewReader(tc.want)); err != nil {
				t.Error(err)
			}
			problems, err := testutil.CollectAndLint(peerCollector{tc.st})
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range problems {
				t.Errorf("promlint: %s: %s", p.Metric, p.Text)
			}
		})
	}
}
