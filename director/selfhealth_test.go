package director

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/ipvs"
)

// An operator self check that goes down withdraws the director at once:
// the loop acts on the check's change, not on its next self tick (here an
// hour away, so without the wake the director would neither announce nor
// withdraw). The status says when the deciding probe ran.
func TestNodeActsOnSelfCheckChangeAtOnce(t *testing.T) {
	fail := filepath.Join(t.TempDir(), "fail")
	cfg := nodeConfig(t, "d1", twoUDPVIPs, "")
	cfg.Health.Self.Checks = []configs.SelfCheck{{Name: "marker", Check: configs.Check{Type: configs.CheckExec,
		Command: []string{"sh", "-c", "test ! -e " + fail}, Interval: 50 * time.Millisecond, Timeout: time.Second, Rise: 1, Fall: 1}}}
	d1 := startNodeOpts(t, cfg, &recorder{}, ipvs.NewMemory(), func(o *Options) { o.SelfEvery = time.Hour })
	waitFor(t, 10*time.Second, "announce once the self check is up", func() error { return expectAnnounced("192.0.2.2/32", "192.0.2.3/32")(d1) })

	before := time.Now()
	if err := os.WriteFile(fail, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "withdraw once the self check is down", func() error { return expectAnnounced()(d1) })
	var since time.Time
	for _, c := range d1.n.StatusView().SelfChecks {
		if c.Name == "marker" && !c.OK {
			since = c.Since
		}
	}
	if since.Before(before) || since.After(time.Now()) {
		t.Errorf("the failing check's since is %v, want the deciding probe's time (after %v)", since, before)
	}
	if err := os.Remove(fail); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "announce again", func() error { return expectAnnounced("192.0.2.2/32", "192.0.2.3/32")(d1) })
}
