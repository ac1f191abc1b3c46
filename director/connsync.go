package director

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/ipvs"
)

// connSyncEvery is how often the kernel's sync daemons are checked
// against the config when it has not changed (a daemon stopped behind
// anycastd's back, an interface that came back).
const connSyncEvery = 5 * time.Second

// connSyncState is what the node knows of the kernel's IPVS connection
// synchronisation (node.conn_sync). Guarded by Node.mu.
type connSyncState struct {
	// want is what the config asked for when last checked (nil: nothing).
	want []ipvs.SyncDaemon
	// managed: conn_sync was enabled at some point of this run, so the
	// daemons are anycastd's (and disabling it stops them). Never enabled,
	// the kernel's daemons are left as they are (an operator's ipvsadm).
	managed bool
	checked time.Time
	running []ipvs.SyncDaemon
	err     string
}

// wantDaemons are the daemons node.conn_sync asks for: a master and a
// backup with the same settings, so that this director both sends its
// connections and takes the others'.
func wantDaemons(c configs.ConnSync) []ipvs.SyncDaemon {
	if !c.Enabled {
		return nil
	}
	d := ipvs.SyncDaemon{Interface: c.Interface, SyncID: uint8(c.SyncID), Group: c.Group, Port: uint16(c.Port),
		TTL: uint8(c.TTL), MaxLen: uint16(c.MaxLen)}
	m, b := d, d
	m.State, b.State = ipvs.SyncMaster, ipvs.SyncBackup
	return []ipvs.SyncDaemon{m, b}
}

// syncConns keeps the kernel's sync daemons as the config says: at once
// when the config changed, else every connSyncEvery. A failure is
// reported (status, log, metrics), never a reason to withdraw: without
// synchronisation a director still serves, only flows that move between
// directors while their tables differ are at risk.
func (n *Node) syncConns(ctx context.Context, cfg *configs.Config, now time.Time) {
	s, ok := n.dp.(ipvs.Syncer)
	if !ok {
		return
	}
	want := wantDaemons(cfg.Node.ConnSync)
	n.mu.Lock()
	st := n.connSync
	n.mu.Unlock()
	changed := !slices.Equal(want, st.want)
	if (!changed && now.Sub(st.checked) < connSyncEvery) || (want == nil && !st.managed) {
		return
	}
	have, did, err := ipvs.SyncTo(ctx, s, want)
	for _, d := range did {
		n.log.Info("IPVS connection sync: daemon " + d)
	}
	msg := ""
	if err != nil {
		msg = strings.ReplaceAll(err.Error(), "\n", "; ")
	}
	if msg != "" && msg != st.err {
		n.log.Error("IPVS connection sync (flows that move between directors may be reset)", "err", msg)
	} else if msg == "" && st.err != "" {
		n.log.Info("IPVS connection sync works again")
	}
	n.mu.Lock()
	n.connSync = connSyncState{want: want, managed: st.managed || want != nil, checked: now, running: have, err: msg}
	n.mu.Unlock()
}
