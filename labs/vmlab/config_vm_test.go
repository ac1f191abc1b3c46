package vmlab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/anycastd/anycastd/api"
	"github.com/anycastd/anycastd/ipvs"
	"github.com/anycastd/anycastd/labs/labtest"
)

// api is a JSON client of a daemon's API socket.
func (d *daemon) api(method, path string, body, out any) error {
	c := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", filepath.Join(d.dir, "api.sock"))
		}}}
	var rd bytes.Buffer
	if body != nil {
		if err := json.NewEncoder(&rd).Encode(body); err != nil {
			return err
		}
	}
	req, err := http.NewRequest(method, "http://anycastd"+path, &rd)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e api.ErrorResponse
		json.NewDecoder(resp.Body).Decode(&e)
		return fmt.Errorf("%s %s: %s: %+v", method, path, resp.Status, e)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

const configDirectors = 8

// TestVMMeasureConfigChange times a config change from the API call on one
// director to the change in every director's kernel IPVS table, over eight
// anycastd daemons in the VM, as many times as ANYCASTD_CONFIG_SAMPLES
// says (default 100: a p99 needs that many). Each sample flips one
// backend's weight through a different director in turn; "applied" is the
// weight read back from each kernel, not the version a status reports.
func TestVMMeasureConfigChange(t *testing.T) {
	labtest.RequireVM(t)
	samples := 100
	if v, err := strconv.Atoi(os.Getenv("ANYCASTD_CONFIG_SAMPLES")); err == nil && v > 0 {
		samples = v
	}
	sw := labtest.NewNetns(t, "csw")
	sw.Run("ip", "link", "add", "br0", "type", "bridge")
	sw.Run("ip", "link", "set", "br0", "up")
	var ds []*daemon
	kernels := map[string]*ipvs.Kernel{}
	for i := 1; i <= configDirectors; i++ {
		name := fmt.Sprintf("d%d", i)
		n := labtest.NewNetns(t, "c"+name)
		sw.Run("ip", "link", "add", "p-"+name, "type", "veth", "peer", "name", "eth0", "netns", n.Name)
		sw.Run("ip", "link", "set", "p-"+name, "master", "br0", "up")
		n.Run("ip", "addr", "add", fmt.Sprintf("10.2.0.%d/24", i), "dev", "eth0")
		n.Run("ip", "link", "set", "eth0", "up")
		k, err := ipvs.OpenKernel("/run/netns/" + n.Name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { k.Close() })
		kernels[name] = k
		dir := t.TempDir()
		doc := fmt.Sprintf(`node: {name: %[1]s, addresses: [10.2.0.%[2]d], state_dir: %[3]s/state}
cluster: {bind: 10.2.0.%[2]d, port: 7946, seeds: [10.2.0.1], insecure: true}
routing: {mode: kernel, kernel: {table: 100}}
api: {socket: %[3]s/api.sock}
services:
  - name: web
    vip: 198.51.100.20
    port: 80
    scheduler: mh
    quorum: 1
    backends: [{address: 10.2.0.11}, {address: 10.2.0.12}, {address: 10.2.0.13}]
    health: {type: none}
`, name, i, dir)
		os.WriteFile(filepath.Join(dir, "anycastd.yaml"), []byte(doc), 0o600)
		ds = append(ds, startDaemonIn(t, n, name, dir))
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, d := range ds {
				t.Logf("%s log:\n%s", d.name, d.log)
			}
		}
	})
	first := netip.MustParseAddr("10.2.0.11")
	weights := func() (map[string]int, error) {
		out := map[string]int{}
		for name, k := range kernels {
			tb, err := k.Table(context.Background())
			if err != nil {
				return nil, err
			}
			out[name] = -1
			for _, s := range tb.Services {
				for _, d := range s.Destinations {
					if d.Addr == first {
						out[name] = d.Weight
					}
				}
			}
		}
		return out, nil
	}
	labtest.Eventually(t, 90*time.Second, "the service in all eight kernels", func() error {
		w, err := weights()
		if err != nil {
			return err
		}
		for name, v := range w {
			if v != 1 {
				return fmt.Errorf("%s: weight %d", name, v)
			}
		}
		return nil
	})

	key := ipvs.ServiceKey{Family: ipvs.IPv4, Protocol: ipvs.TCP, Addr: netip.MustParseAddr("198.51.100.20"), Port: 80}
	var took []time.Duration
	for k := range samples {
		d := ds[k%configDirectors]
		var cur api.ConfigResponse
		if err := d.api("GET", "/v1/config", nil, &cur); err != nil {
			t.Fatal(err)
		}
		want := 3 - cur.Services[0].Backends[0].Weight // 1 <-> 2
		cur.Services[0].Backends[0].Weight = want
		// At once (--now): what is measured is how fast a change reaches
		// every kernel, not the stages of a rollout.
		req := api.ApplyRequest{BaseVersion: cur.Version, BaseHash: cur.Hash, Services: cur.Services, Now: true}
		// The kernels are read while the call is in flight: its answer
		// waits for every member's confirmation by gossip, which comes
		// after the kernels have the change.
		start := time.Now()
		posted := make(chan error, 1)
		go func() {
			var resp api.ConfigResponse
			posted <- d.api("POST", "/v1/config", req, &resp)
		}()
		// One poller per kernel, each reading its one service (a single
		// netlink request) every 2 ms: a round over all eight tables
		// would add its own length to every sample.
		var wg sync.WaitGroup
		arrived := make([]time.Duration, len(ds))
		for i, dd := range ds {
			wg.Go(func() {
				deadline := start.Add(30 * time.Second)
				for time.Now().Before(deadline) {
					if w, err := weightIn(kernels[dd.name], key, first); err == nil && w == want {
						arrived[i] = time.Since(start)
						return
					}
					time.Sleep(2 * time.Millisecond)
				}
				arrived[i] = -1
			})
		}
		wg.Wait()
		if slices.Contains(arrived, -1) {
			w, _ := weights()
			t.Fatalf("sample %d: weight %d not in every kernel within 30s: %v", k, want, w)
		}
		took = append(took, slices.Max(arrived))
		if err := <-posted; err != nil {
			t.Fatalf("sample %d on %s: %v", k, d.name, err)
		}
	}
	slices.Sort(took)
	// Nearest rank: the p99 of 100 samples is the 99th smallest.
	q := func(p float64) time.Duration { return took[max(0, int(math.Ceil(p*float64(len(took))))-1)] }
	ms := func(d time.Duration) string { return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64) }
	t.Logf("measure: config change via the API of one of 8 daemons -> in all 8 kernels' IPVS tables (in the VM), %d samples: p50 %s ms, p90 %s ms, p99 %s ms, max %s ms",
		len(took), ms(q(0.50)), ms(q(0.90)), ms(q(0.99)), ms(took[len(took)-1]))
}

// weightIn is addr's weight in the kernel's service key (-1: not there).
func weightIn(k *ipvs.Kernel, key ipvs.ServiceKey, addr netip.Addr) (int, error) {
	ds, err := k.Destinations(context.Background(), key)
	if err != nil {
		return -1, err
	}
	for _, d := range ds {
		if d.Addr == addr {
			return d.Weight, nil
		}
	}
	return -1, nil
}
