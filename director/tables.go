package director

import (
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/anycastd/anycastd/cluster"
	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/ipvs"
)

// The directors' IPVS tables must agree where a scheduler's choice
// depends on them: mh (sh, dh) picks a flow's real server from a lookup
// table the kernel fills by walking the service's destinations in list
// order, so the same destinations in another order, or at other weights,
// send some flows elsewhere, and a flow that ECMP moves from one director
// to another is reset by a real server that never saw it. Each director
// publishes the fingerprints of its order-sensitive services as its
// reconciler knows the kernel's table (ipvs.Fingerprint) and compares
// them with the others'.

// TableCheck is how this director's fingerprints compare with the other
// directors' that applied the same config.
type TableCheck struct {
	// Compared is how many other directors were compared: alive, on the
	// same config, with fingerprints published.
	Compared int
	// Differ is, per service name, the directors whose fingerprint of it
	// differs from this director's, sorted.
	Differ map[string][]string
	// Outvoted are the services (sorted) whose fingerprint here differs
	// from one that a strict majority of the compared directors and this
	// one hold: this director's table is the odd one out. With no
	// majority (two directors that differ) nobody is outvoted.
	Outvoted []string
}

// CompareTables compares own (this director's fingerprints by service
// name) with those of the members that hold the config version and apply
// the services of hash (short; during a rollout the directors it has not
// reached apply the previous ones). It is pure.
func CompareTables(self string, version uint64, hash string, own map[string]string, members []cluster.Member) TableCheck {
	var tc TableCheck
	var peers []cluster.Member
	for _, m := range members {
		if m.Name == self || m.State != cluster.StateAlive || m.Bad != "" || m.Meta.Tables == nil ||
			m.Meta.ConfigVersion != version || m.Meta.AppliedHash() != hash {
			continue
		}
		peers = append(peers, m)
	}
	tc.Compared = len(peers)
	if own == nil {
		return tc
	}
	for _, svc := range slices.Sorted(maps.Keys(own)) {
		mine := own[svc]
		votes := map[string]int{mine: 1}
		total := 1
		for _, m := range peers {
			fp, ok := m.Meta.Tables[svc]
			if !ok {
				continue
			}
			total++
			votes[fp]++
			if fp != mine {
				if tc.Differ == nil {
					tc.Differ = map[string][]string{}
				}
				tc.Differ[svc] = append(tc.Differ[svc], m.Name)
			}
		}
		for fp, n := range votes {
			if fp != mine && 2*n > total {
				tc.Outvoted = append(tc.Outvoted, svc)
				break
			}
		}
	}
	return tc
}

// tableFingerprints names the reconciler's fingerprints by service (nil
// when it does not know them).
func tableFingerprints(byKey map[ipvs.ServiceKey]string, names map[ipvs.ServiceKey]string) map[string]string {
	if byKey == nil {
		return nil
	}
	out := make(map[string]string, len(byKey))
	for k, fp := range byKey {
		if name, ok := names[k]; ok {
			out[name] = fp
		}
	}
	return out
}

// serviceNames maps the services' IPVS keys to their names.
func serviceNames(services []configs.Service) map[ipvs.ServiceKey]string {
	out := make(map[ipvs.ServiceKey]string, len(services))
	for _, s := range services {
		out[serviceKey(s)] = s.Name
	}
	return out
}

// tableRepairEvery is how often at most a director whose table the others
// outvote reads it in full: a difference in the kernel (a change behind
// its back, a table adopted from another tool) is found and repaired by
// the first; one that stays comes from what the table is built from (a
// drain under way here and not there, health verdicts in flux), which a
// read cannot mend.
const tableRepairEvery = 5 * time.Second

// repairTable makes the turn's reconcile read the table in full when the
// other directors outvote this director's fingerprints (and it has not
// done so for tableRepairEvery). The loop's.
func (n *Node) repairTable(tc TableCheck, now time.Time) {
	if len(tc.Outvoted) == 0 {
		return
	}
	n.mu.Lock()
	last := n.tableRepairAt
	due := last.IsZero() || now.Sub(last) >= tableRepairEvery || now.Before(last)
	if due {
		n.tableRepairAt = now
		n.tableRepairs++
	}
	n.mu.Unlock()
	if !due {
		return
	}
	n.metrics.tableRepairs.Inc()
	n.rec.ReadInFull()
	differ := make([]string, 0, len(tc.Outvoted))
	for _, s := range tc.Outvoted {
		differ = append(differ, s+" ("+strings.Join(tc.Differ[s], ",")+")")
	}
	n.log.Warn("IPVS: this director's table differs from the one most directors hold (mh would send some flows elsewhere): reading it in full to repair it",
		"services", strings.Join(differ, " "))
}

// outvotedSince keeps since when this director's table has been outvoted
// on some service (zero while it is not), for Plan's TableHold.
func (n *Node) outvotedSince(tc TableCheck, now time.Time) time.Time {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case len(tc.Outvoted) == 0:
		n.tableOutvotedAt = time.Time{}
	case n.tableOutvotedAt.IsZero():
		n.tableOutvotedAt = now
	}
	return n.tableOutvotedAt
}
