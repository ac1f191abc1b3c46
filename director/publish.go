package director

import (
	"net/netip"
	"slices"

	"github.com/anycastd/anycastd/cluster"
	"github.com/anycastd/anycastd/configs"
)

// What a turn tells the others: the gossip metadata and the fallback DNS.

// updateDNS gives the DNS server the VIPs that healthy directors hold now:
// what each alive, eligible member says it announces (in vrrp mode: the
// VIPs of the instances it is master of), this director's from its own
// announcer, less the VIPs held only as a stand-in for a failed director
// (so new clients go to directors that are up, not to the one doing
// double duty). Every director computes it from the same gossip view.
func (n *Node) updateDNS(cfg *configs.Config, d Desired, members []cluster.Member) {
	if n.dns == nil {
		return
	}
	var live []netip.Addr
	for _, m := range members {
		if m.Name == cfg.Node.Name || !m.Eligible() {
			continue
		}
		for _, p := range m.Meta.Announced {
			if pf, err := netip.ParsePrefix(p); err == nil && !slices.Contains(m.Meta.StandIn, p) {
				live = append(live, pf.Addr())
			}
		}
	}
	if d.Eligible {
		st := n.ann.Status()
		for _, a := range st.Announced {
			if !slices.Contains(st.StandIn, a.Prefix) {
				live = append(live, a.Prefix.Addr())
			}
		}
	}
	n.dns.SetLive(live)
}

func (n *Node) publish(cfg *configs.Config, d Desired, doc *cluster.Document, report *cluster.HealthReport) {
	st := n.ann.Status()
	m := cluster.Meta{
		Priority: cfg.Cluster.Priority, MaxActive: cfg.Cluster.MaxActive, Healthy: d.Eligible, Reason: d.Reason,
		AnnouncedCount: len(st.Announced), Mode: cfg.Routing.Mode, Addrs: cfg.Node.Addresses,
		Started: n.started.Unix(), Build: n.opts.Build,
	}
	n.mu.Lock()
	m.Drained = n.drain.Drained
	m.ActiveSize = n.activeSize.Size
	tables, applied, rollout := n.snap.Tables, n.snap.Applied, n.snap.Rollout
	n.mu.Unlock()
	m.Staged = true
	if doc != nil {
		m.ConfigVersion, m.ConfigHash = doc.Version, doc.Short()
		m.Health = report
		m.Tables = tables
		m.Rollout = rollout
		if applied != m.ConfigHash {
			m.Applied = applied
		}
	}
	for _, a := range st.Announced {
		m.Announced = append(m.Announced, a.Prefix.String())
	}
	for _, p := range st.StandIn {
		m.StandIn = append(m.StandIn, p.String())
	}
	for _, p := range st.Peers {
		m.Peers++
		if p.Established() {
			m.PeersUp++
		}
	}
	n.cl.SetMeta(m)
}
