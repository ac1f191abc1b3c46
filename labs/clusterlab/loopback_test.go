package clusterlab

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/api"
	"github.com/anycastd/anycastd/labs/labtest"
)

const baseServices = `  - name: dns
    vip: 192.0.2.53
    protocol: udp
    port: 53
    health: {type: none}
    backends: [{address: 10.9.9.1}, {address: 10.9.9.2}]
`

func newKey(t *testing.T) string {
	k := make([]byte, 32)
	rand.Read(k)
	return base64.StdEncoding.EncodeToString(k)
}

// cluster8 starts 8 daemons on 127.0.0.11..18 (port 7946 each), max
// active 6, priority by name.
func cluster8(t *testing.T, key string) []*Daemon {
	t.Helper()
	if testing.Short() {
		t.Skip("multi-process test")
	}
	bin := labtest.Binaries(t)
	var ds []*Daemon
	for i := 1; i <= 8; i++ {
		dir := t.TempDir()
		addr := fmt.Sprintf("127.0.0.%d", 10+i)
		var seeds []string
		if i > 1 {
			seeds = []string{"127.0.0.11:7946"}
		}
		if _, err := WriteConfig(dir, Spec{Name: fmt.Sprintf("d%d", i), Addr: addr, Port: 7946, Seeds: seeds, Key: key,
			MaxActive: 6, Priority: 100, Services: baseServices}); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, Start(t, bin, dir, fmt.Sprintf("d%d", i), addr, ""))
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, d := range ds {
				t.Logf("--- log of %s (last 40 lines)\n%s", d.Name, tail(d.Log(), 40))
			}
		}
	})
	return ds
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// rolesOf is a daemon's view: name -> role, for members it sees alive.
func rolesOf(d *Daemon) (map[string]string, error) {
	var mr api.MembersResponse
	if err := d.Get("/v1/members", &mr); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, m := range mr.Members {
		if m.State == "alive" {
			out[m.Name] = m.Role
		}
	}
	return out, nil
}

func countRoles(r map[string]string) (active, standby int) {
	for _, role := range r {
		switch role {
		case "active":
			active++
		case "standby":
			standby++
		}
	}
	return
}

