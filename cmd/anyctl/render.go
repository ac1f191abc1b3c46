package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/anycastd/anycastd/api"
)

// The table renderings: for people, stable for golden tests (every time
// relative to now).

func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

// age is a duration the way ps and kubectl show it: 45s, 12m, 3h, 5d.
func age(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "0s"
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func short(hash string) string {
	if len(hash) > 8 {
		return hash[:8]
	}
	return hash
}

func cfgName(v uint64, hash string) string {
	if v == 0 {
		return "none"
	}
	return fmt.Sprintf("v%d/%s", v, short(hash))
}

func renderMembers(w io.Writer, r api.MembersResponse, now time.Time) {
	tw := table(w)
	fmt.Fprintln(tw, "NAME\tADDRESS\tSTATE\tROLE\tHEALTH\tDRAINED\tCONFIG\tANNOUNCED\tPEERS\tAGE")
	roles := map[string]int{}
	members := slices.Clone(r.Members)
	slices.SortStableFunc(members, func(a, b api.MemberView) int { return naturalCompare(a.Name, b.Name) })
	for _, m := range members {
		name := m.Name
		if m.Self {
			name += "*"
		}
		h := "ok"
		switch {
		case m.Bad != "":
			h = "? " + m.Bad
		case !m.Healthy:
			h = "FAIL " + m.Reason
		}
		drained := "no"
		if m.Drained {
			drained = "yes"
		}
		ann := "-"
		if len(m.Announced) > 0 {
			ann = strings.Join(m.Announced, ",")
		} else if m.Announcing > 0 {
			ann = fmt.Sprintf("%d prefixes", m.Announcing)
		}
		peers := "-"
		if m.Peers > 0 {
			peers = fmt.Sprintf("%d/%d", m.PeersUp, m.Peers)
		}
		if m.State != "alive" {
			// What a dead member last said it announced is no longer
			// true of the network.
			ann, peers = "-", "-"
		}
		addr := m.Addr
		if addr == "" {
			addr = "-"
		}
		cfg := cfgName(m.ConfigVersion, m.ConfigHash)
		if m.Applied != "" && m.Applied != m.ConfigHash {
			// A rollout has not reached it: it runs the previous services.
			cfg += " (runs previous " + m.Applied[:min(8, len(m.Applied))] + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, addr, m.State, m.Role, h, drained,
			cfg, ann, peers, age(now, m.Started))
		roles[m.Role]++
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%d members: %d active, %d standby, %d ineligible (max_active %d); * is this director\n",
		len(r.Members), roles["active"], roles["standby"], roles["ineligible"], r.MaxActive)
}

func renderStatus(w io.Writer, s api.StatusResponse, now time.Time) {
	tw := table(w)
	kv := func(k, f string, a ...any) { fmt.Fprintf(tw, "%s:\t"+f+"\n", append([]any{k}, a...)...) }
	kv("Director", "%s (anycastd %s, up %s)", s.Name, s.Build, age(now, s.Started))
	role := s.Role
	if s.Stopping {
		role += " (stopping)"
	}
	kv("Role", "%s", role)
	if s.Eligible && s.Reason == "" {
		kv("Health", "ok")
	} else {
		kv("Health", "%s", s.Reason)
	}
	if s.Drain.Drained {
		kv("Drained", "yes, since %s ago: %s", age(now, s.Drain.Since), orDash(s.Drain.Reason))
	} else {
		kv("Drained", "no")
	}
	kv("Routing", "%s, dataplane %s", s.Mode, s.Dataplane)
	c := s.Config
	kv("Config", "%s by %s, %d services", cfgName(c.Version, c.Hash), orDash(c.Author), c.Services)
	if c.Applied != "" {
		kv("Rollout", "not here yet: runs the previous services (%s)", c.Applied[:min(8, len(c.Applied))])
	}
	if c.Error != "" {
		kv("Config error", "%s", c.Error)
	}
	if c.SaveError != "" {
		kv("Config not saved", "%s (retried every second)", c.SaveError)
	}
	kv("Members", "%d active, %d standby, %d ineligible", s.Members["active"], s.Members["standby"], s.Members["ineligible"])
	if as := s.ActiveSize; as.Size != 0 && (as.Size != as.Target || len(as.Disagree) > 0) {
		line := fmt.Sprintf("%d now, cluster max_active %d", as.Size, as.Target)
		if as.Size > as.Target {
			line += ", stepping down one director at a time"
		}
		if len(as.Disagree) > 0 {
			line += "; configured otherwise on " + strings.Join(as.Disagree, " ")
		}
		kv("Active set", "%s", line)
	}
	r := s.Reconcile
	line := fmt.Sprintf("%s ago, %d ops in %s, %d draining", age(now, r.At), r.Ops, r.Duration.Round(time.Microsecond), r.Draining)
	if len(r.Errors) > 0 {
		line += fmt.Sprintf(", %d ERRORS", len(r.Errors))
	}
	kv("IPVS", "%s", line)
	if r.SaveError != "" {
		kv("IPVS record not saved", "%s (retried every turn)", r.SaveError)
	}
	if t := s.Tables; t != nil {
		kv("IPVS tables", "%s", tablesLine(t, now))
	}
	if cs := s.ConnSync; cs != nil {
		switch {
		case cs.Error != "":
			kv("Conn sync", "NOT AS CONFIGURED: %s", cs.Error)
		case len(cs.Daemons) == 0:
			kv("Conn sync", "off")
		default:
			kv("Conn sync", "%s", strings.Join(cs.Daemons, "; "))
		}
	}
	tw.Flush()
	for _, e := range r.Errors {
		fmt.Fprintf(w, "  ipvs error: %s\n", e)
	}
	if len(s.Foreign) > 0 {
		fmt.Fprintf(w, "  not ours, left alone: %s\n", strings.Join(s.Foreign, ", "))
	}

	fmt.Fprintln(w, "\nSelf checks:")
	tw = table(w)
	for _, ch := range s.SelfChecks {
		st := "ok"
		if !ch.OK {
			st = "FAIL"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", ch.Name, st, ch.Reason)
	}
	tw.Flush()

	fmt.Fprintln(w, "\nVIPs:")
	tw = table(w)
	for _, v := range s.VIPs {
		st := "withdrawn"
		switch {
		case v.GracefulShutdown:
			st = "announced (GSHUT)"
		case v.Announced:
			st = "announced"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", v.VIP, st, strings.Join(v.Services, ","), v.Reason)
	}
	tw.Flush()

	if len(s.Peers) > 0 {
		fmt.Fprintln(w, "\nPeers:")
		tw = table(w)
		fmt.Fprintln(tw, "  ADDRESS\tASN\tSTATE\tBFD\tFLAPS\tSINCE\tREASON")
		for _, p := range s.Peers {
			flaps := strconv.FormatUint(p.Flaps, 10)
			if p.BFDFlaps > 0 {
				flaps += fmt.Sprintf(" (%d by BFD)", p.BFDFlaps)
			}
			addr := "-" // a VRRP instance that has heard no master yet
			if p.Address.IsValid() {
				addr = p.Address.String()
			}
			fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\t%s\t%s\t%s\n", addr, p.ASN, p.State, orDash(p.BFD), flaps, age(now, p.Since), p.Reason)
		}
		tw.Flush()
		for _, p := range s.Peers {
			if len(p.Rejected) == 0 {
				continue
			}
			var parts []string
			total := uint64(0)
			for _, reason := range slices.Sorted(maps.Keys(p.Rejected)) {
				parts = append(parts, fmt.Sprintf("%s %d", reason, p.Rejected[reason]))
				total += p.Rejected[reason]
			}
			fmt.Fprintf(w, "  VRID %d: %d advertisements dropped as misconfigured (%s); last: %s\n", p.ASN, total, strings.Join(parts, ", "), p.LastRejected)
		}
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func renderServices(w io.Writer, r api.ServicesResponse, now time.Time) {
	fmt.Fprintf(w, "config %s, %d services\n", cfgName(r.Config.Version, r.Config.Hash), len(r.Services))
	for _, s := range r.Services {
		key := fmt.Sprintf("%s:%d/%s", s.VIP, s.Port, s.Protocol)
		if s.FWMark != 0 {
			key = fmt.Sprintf("fwmark %d (%s)", s.FWMark, s.VIP)
		} else if s.VIP.Is6() {
			key = fmt.Sprintf("[%s]:%d/%s", s.VIP, s.Port, s.Protocol)
		}
		ann := "withdrawn"
		if s.Announced {
			ann = "announced"
		}
		ipvs := ""
		if !s.InIPVS {
			ipvs = ", NOT IN IPVS"
		}
		if s.FailOpen {
			ipvs += ", ON THIS DIRECTOR'S CHECKS (the cluster's verdict is below quorum)"
		}
		fmt.Fprintf(w, "\n%s  %s  %s %s  check %s  %d/%d up (quorum %d)  %s%s\n", s.Name, key, s.Scheduler, s.Forwarding,
			s.Check, s.Up, len(s.Backends), s.Quorum, ann, ipvs)
		tw := table(w)
		fmt.Fprintln(tw, "  BACKEND\tWEIGHT\tIPVS\tHEALTH\tSINCE\tVERDICT\tACTIVE\tINACT\tLAST")
		for _, b := range s.Backends {
			addr := fmt.Sprintf("%s:%d", b.Address, b.Port)
			if b.Address.Is6() {
				addr = fmt.Sprintf("[%s]:%d", b.Address, b.Port)
			}
			iw := "-"
			if b.IPVSWeight != nil {
				iw = fmt.Sprint(*b.IPVSWeight)
			}
			last := b.Detail
			if b.Error != "" {
				last = b.Error
			}
			if b.LatencyMS > 0 {
				last = fmt.Sprintf("%s (%.1fms)", last, b.LatencyMS)
			}
			fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", addr, b.Weight, iw, b.Health, age(now, b.Since),
				verdict(now, b), b.ActiveConns, b.InactiveConns, orDash(strings.TrimSpace(last)))
		}
		tw.Flush()
	}
}

// verdict is the health a backend's table entry was built from, with the
// directors' votes when any held it down: "up (1/4 down)", or "down here
// 35s (cluster up, 1/4 down)" when this director's checks overrode the
// cluster's after health.local_hold.
func verdict(now time.Time, b api.BackendView) string {
	switch {
	case b.Verdict == "":
		return "-"
	case b.Overridden:
		return fmt.Sprintf("down here %s (cluster up, %d/%d down)", age(now, b.DisagreeSince), b.DownVotes, b.Voters)
	case b.DownVotes > 0 && b.Voters > 1:
		return fmt.Sprintf("%s (%d/%d down)", b.Verdict, b.DownVotes, b.Voters)
	}
	return b.Verdict
}

// serviceNames lists names in a stable order, for summaries.
func serviceNames(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// naturalCompare orders names as people do: d2 before d10.
func naturalCompare(a, b string) int {
	for a != "" && b != "" {
		da, db := digitsPrefix(a), digitsPrefix(b)
		if da != "" && db != "" {
			na, nb := strings.TrimLeft(da, "0"), strings.TrimLeft(db, "0")
			if len(na) != len(nb) {
				return len(na) - len(nb)
			}
			if c := strings.Compare(na, nb); c != 0 {
				return c
			}
			a, b = a[len(da):], b[len(db):]
			continue
		}
		if a[0] != b[0] {
			return int(a[0]) - int(b[0])
		}
		a, b = a[1:], b[1:]
	}
	return len(a) - len(b)
}

func digitsPrefix(s string) string {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return s[:i]
}

// tablesLine says how this director's mh (sh, dh) tables compare with the
// other directors'.
func tablesLine(t *api.TablesView, now time.Time) string {
	n := len(t.Fingerprints)
	switch {
	case t.Compared == 0:
		return fmt.Sprintf("%d order-sensitive services; no other director on this config to compare with", n)
	case len(t.Differ) == 0:
		return fmt.Sprintf("%d order-sensitive services, the same on %d other directors", n, t.Compared)
	}
	var parts []string
	for _, svc := range slices.Sorted(maps.Keys(t.Differ)) {
		p := fmt.Sprintf("%s (%s)", svc, strings.Join(t.Differ[svc], ","))
		if slices.Contains(t.Outvoted, svc) {
			p += " OUTVOTED"
		}
		parts = append(parts, p)
	}
	line := fmt.Sprintf("DIFFER from %d other directors: %s", t.Compared, strings.Join(parts, " "))
	if t.Repairs > 0 {
		line += fmt.Sprintf("; read in full to repair %d times, last %s ago", t.Repairs, age(now, t.LastRepair))
	}
	return line
}
