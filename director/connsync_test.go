package director

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/ipvs"
)

// node.conn_sync runs a master and a backup sync daemon with its
// settings, follows a reload, stops them when disabled, and leaves alone
// the daemons of a run where it was never enabled.
func TestNodeConnSync(t *testing.T) {
	ctx := context.Background()
	daemons := func(dp *ipvs.Memory) string {
		ds, _ := dp.SyncDaemons(ctx)
		var out []string
		for _, d := range ds {
			out = append(out, fmt.Sprintf("%s/%s/%d", d.State, d.Interface, d.SyncID))
		}
		return strings.Join(out, " ")
	}
	svc := `  - name: dns
    vip: 192.0.2.2
    protocol: udp
    port: 53
    health: {type: none}
    backends: [{address: 10.9.9.10}]
`
	// Never enabled: an operator's daemon stays.
	cfg := nodeConfig(t, "d1", svc, "")
	dp := ipvs.NewMemory()
	if err := dp.StartSyncDaemon(ctx, ipvs.SyncDaemon{State: ipvs.SyncMaster, Interface: "eth9", SyncID: 1}); err != nil {
		t.Fatal(err)
	}
	d1 := startNodeDP(t, cfg, &recorder{}, dp)
	waitFor(t, 10*time.Second, "announce", func() error { return expectAnnounced("192.0.2.2/32")(d1) })
	if got := daemons(dp); got != "master/eth9/1" {
		t.Errorf("conn_sync off: daemons %q, want the operator's left alone", got)
	}
	if d1.n.StatusView().ConnSync != nil {
		t.Errorf("conn_sync off: status shows %+v", d1.n.StatusView().ConnSync)
	}

	// Enabled: a master and a backup with its settings (the operator's
	// master, with other settings, replaced).
	cfg2 := nodeConfig(t, "d1", svc, "")
	cfg2.Node.StateDir = cfg.Node.StateDir
	cfg2.Node.ConnSync.Enabled, cfg2.Node.ConnSync.Interface, cfg2.Node.ConnSync.SyncID = true, "eth0", 7
	cfg2.Node.ConnSync.Group, cfg2.Node.ConnSync.Port, cfg2.Node.ConnSync.TTL = netip.MustParseAddr("224.0.0.81"), 8848, 1
	if err := d1.n.Reload(cfg2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "both daemons", func() error {
		if got := daemons(dp); got != "master/eth0/7 backup/eth0/7" {
			return fmt.Errorf("daemons %q", got)
		}
		if cs := d1.n.StatusView().ConnSync; cs == nil || len(cs.Daemons) != 2 || cs.Error != "" {
			return fmt.Errorf("status %+v", cs)
		}
		return nil
	})

	// Another interface: both restarted there.
	cfg3 := *cfg2
	cfg3.Node.ConnSync.Interface = "eth1"
	if err := d1.n.Reload(&cfg3); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "daemons moved", func() error {
		if got := daemons(dp); got != "master/eth1/7 backup/eth1/7" {
			return fmt.Errorf("daemons %q", got)
		}
		return nil
	})

	// Disabled: stopped, and the status says so.
	cfg4 := *cfg2
	cfg4.Node.ConnSync.Enabled = false
	if err := d1.n.Reload(&cfg4); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "daemons stopped", func() error {
		if got := daemons(dp); got != "" {
			return fmt.Errorf("daemons %q", got)
		}
		if cs := d1.n.StatusView().ConnSync; cs == nil || len(cs.Daemons) != 0 {
			return fmt.Errorf("status %+v", cs)
		}
		return nil
	})
	// Through it all, nothing was withdrawn for it.
	if err := expectAnnounced("192.0.2.2/32")(d1); err != nil {
		t.Error(err)
	}
}