func TestEightDaemonsOnLoopback(t *testing.T) {
	ds := cluster8(t, newKey(t))

	// 1. All eight converge: 6 active (d1..d6), 2 standby, in every view.
	labtest.Eventually(t, 30*time.Second, "8 members, 6 active + 2 standby everywhere", func() error {
		for _, d := range ds {
			r, err := rolesOf(d)
			if err != nil {
				return err
			}
			if a, s := countRoles(r); len(r) != 8 || a != 6 || s != 2 || r["d7"] != "standby" || r["d8"] != "standby" {
				return fmt.Errorf("%s sees %v", d.Name, r)
			}
		}
		return nil
	})
	out, err := ds[0].Anyctl("members")
	t.Logf("anyctl members on d1:\n%s", out)
	if err != nil || strings.Count(out, " active ") != 6 || strings.Count(out, " standby ") != 2 {
		t.Errorf("anyctl members: %v", err)
	}

	// 2. A config applied on d3 reaches every daemon; measured.
	var applied []time.Duration
	for run := 0; run < labtest.MeasureRuns(); run++ {
		file := filepath.Join(t.TempDir(), "services.yaml")
		svc := baseServices + fmt.Sprintf(`  - name: extra
    vip: 192.0.2.80
    port: 80
    health: {type: none}
    backends: [{address: 10.9.8.%d}]
`, run+1)
		os.WriteFile(file, []byte("services:\n"+svc), 0o644)
		start := time.Now()
		// At once: how fast a change reaches every daemon (a staged
		// rollout's stages are TestNodesStagedRollout's).
		out, err := ds[2].Anyctl("apply", "-f", file, "--yes", "--now")
		if err != nil {
			t.Fatalf("apply: %v\n%s", err, out)
		}
		var want api.ConfigResponse
		ds[2].Get("/v1/config", &want)
		labtest.Eventually(t, 10*time.Second, "config on all 8", func() error {
			for _, d := range ds {
				var st api.StatusResponse
				if err := d.Get("/v1/status", &st); err != nil {
					return err
				}
				if st.Config.Version != want.Version || st.Config.Hash != want.Hash {
					return fmt.Errorf("%s applied v%d, want v%d", d.Name, st.Config.Version, want.Version)
				}
			}
			return nil
		})
		applied = append(applied, time.Since(start))
	}
	labtest.Report(t, "cluster: anyctl apply on one -> applied on all 8 daemons", applied)
	// anyctl members exits 0 once every member is healthy and shows the
	// same config (the metadata follows the config within a gossip round).
	labtest.Eventually(t, 10*time.Second, "anyctl members: one config, all healthy", func() error {
		out, err := ds[0].Anyctl("members")
		if err != nil {
			return fmt.Errorf("%v\n%s", err, out)
		}
		return nil
	})

	// 3. kill -9 an active member: it leaves every view and d7, the
	// first standby, becomes active everywhere.
	start := time.Now()
	ds[1].Kill()
	labtest.Eventually(t, 20*time.Second, "d2 gone, d7 active in every view", func() error {
		for _, d := range ds {
			if d == ds[1] {
				continue
			}
			r, err := rolesOf(d)
			if err != nil {
				return err
			}
			if _, in := r["d2"]; in || r["d7"] != "active" || r["d8"] != "standby" {
				return fmt.Errorf("%s sees %v", d.Name, r)
			}
		}
		return nil
	})
	labtest.Report(t, "cluster: kill -9 of an active daemon -> standby active in every view", []time.Duration{time.Since(start)})

	// 4. It restarts with its state: same config, back in the active set
	// (priority ties broken by name: d2 before d7).
	ds[1].Restart(t)
	labtest.Eventually(t, 20*time.Second, "d2 back and active, d7 standby", func() error {
		for _, d := range ds {
			r, err := rolesOf(d)
			if err != nil {
				return err
			}
			if r["d2"] != "active" || r["d7"] != "standby" {
				return fmt.Errorf("%s sees %v", d.Name, r)
			}
		}
		return nil
	})

	// 5. A graceful stop (SIGTERM) leaves at once: no suspicion timeout.
	if err := ds[7].Stop(15 * time.Second); err != nil {
		t.Errorf("d8 stop: %v\n%s", err, tail(ds[7].Log(), 20))
	}
	labtest.Eventually(t, 10*time.Second, "d8 left every view", func() error {
		r, err := rolesOf(ds[0])
		if err != nil {
			return err
		}
		if _, in := r["d8"]; in {
			return fmt.Errorf("d1 still sees d8")
		}
		return nil
	})
	if !strings.Contains(ds[7].Log(), "left the cluster") {
		t.Errorf("d8 did not leave the cluster on SIGTERM:\n%s", tail(ds[7].Log(), 20))
	}
}

func TestWrongKeyIsRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	bin := labtest.Binaries(t)
	key := newKey(t)
	dir1, dir2 := t.TempDir(), t.TempDir()
	WriteConfig(dir1, Spec{Name: "k1", Addr: "127.0.0.31", Port: 7946, Key: key, MaxActive: 8, Priority: 100, Services: baseServices})
	WriteConfig(dir2, Spec{Name: "k2", Addr: "127.0.0.32", Port: 7946, Seeds: []string{"127.0.0.31"}, Key: newKey(t),
		MaxActive: 8, Priority: 100, Services: baseServices})
	k1 := Start(t, bin, dir1, "k1", "127.0.0.31", "")
	k2 := Start(t, bin, dir2, "k2", "127.0.0.32", "")
	time.Sleep(3 * time.Second) // the join retries every 2s
	for _, d := range []*Daemon{k1, k2} {
		r, err := rolesOf(d)
		if err != nil {
			t.Fatal(err)
		}
		if len(r) != 1 {
			t.Errorf("%s sees %v: a member with another key got in", d.Name, r)
		}
	}
	if !strings.Contains(k2.Log(), "no seed answers") {
		t.Errorf("k2 does not say it could not join:\n%s", tail(k2.Log(), 20))
	}
	// A director alone still serves its config (once it stops waiting
	// for a seed).
	labtest.Eventually(t, 15*time.Second, "lone k2 announces", func() error {
		var st api.StatusResponse
		if err := k2.Get("/v1/status", &st); err != nil {
			return err
		}
		if !slices.ContainsFunc(st.VIPs, func(v api.VIPView) bool { return v.Announced }) {
			return fmt.Errorf("VIPs %+v", st.VIPs)
		}
		return nil
	})
}
