package clusterlab

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/api"
	"github.com/anycastd/anycastd/labs/labtest"
)

// TestLabRSS measures one daemon's memory with 1,000 services and 10,000
// destinations, every destination health-checked over TCP every 10s. The
// backends are loopback addresses (127.1.x.y) where nothing listens: each
// probe is answered by a reset and never leaves the machine.
func TestLabRSS(t *testing.T) {
	labtest.Require(t)
	bin := labtest.Binaries(t)
	var sb strings.Builder
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(&sb, "  - name: s%d\n    vip: 10.200.%d.%d\n    port: 80\n    scheduler: mh\n    quorum: 0\n    health: {type: tcp, interval: 10s, timeout: 1s}\n    backends:\n", i, i/250, i%250+1)
		for j := 0; j < 10; j++ {
			fmt.Fprintf(&sb, "      - {address: 127.1.%d.%d}\n", (i*10+j)/250, (i*10+j)%250+1)
		}
	}
	dir := t.TempDir()
	if _, err := WriteConfig(dir, Spec{Name: "big", Addr: "127.0.0.41", Port: 7946, MaxActive: 8, Priority: 100,
		Services: sb.String(), Extra: ""}); err != nil {
		t.Fatal(err)
	}
	d := Start(t, bin, dir, "big", "127.0.0.41", "")
	labtest.Eventually(t, 60*time.Second, "1,000 services applied", func() error {
		var st api.StatusResponse
		if err := d.Get("/v1/status", &st); err != nil {
			return err
		}
		if st.Config.Services != 1000 || len(st.VIPs) != 1000 {
			return fmt.Errorf("%d services, %d VIPs", st.Config.Services, len(st.VIPs))
		}
		return nil
	})
	// Let every probe run at least twice (interval 10s, spread).
	time.Sleep(25 * time.Second)
	var rss, anon, file []float64
	for i := 0; i < 5; i++ {
		st := procStatus(t, d.cmd.Process.Pid)
		rss, anon, file = append(rss, st["VmRSS"]), append(anon, st["RssAnon"]), append(file, st["RssFile"])
		time.Sleep(time.Second)
	}
	var sv api.ServicesResponse
	if err := d.Get("/v1/services", &sv); err != nil {
		t.Fatal(err)
	}
	dests, checked := 0, 0
	for _, s := range sv.Services {
		for _, b := range s.Backends {
			dests++
			if b.Checks > 0 {
				checked++
			}
		}
	}
	if dests != 10000 || checked < 9000 {
		t.Errorf("%d destinations, %d probed", dests, checked)
	}
	slices.Sort(rss)
	slices.Sort(anon)
	slices.Sort(file)
	t.Logf("measure: one daemon, 1,000 services / 10,000 destinations (TCP-checked every 10s): RSS median %.1f MiB, min %.1f, max %.1f (%d samples)",
		rss[len(rss)/2], rss[0], rss[len(rss)-1], len(rss))
	// What the RSS is made of: anonymous memory (Go's heap, its GC
	// headroom, stacks) and the mapped binary's pages in use.
	t.Logf("measure: one daemon, 1,000 services / 10,000 destinations: anonymous RSS median %.1f MiB, file-backed RSS median %.1f MiB",
		anon[len(anon)/2], file[len(file)/2])
}

// procStatus reads the memory lines of /proc/PID/status in MiB.
func procStatus(t *testing.T, pid int) map[string]float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]float64{}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[2] == "kB" {
			kb, _ := strconv.Atoi(f[1])
			m[strings.TrimSuffix(f[0], ":")] = float64(kb) / 1024
		}
	}
	for _, k := range []string{"VmRSS", "RssAnon", "RssFile"} {
		if _, ok := m[k]; !ok {
			t.Fatalf("no %s in /proc/%d/status", k, pid)
		}
	}
	return m
}
