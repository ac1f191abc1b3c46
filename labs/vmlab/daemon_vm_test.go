package vmlab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anycastd/anycastd/api"
	"github.com/anycastd/anycastd/ipvs"
	"github.com/anycastd/anycastd/labs/labtest"
)

// daemon is anycastd running in a director's namespace, with the kernel's
// IPVS.
type daemon struct {
	name, dir string
	bin       string
	cmd       *exec.Cmd
	log       *bytes.Buffer
}

func (l *flowLab) startDaemon(i int, dir string) *daemon {
	l.t.Helper()
	name := fmt.Sprintf("d%d", i)
	return startDaemonIn(l.t, l.ns[name], name, dir)
}

// startDaemonIn starts anycastd with dir's anycastd.yaml in namespace ns,
// and waits for its API.
func startDaemonIn(t *testing.T, ns *labtest.Netns, name, dir string) *daemon {
	t.Helper()
	bin := labtest.Binaries(t)
	d := &daemon{name: name, dir: dir, bin: bin, log: &bytes.Buffer{}}
	d.cmd = exec.Command("ip", "netns", "exec", ns.Name, filepath.Join(bin, "anycastd"), "-c", filepath.Join(dir, "anycastd.yaml"))
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			d.cmd.Process.Kill()
			d.cmd.Wait()
		}
	})
	labtest.Eventually(t, 30*time.Second, name+"'s API", func() error {
		_, err := d.anyctl("status")
		if _, ok := err.(*exec.ExitError); ok {
			return nil // answers (exit 1 is "unhealthy", still up)
		}
		return err
	})
	return d
}

func (d *daemon) anyctl(args ...string) (string, error) {
	out, err := exec.Command(filepath.Join(d.bin, "anyctl"),
		append(args, "--socket", filepath.Join(d.dir, "api.sock"))...).CombinedOutput()
	return string(out), err
}

// metrics scrapes the daemon's /metrics on its API socket.
func (d *daemon) metrics(t *testing.T) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", filepath.Join(d.dir, "api.sock"))
		}}}
	resp, err := c.Get("http://anycastd/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("metrics: %s %v", resp.Status, err)
	}
	return string(b)
}

// metricValue is the value of the sample series (name{labels}) in a
// Prometheus text exposition.
func metricValue(text, series string) (float64, bool) {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return f, err == nil
		}
	}
	return 0, false
}

func (d *daemon) stop(t *testing.T) {
	t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("%s exited with %v\n%s", d.name, err, d.log)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not stop\n%s", d.name, d.log)
	}
}

const daemonServices = `services:
  - name: web
    vip: 198.51.100.10
    port: 80
    scheduler: mh
    flags: [mh-port]
    quorum: 1
    drain_timeout: 5s
    backends: [{address: 10.1.0.11}, {address: 10.1.0.12}, {address: 10.1.0.13}%s]
    health: {type: tcp, interval: 500ms, timeout: 400ms, rise: 1, fall: 2}
`

func daemonConfig(t *testing.T, i int) string {
	dir := t.TempDir()
	doc := fmt.Sprintf(`node: {name: d%[1]d, addresses: [10.1.0.%[1]d], state_dir: %[2]s/state}
cluster: {bind: 10.1.0.%[1]d, port: 7946, seeds: [10.1.0.1], insecure: true}
routing: {mode: kernel, kernel: {table: 100}}
api: {socket: %[2]s/api.sock}
`, i, dir) + fmt.Sprintf(daemonServices, "")
	os.WriteFile(filepath.Join(dir, "anycastd.yaml"), []byte(doc), 0o600)
	return dir
}

func (l *flowLab) table(d string) ipvs.Table {
	l.t.Helper()
	tb, err := l.dr.kernels[d].Table(context.Background())
	if err != nil {
		l.t.Fatal(err)
	}
	return tb
}

