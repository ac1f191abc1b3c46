package soak

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/anycastd/anycastd/api"
	"github.com/anycastd/anycastd/ipvs"
)

func backgroundContext() context.Context { return context.Background() }

// checker holds what the invariants need between checks: since when a
// condition has been false (a transition is allowed its bound), the last
// config version of each director.
type checker struct {
	l        *lab
	since    map[string]time.Time // condition key -> first seen false
	versions map[string]uint64
	noAnswer map[string]time.Time
	tables   tableWatch
}

// maxDiffer is how long the tables may differ however often they change
// (invariant 4): a difference that keeps moving is still one.
const maxDiffer = 3 * boundTable

// tableWatch decides invariant 4 over time: the tables compared must be
// the same within the bound after the last change of any of them (the
// issue's "within 2 s of the last change": a backend found down by one
// director after the other, then another back, is a run of changes, each
// given the bound), and within maxDiffer however they change.
type tableWatch struct {
	last      map[string]string // each compared director's table as last read
	changed   time.Time         // when one of them last changed (or one came or went)
	differing time.Time         // since when they differ (zero: the same)
}

// see takes the tables compared at now (by director) and whether they are
// the same, and says whether they break the invariant; a report starts a
// new episode.
func (w *tableWatch) see(now time.Time, tables map[string]string, same bool, bound, maxDiffer time.Duration) bool {
	if !maps.Equal(w.last, tables) || w.changed.IsZero() {
		w.changed = now
	}
	w.last = tables
	if same {
		w.differing = time.Time{}
		return false
	}
	if w.differing.IsZero() {
		w.differing = now
	}
	if now.Sub(w.changed) > bound || now.Sub(w.differing) > maxDiffer {
		w.changed, w.differing = now, now
		return true
	}
	return false
}

func newChecker(l *lab) *checker {
	return &checker{l: l, since: map[string]time.Time{}, versions: map[string]uint64{}, noAnswer: map[string]time.Time{}}
}

// hold reports whether condition key has been failing for longer than
// bound; ok clears it.
func (c *checker) hold(key string, ok bool, now time.Time, bound time.Duration) bool {
	if ok {
		delete(c.since, key)
		return false
	}
	first, seen := c.since[key]
	if !seen {
		c.since[key] = now
		return false
	}
	if now.Sub(first) > bound {
		delete(c.since, key) // reported; a new episode starts over
		return true
	}
	return false
}

// exempt says whether a director's state is the schedule's doing now or
// was within settle ago: a fault on it, or on the router.
func (c *checker) exempt(name string, now time.Time, settle time.Duration) bool {
	for _, f := range c.l.rep.faultsAround(now, settle) {
		if f.Target == name || f.Target == "router" {
			return true
		}
	}
	return false
}

// groups are the directors that can gossip with each other at now: all of
// them, or, while a partition is in force or healed within boundHeal, the
// pieces every such partition leaves (two partitions close together: the
// pieces of both).
func (c *checker) groups(now time.Time) [][]string {
	var sides [][]string
	for _, f := range c.l.rep.faultsAround(now, boundHeal) {
		if f.Kind == "partition" {
			sides = append(sides, f.Side)
		}
	}
	var out [][]string
	index := map[string]int{}
	for _, name := range dirNames {
		sig := ""
		for _, side := range sides {
			if slices.Contains(side, name) {
				sig += "a"
			} else {
				sig += "b"
			}
		}
		i, ok := index[sig]
		if !ok {
			i = len(out)
			index[sig] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], name)
	}
	return out
}

