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
	svc := fmt.Sprintf(`
  - name: web
    vip: 192.0.2.1
    port: %s
    quorum: 1
    backends: [{address: 127.0.0.1, port: %s}]
    health: {type: tcp}
`, port, port)
	tn := startNode(t, nodeConfig(t, "d1", svc, ""))
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
