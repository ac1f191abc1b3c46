package ipvs

import (
	"context"
	"net/netip"
	"slices"
	"testing"
)

func TestSyncPlan(t *testing.T) {
	master := SyncDaemon{State: SyncMaster, Interface: "eth0", SyncID: 7}
	backup := SyncDaemon{State: SyncBackup, Interface: "eth0", SyncID: 7}
	// As the kernel reports them: defaults filled in.
	running := func(d SyncDaemon) SyncDaemon {
		d.Group, d.Port, d.TTL, d.MaxLen = netip.MustParseAddr("224.0.0.81"), 8848, 1, 1472
		return d
	}
	other := backup
	other.Interface = "eth1"
	ported := master
	ported.Port = 9000
	for _, c := range []struct {
		name       string
		have, want []SyncDaemon
		stop       []SyncState
		start      []SyncDaemon
	}{
		{"none running: start both", nil, []SyncDaemon{master, backup}, nil, []SyncDaemon{master, backup}},
		{"both running as wanted (defaults filled in)", []SyncDaemon{running(master), running(backup)}, []SyncDaemon{master, backup}, nil, nil},
		{"the backup on another interface: restarted", []SyncDaemon{running(master), running(other)}, []SyncDaemon{master, backup},
			[]SyncState{SyncBackup}, []SyncDaemon{backup}},
		{"another port asked for: restarted", []SyncDaemon{running(master)}, []SyncDaemon{ported}, []SyncState{SyncMaster}, []SyncDaemon{ported}},
		{"only a master wanted: the backup stops", []SyncDaemon{running(master), running(backup)}, []SyncDaemon{master}, []SyncState{SyncBackup}, nil},
		{"nothing wanted: both stop", []SyncDaemon{running(master), running(backup)}, nil, []SyncState{SyncMaster, SyncBackup}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			stop, start := SyncPlan(c.have, c.want)
			if !slices.Equal(stop, c.stop) || !slices.Equal(start, c.start) {
				t.Errorf("stop %v start %v, want stop %v start %v", stop, start, c.stop, c.start)
			}
			// Carried out on memory (SyncTo), the plan leaves what was
			// wanted.
			m := NewMemory()
			ctx := context.Background()
			for _, d := range c.have {
				if err := m.StartSyncDaemon(ctx, d); err != nil {
					t.Fatal(err)
				}
			}
			now, did, err := SyncTo(ctx, m, c.want)
			if err != nil || len(did) != len(stop)+len(start) {
				t.Fatalf("SyncTo: did %v, %v", did, err)
			}
			if stop, start := SyncPlan(now, c.want); len(stop)+len(start) != 0 {
				t.Errorf("after the plan: stop %v start %v more", stop, start)
			}
		})
	}
}

// A daemon's settings survive the trip through the netlink encoding the
// kernel reads (NEW_DAEMON) and writes (GET_DAEMON's answers carry the same
// nested attributes).
func TestDaemonEncoding(t *testing.T) {
	for _, d := range []SyncDaemon{
		{State: SyncMaster, Interface: "eth0", SyncID: 7, Group: netip.MustParseAddr("224.0.0.81"), Port: 8848, TTL: 1, MaxLen: 1472},
		{State: SyncBackup, Interface: "bond0.100", SyncID: 255, Group: netip.MustParseAddr("ff02::1:81"), Port: 9000, TTL: 2},
	} {
		b := appendDaemonRequest(nil, 30, ipvsCmdNewDaemon, d, 1)
		if int(b[0]) != len(b) || len(b)%4 != 0 {
			t.Fatalf("%s: length %d in a message of %d bytes", d, b[0], len(b))
		}
		got, err := parseDaemon(b[16+4:]) // after the netlink and genl headers
		if err != nil {
			t.Fatal(err)
		}
		if got != d {
			t.Errorf("round trip: %+v, want %+v", got, d)
		}
	}
	del := appendDaemonRequest(nil, 30, ipvsCmdDelDaemon, SyncDaemon{State: SyncBackup, Interface: "eth0"}, 2)
	got, err := parseDaemon(del[20:])
	if err != nil || got != (SyncDaemon{State: SyncBackup}) {
		t.Errorf("DEL carries %+v (%v), want the state only", got, err)
	}
}
