package clusterlab

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anycastd/anycastd/api"
	"github.com/anycastd/anycastd/labs/labtest"
)

// The daemon's own reload paths: an edited file is picked up by itself,
// SIGHUP reloads, and an invalid file changes nothing and says why.
func TestDaemonReload(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	bin := labtest.Binaries(t)
	dir := t.TempDir()
	spec := Spec{Name: "r1", Addr: "127.0.0.51", Port: 7946, MaxActive: 8, Priority: 100, Services: baseServices}
	path, err := WriteConfig(dir, spec)
	if err != nil {
		t.Fatal(err)
	}
	d := Start(t, bin, dir, "r1", spec.Addr, "")
	vips := func() (string, error) {
		var st api.StatusResponse
		if err := d.Get("/v1/status", &st); err != nil {
			return "", err
		}
		var out []string
		for _, v := range st.VIPs {
			if v.Announced {
				out = append(out, v.VIP.String())
			}
		}
		return strings.Join(out, ","), nil
	}
	expect := func(what, want string) {
		t.Helper()
		labtest.Eventually(t, 10*time.Second, what, func() error {
			got, err := vips()
			if err != nil {
				return err
			}
			if got != want {
				return fmt.Errorf("announced %q, want %q", got, want)
			}
			return nil
		})
	}
	expect("first config", "192.0.2.53")

	// An invalid edit: refused, logged with the problem, nothing changes.
	good, _ := os.ReadFile(path)
	os.WriteFile(path, []byte(strings.Replace(string(good), "port: 53", "port: 99999", 1)), 0o644)
	labtest.Eventually(t, 10*time.Second, "invalid file refused in the log", func() error {
		if !strings.Contains(d.Log(), "config reload refused") || !strings.Contains(d.Log(), "services[0].port") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	expect("still the first config", "192.0.2.53")

	// A valid edit, noticed without a signal.
	spec.Services = baseServices + `  - name: ntp
    vip: 192.0.2.123
    protocol: udp
    port: 123
    health: {type: none}
    backends: [{address: 10.9.9.11}]
`
	WriteConfig(dir, spec)
	expect("edited file applied", "192.0.2.53,192.0.2.123")

	// SIGHUP with the file back as it was.
	os.WriteFile(path, good, 0o644)
	d.Signal(syscall.SIGHUP)
	expect("reloaded on SIGHUP", "192.0.2.53")

	// SIGTERM: exits 0.
	if err := d.Stop(15 * time.Second); err != nil {
		t.Errorf("stop: %v\n%s", err, tail(d.Log(), 20))
	}
}