// TestVMDaemons runs anycastd itself on three directors with the kernel's
// IPVS: a config applied on one director reaches the others' kernels and a
// backend added there gets traffic through every director; a daemon
// restarted under traffic leaves the kernel's table (and its connections)
// alone, and no client request fails.
func TestVMDaemons(t *testing.T) {
	l := newFlowLab(t)
	rs4 := labtest.NewNetns(t, "frs4")
	l.ns["rs4"] = rs4
	sw := l.ns["sw"]
	sw.Run("ip", "link", "add", "p-rs4", "type", "veth", "peer", "name", "eth0", "netns", rs4.Name)
	sw.Run("ip", "link", "set", "p-rs4", "master", "br0", "up")
	rs4.Run("ip", "addr", "add", "10.1.0.14/24", "dev", "eth0")
	rs4.Run("ip", "link", "set", "eth0", "up")
	rs4.Run("ip", "route", "add", "default", "via", "10.1.0.254")
	rs4.Run(filepath.Join(labtest.Binaries(t), "anyctl"), "realserver", "--state-dir", t.TempDir(), "up", "--vip", vip)
	l.dr.start("rs4", "serve", "rs4", "0.0.0.0:80")

	var ds []*daemon
	for i := 1; i <= 3; i++ {
		ds = append(ds, l.startDaemon(i, daemonConfig(t, i)))
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, d := range ds {
				t.Logf("%s log:\n%s", d.name, d.log)
			}
		}
	})
	labtest.Eventually(t, 60*time.Second, "the service in all three kernels", func() error {
		for i := 1; i <= 3; i++ {
			tb := l.table(fmt.Sprintf("d%d", i))
			if len(tb.Services) != 1 || len(tb.Services[0].Destinations) != 3 {
				return fmt.Errorf("d%d: %+v", i, tb.Services)
			}
		}
		return nil
	})
	out, _ := ds[0].anyctl("members")
	t.Logf("anyctl members on d1 (inside the VM):\n%s", out)
	l.route(1, 2, 3)

	// Scenario 7: restart d1's daemon under traffic. Through d1 alone,
	// so that every request needs d1's kernel table while the daemon is
	// away.
	l.route(1)
	hold := l.dr.hold(t, "cl", vip+":80", "30")
	held := strings.Split(hold.Ready[0], ",")
	before := established(t, l.ns["d1"], "10.0.0.1", held)
	load := l.dr.helperCmd("cl", "connect", vip+":80", "400", "10.0.0.1")
	var loadOut bytes.Buffer
	load.Stdout = &loadOut
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	ds[0].stop(t)
	time.Sleep(300 * time.Millisecond) // requests keep coming with no daemon
	ds[0] = l.startDaemon(1, ds[0].dir)
	load.Wait()
	failed := strings.Count(loadOut.String(), "ERROR")
	served := strings.Count(loadOut.String(), "\n") - failed
	line := hold.Check()
	after := established(t, l.ns["d1"], "10.0.0.1", held)
	t.Logf("measure: daemon restart under traffic: %d of %d new connections served, %d failed; held connections after: %s; their IPVS connection entries on d1: %d before, %d after (a flush would drop them)",
		served, served+failed, failed, strings.TrimSpace(line), before, after)
	if failed > 0 || strings.TrimSpace(line) != "ok 30/30" || before != 30 || after != 30 {
		t.Errorf("the restart disturbed traffic or the table")
	}
	if !strings.Contains(ds[0].log.String(), "cluster config loaded from the state dir") {
		t.Errorf("d1 did not start from its persisted config:\n%s", ds[0].log)
	}

	// The per-service metrics are the kernel's IPVS counters: read
	// between two reads of the kernel's table, they lie between them.
	webStats := func() ipvs.Stats {
		for _, s := range l.table("d1").Services {
			if s.Addr.String() == vip && s.Port == 80 {
				return s.Stats
			}
		}
		t.Fatalf("no service %s:80 in d1's kernel table", vip)
		return ipvs.Stats{}
	}
	kBefore := webStats()
	metrics := ds[0].metrics(t)
	kAfter := webStats()
	for _, m := range []struct {
		series        string
		before, after uint64
	}{
		{`anycastd_ipvs_connections_total{service="web"}`, kBefore.Conns, kAfter.Conns},
		{`anycastd_ipvs_in_packets_total{service="web"}`, kBefore.InPkts, kAfter.InPkts},
		{`anycastd_ipvs_in_bytes_total{service="web"}`, kBefore.InBytes, kAfter.InBytes},
	} {
		v, ok := metricValue(metrics, m.series)
		if !ok || m.before == 0 || uint64(v) < m.before || uint64(v) > m.after {
			t.Errorf("%s = %v (found %v), kernel %d..%d", m.series, v, ok, m.before, m.after)
		}
	}

	// Scenario 5: anyctl apply on d2 adds rs4, rolled out in stages (no
	// standby here: one active director, then the rest); every kernel
	// gets it, and traffic through each director reaches it.
	file := filepath.Join(t.TempDir(), "services.yaml")
	os.WriteFile(file, []byte(fmt.Sprintf(daemonServices, ", {address: 10.1.0.14}")), 0o644)
	start := time.Now()
	out, err := ds[1].anyctl("apply", "-f", file, "--yes")
	if err != nil || !strings.Contains(out, "rolled out: every director runs") {
		t.Fatalf("apply on d2: %v\n%s", err, out)
	}
	t.Logf("anyctl apply on d2:\n%s", out)
	labtest.Eventually(t, 30*time.Second, "rs4 in all three kernels", func() error {
		for i := 1; i <= 3; i++ {
			tb := l.table(fmt.Sprintf("d%d", i))
			if len(tb.Services) != 1 || len(tb.Services[0].Destinations) != 4 {
				return fmt.Errorf("d%d has %d destinations", i, len(tb.Services[0].Destinations))
			}
		}
		return nil
	})
	t.Logf("measure: anyctl apply on d2, rolled out in stages -> the new backend in all three kernels (in the VM): %v", time.Since(start).Round(time.Millisecond))
	rs4addr := netip.MustParseAddr("10.1.0.14")
	for i := 1; i <= 3; i++ {
		l.route(i)
		out := l.dr.helper("cl", "connect", vip+":80", "60", "10.0.0.1")
		hits := strings.Count(out, " rs4\n")
		errs := strings.Count(out, "ERROR")
		t.Logf("through d%d: %d of 60 connections reached rs4 (%s), %d failed", i, hits, rs4addr, errs)
		if hits == 0 || errs > 0 {
			t.Errorf("through d%d the new backend got %d connections, %d failed", i, hits, errs)
		}
	}
	l.route(1, 2, 3)

	// Scenario 5b: a change whose new health check fails on every
	// backend (port 81: nobody listens) is stopped by the first stage
	// and rolled back by the cluster itself; no director withdraws the
	// VIP meanwhile, and every one ends on the services it had.
	var cur api.ConfigResponse
	if err := ds[0].api("GET", "/v1/config", nil, &cur); err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(fmt.Sprintf(daemonServices, ", {address: 10.1.0.14}"), "health: {type: tcp,", "health: {type: tcp, port: 81,", 1)
	os.WriteFile(file, []byte(bad), 0o644)
	stop, withdrawn := make(chan struct{}), make(chan []string, 1)
	go func() {
		var seen []string
		for {
			select {
			case <-stop:
				withdrawn <- seen
				return
			case <-time.After(100 * time.Millisecond):
			}
			for _, d := range ds {
				var st api.StatusResponse
				if d.api("GET", "/v1/status", nil, &st) != nil {
					continue
				}
				for _, v := range st.VIPs {
					if !v.Announced {
						seen = append(seen, fmt.Sprintf("%s: %s %s", d.name, v.VIP, v.Reason))
					}
				}
			}
		}
	}()
	start = time.Now()
	out, err = ds[2].anyctl("apply", "-f", file, "--yes")
	close(stop)
	t.Logf("anyctl apply of a change whose check fails everywhere, on d3 (%v):\n%s", time.Since(start).Round(time.Millisecond), out)
	if err == nil || !strings.Contains(out, "ROLLED BACK: on ") || !strings.Contains(out, "is down (it was up)") {
		t.Errorf("the bad change was not rolled back: %v", err)
	}
	if w := <-withdrawn; len(w) > 0 {
		t.Errorf("VIPs withdrawn during the bad rollout: %v", w)
	}
	rolledBack := time.Now()
	labtest.Eventually(t, 10*time.Second, "every director back on the services it had", func() error {
		for _, d := range ds {
			var st api.StatusResponse
			if err := d.api("GET", "/v1/status", nil, &st); err != nil {
				return err
			}
			if st.Config.Hash != cur.Hash {
				return fmt.Errorf("%s applies %s, want %s", d.name, st.Config.Hash, cur.Hash)
			}
		}
		return nil
	})
	t.Logf("measure: a staged change whose check fails on every backend -> rolled back (anyctl apply returns): %v; then every director on the previous services within %v (the stage hold: 1.4s)",
		rolledBack.Sub(start).Round(time.Millisecond), time.Since(rolledBack).Round(time.Millisecond))

	for _, d := range ds {
		d.stop(t)
	}
	// Stopped daemons leave IPVS in place.
	if tb := l.table("d2"); len(tb.Services) != 1 {
		t.Errorf("d2's table after its daemon stopped: %+v", tb.Services)
	}
}