func (c *checker) check(s *snapshot) {
	l, now := c.l, s.at
	rep := l.rep
	plain, gshut := s.announcers()
	hops := s.hops
	want := s.expectedHops()
	routerFault := false
	boundRoute := l.boundRoute()
	for _, f := range rep.faultsAround(now, boundRoute) {
		if f.Target == "router" {
			routerFault = true
		}
	}
	rep.convergence(s)
	rep.mu.Lock()
	rep.checks++
	rep.mu.Unlock()

	// 1. The router's next hops are the directors that announce.
	// While the router itself is down or back for less than the bound,
	// there is nothing to compare: the condition starts over.
	if c.hold("1", routerFault || slices.Equal(hops, want), now, boundRoute) {
		c.violation("1", fmt.Sprintf("router next hops %v, directors announcing %v (with GRACEFUL_SHUTDOWN %v) for over %s", hops, plain, gshut, boundRoute), s)
	}
	// 1b. Kernel mode: the kernel holds the announcement exactly when
	// the director's status says it announces.
	if s.kernel {
		for name, st := range s.status {
			says := slices.ContainsFunc(st.VIPs, func(v api.VIPView) bool { return v.VIP.String() == vip && v.Announced })
			if c.hold("1b/"+name, says == s.held[name], now, boundAnnounce) {
				c.violation("1", fmt.Sprintf("%s's status says announced %v, its kernel holds the VIP for OSPF: %v", name, says, s.held[name]), s)
			}
		}
	}
	// A director without an answer (down, starting, or its API slow)
	// starts its conditions over: a condition seen false before it went
	// down is not still false after it is back.
	for _, name := range dirNames {
		if _, ok := s.status[name]; !ok {
			for key := range c.since {
				if strings.HasSuffix(key, "/"+name) {
					delete(c.since, key)
				}
			}
		}
	}
	// 2. Only a healthy, active, undrained director on the newest
	// config announces, and never more than max_active.
	for name, st := range s.status {
		bad := ""
		for _, v := range st.VIPs {
			if v.VIP.String() != vip || !v.Announced || v.GracefulShutdown {
				continue
			}
			switch {
			case !st.Eligible:
				bad = "not eligible: " + st.Reason
			case st.Role != "active":
				bad = "role " + st.Role
			case st.Drain.Drained:
				bad = "drained"
			}
		}
		if c.hold("2/"+name, bad == "", now, boundAnnounce) {
			c.violation("2", fmt.Sprintf("%s announces while %s", name, bad), s)
		}
	}
	// A gossip partition makes each side elect its own active set (the
	// product's choice: a standby that never took over while the others
	// were gone would be an outage), so up to max_active per side
	// announce until the heal.
	groups := c.groups(now)
	allowed := 0
	for _, g := range groups {
		allowed += min(maxActive, len(g))
	}
	if c.hold("2/max", len(plain) <= allowed, now, boundAnnounce) {
		c.violation("2", fmt.Sprintf("%d directors announce (max_active %d): %v", len(plain), maxActive, plain), s)
	}
	// 3. Someone announces while a director is healthy and the services
	// have their quorum.
	serviceable := false
	for _, st := range s.status {
		if !st.Eligible {
			continue
		}
		for _, v := range st.VIPs {
			if v.VIP.String() == vip && !strings.Contains(v.Reason, "below quorum") {
				serviceable = true
			}
		}
	}
	if c.hold("3", routerFault || !serviceable || len(plain)+len(gshut) > 0, now, boundRoute) {
		c.violation("3", "a director is healthy and the services have their quorum, but nobody announces the VIP", s)
	}
	// 4. Every live director holds the same IPVS table (while the
	// gossip is split, every director of the same side: a change made
	// on one side reaches the other at the heal; during a staged
	// rollout, every director applying the same services: the stages
	// reached run the new ones, the others the previous ones).
	same, diff := true, ""
	var pair [2]string
	compared := map[string]string{}
	for _, group := range groups {
		refs := map[string]string{} // applied services -> the first director's name
		for _, name := range group {
			tb, ok := s.tables[name]
			if !ok || s.down[name] || c.exempt(name, now, boundTable) {
				continue
			}
			st, known := s.status[name]
			if known && st.Role == "" && !slices.Contains(plain, name) && !slices.Contains(gshut, name) {
				// Starting: nothing applied yet, nothing announced; its
				// kernel holds what its last run left (as invariant 5
				// does not count its v0 either).
				continue
			}
			applied := ""
			if known && st != nil {
				applied = st.Config.Applied
			}
			str := scheduling(tb)
			compared[name] = str
			refName, seen := refs[applied]
			ref := ""
			if seen {
				ref = compared[refName]
			}
			if !seen {
				refs[applied] = name
			} else if str != ref {
				same = false
				diff = fmt.Sprintf("%s:\n%s\n%s:\n%s", refName, tableString(s.tables[refName]), name, tableString(tb))
				pair = [2]string{refName, name}
			}
		}
	}
	if c.tables.see(now, compared, same, boundTable, maxDiffer) {
		c.violation("4", "the directors' IPVS tables differ:\n"+diff+l.probeDiff(pair, s), s)
	}
	// 5. No config version goes backwards; nobody stays behind.
	for name, st := range s.status {
		if st.Role == "" {
			continue // starting: nothing applied yet (v0 is "not yet", not "older")
		}
		v := st.Config.Version
		if prev := c.versions[name]; v < prev {
			rep.violation("5", fmt.Sprintf("%s's config went from v%d back to v%d", name, prev, v), s)
		}
		c.versions[name] = max(c.versions[name], v)
		behind := strings.Contains(st.Reason, "config behind")
		if c.hold("5/"+name, !behind || c.exempt(name, now, boundBehind), now, boundBehind) {
			rep.violation("5", fmt.Sprintf("%s has been config behind for over %s: %s", name, boundBehind, st.Reason), s)
		}
	}
	// 6. A running daemon answers (its exit is watched elsewhere).
	for _, name := range dirNames {
		_, answered := s.status[name]
		if c.hold("6/"+name, answered || s.down[name] || c.exempt(name, now, boundAnswer), now, boundAnswer) {
			rep.violation("6", fmt.Sprintf("%s runs but its API has not answered for %s", name, boundAnswer), s)
		}
	}
}

// tableString is a table as it is shown: services, destinations in
// order, weights.
func tableString(t ipvs.Table) string { return tableText(t, true) }

// scheduling is a table as invariant 4 compares it: the same, without
// the destinations at weight 0. Those get no new connection from any
// scheduler (mh gives them no slot: its table is the same with them or
// without them), and a backend removed from the config stays at weight 0
// on a director only while that director still has connections to it
// (up to the service's drain_timeout), so directors differ there by
// design.
func scheduling(t ipvs.Table) string { return tableText(t, false) }

func tableText(t ipvs.Table, zero bool) string {
	var b strings.Builder
	for _, s := range t.Services {
		fmt.Fprintf(&b, "%s %s %#x:", s.ServiceKey, s.Scheduler, s.Flags)
		for _, d := range s.Destinations {
			if d.Weight > 0 || zero {
				fmt.Fprintf(&b, " %s w%d", d.DestKey, d.Weight)
			}
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// Ceilings for invariant 6's "no daemon grows without bound": a director
// of this lab holds a few kB of config; RSS beyond these is a leak.
const (
	maxRSSMiB     = 150
	maxGoroutines = 2000
)

// growth reads every running daemon's resident memory and goroutines from
// its /metrics (on the API socket).
func (c *checker) growth() {
	l := c.l
	for _, name := range dirNames {
		l.mu.Lock()
		d := l.daemons[name]
		l.mu.Unlock()
		resp, err := d.client.Get("http://anycastd/metrics")
		if err != nil {
			continue
		}
		text, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		rss, _ := metricValue(string(text), "process_resident_memory_bytes")
		gor, _ := metricValue(string(text), "go_goroutines")
		rss /= 1 << 20
		l.rep.mu.Lock()
		l.rep.maxRSS, l.rep.maxGoroutines = max(l.rep.maxRSS, rss), max(l.rep.maxGoroutines, gor)
		l.rep.mu.Unlock()
		if rss > maxRSSMiB || gor > maxGoroutines {
			l.rep.violation("6", fmt.Sprintf("%s: %.0f MiB resident, %.0f goroutines (limits %d MiB, %d)", name, rss, gor, maxRSSMiB, maxGoroutines))
		}
	}
}

// metricValue is the value of an unlabelled series in a Prometheus text
// exposition.
func metricValue(text, series string) (float64, bool) {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

// violation reports an invariant violation with the evidence the lab can
// still gather at that moment.
func (c *checker) violation(inv, detail string, s *snapshot) {
	c.l.rep.violationWith(inv, detail, c.l.evidence(s.at, 8*time.Second), s)
}

// evidence is what explains a violation: each running director's
// announcements as its BGP speaker holds them (not the plan's), BIRD's
// routes for the VIP, and every daemon's log lines of the last window.
func (l *lab) evidence(now time.Time, window time.Duration) string {
	var b strings.Builder
	for _, name := range dirNames {
		l.mu.Lock()
		d := l.daemons[name]
		l.mu.Unlock()
		resp, err := d.client.Get("http://anycastd/v1/announcements")
		if err != nil {
			fmt.Fprintf(&b, "%s speaker: %v\n", name, err)
			continue
		}
		var ar api.AnnouncementsResponse
		err = json.NewDecoder(resp.Body).Decode(&ar)
		resp.Body.Close()
		if err != nil {
			fmt.Fprintf(&b, "%s speaker: %v\n", name, err)
			continue
		}
		var held, peers []string
		for _, a := range ar.Announced {
			h := a.Prefix.String()
			if a.GracefulShutdown {
				h += " (GRACEFUL_SHUTDOWN)"
			}
			held = append(held, h)
		}
		for _, p := range ar.Peers {
			peers = append(peers, fmt.Sprintf("%s %s bfd %s", p.Address, p.State, p.BFD))
		}
		fmt.Fprintf(&b, "%s speaker holds %v; peers %v\n", name, held, peers)
	}
	l.mu.Lock()
	ctl := l.birdCtl
	l.mu.Unlock()
	if out, err := exec.Command("ip", "netns", "exec", l.ns["r"].Name, "/usr/sbin/birdc", "-s", ctl,
		"show", "route", "for", vip, "all").CombinedOutput(); err != nil {
		fmt.Fprintf(&b, "birdc: %v: %s\n", err, out)
	} else {
		fmt.Fprintf(&b, "BIRD's routes for %s:\n%s", vip, indent(string(out)))
	}
	for _, name := range dirNames {
		lines := logWindow(filepath.Join(l.dirs[name], "anycastd.log"), now.Add(-window), now.Add(time.Second))
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		fmt.Fprintf(&b, "%s log, %s before:\n%s", name, window, indent(strings.Join(lines, "\n")+"\n"))
	}
	return b.String()
}

// logWindow is the lines of a daemon's log (slog's text format) stamped
// between from and to, without Debug.
func logWindow(path string, from, to time.Time) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		ts, ok := strings.CutPrefix(line, "time=")
		if !ok || strings.Contains(line, " level=DEBUG ") {
			continue
		}
		ts, _, _ = strings.Cut(ts, " ")
		t, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil || t.Before(from) || t.After(to) {
			continue
		}
		out = append(out, line)
	}
	return out
}

// probeDiff probes, from each of the two directors whose tables differ,
// every destination whose weight differs between them, with the check
// the services use (anyctl probe, with the checks' timeout and 2 s): it tells
// a director whose checks fail for a reason of its own from a real server
// that one director cannot reach.
func (l *lab) probeDiff(pair [2]string, s *snapshot) string {
	if pair[0] == "" {
		return ""
	}
	weights := func(name string) map[string]int {
		w := map[string]int{}
		for _, svc := range s.tables[name].Services {
			for _, d := range svc.Destinations {
				w[d.DestKey.String()] = d.Weight
			}
		}
		return w
	}
	wa, wb := weights(pair[0]), weights(pair[1])
	var dests []string
	for k, w := range wa {
		if wb[k] != w {
			dests = append(dests, k)
		}
	}
	for k := range wb {
		if _, ok := wa[k]; !ok {
			dests = append(dests, k)
		}
	}
	slices.Sort(dests)
	var b strings.Builder
	for _, dst := range dests {
		typ := "tcp"
		if strings.HasSuffix(dst, ":80") {
			typ = "http"
		}
		for _, name := range pair {
			for _, timeout := range []string{checkTimeout, "2s"} {
				out, err := exec.Command("ip", "netns", "exec", l.ns[name].Name, filepath.Join(l.bin, "anyctl"), "probe",
					"--type", typ, "--target", dst, "--timeout", timeout).CombinedOutput()
				fmt.Fprintf(&b, "probe %s %s from %s (timeout %s): %s (%v)\n", typ, dst, name, timeout, strings.TrimSpace(string(out)), err)
			}
		}
	}
	return b.String()
}
