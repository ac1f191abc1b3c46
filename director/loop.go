package director

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/anycastd/anycastd/api"
	"github.com/anycastd/anycastd/cluster"
	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/health"
	"github.com/anycastd/anycastd/ipvs"
	"github.com/anycastd/anycastd/routing"
)

// The loop: one owner of every change, one turn (step) per burst of
// inputs: plan, withdraw, reconcile IPVS (and triage its errors), announce.

// Snapshot is what the loop decided last, for the API.
type Snapshot struct {
	Desired   Desired
	Reconcile ReconcileInfo
	// Tables are this director's fingerprints of its order-sensitive
	// services (by name) after the turn's reconcile, and how the turn
	// found them against the other directors' (CompareTables, before the
	// reconcile).
	Tables      map[string]string
	TablesCheck TableCheck
	// Applied is the short hash of the services applied; Rollout what
	// this director says of the rollout that reached it (nil: none).
	Applied string
	Rollout *cluster.RolloutReport
	At      time.Time
}

// ReconcileInfo is the last reconciliation of the IPVS table, as the API
// reports it.
type ReconcileInfo = api.ReconcileInfo

func (n *Node) loop(ctx context.Context, errc <-chan error) error {
	sub := n.mon.Subscribe()
	defer sub.Close()
	selfTick := time.NewTicker(n.opts.SelfEvery)
	defer selfTick.Stop()
	resync := time.NewTicker(n.opts.Resync)
	defer resync.Stop()
	timer := time.NewTimer(0)
	defer timer.Stop()
	done := ctx.Done()
	// An announcer whose state changes on its own (VRRP mastership)
	// wakes the loop, so the metadata and the DNS follow at once.
	annChanged := n.ann.Changed() // nil (never fires) unless it elects
	n.evaluateSelf(ctx)
	for need := true; ; {
		if need {
			n.step(ctx)
			n.readyOnce.Do(func() { close(n.ready) })
			n.mu.Lock()
			wakeAt, stopping := n.snap.Desired.WakeAt, n.stopping
			if !n.retryAt.IsZero() {
				wakeAt = earliest(wakeAt, n.retryAt)
			}
			announcing := len(n.snap.Desired.Announce) > 0
			n.mu.Unlock()
			if stopping && !announcing {
				n.log.Info("withdrawn; leaving the cluster")
				return nil
			}
			if !wakeAt.IsZero() {
				timer.Reset(max(wakeAt.Sub(n.opts.Now()), time.Millisecond))
			}
		}
		need = true
		select {
		case <-done:
			done = nil
			n.beginStop()
		case <-n.abort:
			n.mu.Lock()
			n.stopping = true
			n.drain = drainState{Drained: true, Reason: "shutting down (aborted)", Since: time.Time{}}
			n.mu.Unlock()
		case err := <-errc:
			return err
		case <-n.wake:
		case <-annChanged:
		case <-n.cl.Changed():
		case <-sub.C():
			n.noteHealth(sub.Drain())
		case <-n.self.Changed():
			// An operator self check went up or down: act now, not
			// on the next tick, and a director that must withdraw
			// does not wait to gather a burst either.
			if need = n.evaluateSelf(ctx); !need {
				continue
			}
			n.mu.Lock()
			healthy := n.selfSt.Healthy
			n.mu.Unlock()
			if !healthy {
				continue
			}
		case <-selfTick.C:
			// The built-in self checks run every SelfEvery; the loop
			// acts only when their verdict changed. The routing
			// sessions' state is republished (if it changed) on the
			// same beat.
			if need = n.evaluateSelf(ctx); !need {
				n.mu.Lock()
				cfg, d, doc, report := n.cfg, n.snap.Desired, n.appliedDoc, n.report
				n.mu.Unlock()
				n.publish(cfg, d, doc, report)
				n.updateDNS(cfg, d, n.cl.Members())
				continue
			}
		case <-resync.C:
		case <-timer.C:
		}
		// Gather the rest of a burst.
		t := time.NewTimer(n.opts.Coalesce)
	gather:
		for {
			select {
			case <-n.wake:
			case <-n.cl.Changed():
			case <-sub.C():
				n.noteHealth(sub.Drain())
			case <-t.C:
				break gather
			}
		}
	}
}

// noteHealth records when a backend of each service last went up or
// down, for Plan's settling hold: now, on the loop's clock (the change
// came in a moment ago).
func (n *Node) noteHealth(changes []health.Status) {
	now := n.opts.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.healthChanged == nil {
		n.healthChanged = map[string]time.Time{}
	}
	for _, st := range changes {
		if i := strings.LastIndexByte(st.ID, '/'); i > 0 {
			n.healthChanged[st.ID[:i]] = now
		}
	}
}

func (n *Node) beginStop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.stopping = true
	if !n.drain.Drained {
		n.drain = drainState{Drained: true, Reason: "shutting down", Since: n.opts.Now()}
	}
	n.log.Info("stopping: announcing with GRACEFUL_SHUTDOWN, then withdrawing", "hold", n.cfg.Routing.BGP.GracefulShutdown)
}

func (n *Node) evaluateSelf(ctx context.Context) bool {
	st := n.self.Evaluate(ctx)
	n.mu.Lock()
	changed := st.Healthy != n.selfSt.Healthy || st.Reason() != n.selfSt.Reason()
	n.selfSt = st
	n.mu.Unlock()
	if changed {
		if st.Healthy {
			n.log.Info("self health: good")
		} else {
			n.log.Warn("self health: failing", "reason", st.Reason())
		}
	}
	return changed
}

// step is one turn of the loop: adopt the cluster's newest config, plan,
// withdraw what must go, reconcile IPVS, announce what may, publish.
func (n *Node) step(ctx context.Context) {
	now := n.opts.Now()
	n.adoptDocument()
	_ = n.saveDrain() // a drain the disk refused earlier (reported in status)

	n.mu.Lock()
	cfg, services, doc := n.cfg, n.services, n.appliedDoc
	drain, selfSt := n.drain, n.selfSt
	applied := shortHash(n.appliedHash)
	if doc != nil && n.docSeen.version != doc.Version {
		n.docSeen.version, n.docSeen.at = doc.Version, now
	}
	n.mu.Unlock()

	members := n.cl.Members()
	var ver uint64
	var hash string
	if doc != nil {
		ver, hash = doc.Version, doc.Short()
	}
	behind, newest := Behind(cfg.Node.Name, ver, hash, members)
	n.mu.Lock()
	if !behind {
		n.behindAt = time.Time{}
	} else if n.behindAt.IsZero() {
		n.behindAt = now
	}
	behindAt := n.behindAt
	failed := n.lastFailed
	prevSize := n.activeSize
	announced := map[netip.Addr]bool{}
	for _, v := range n.snap.Desired.VIPs {
		announced[v.VIP] = v.Announced
	}
	settling := n.snap.Desired.Settling
	lastRole, promotedOffline := n.snap.Desired.Role, n.snap.Desired.PromotedOffline
	ownTables := n.snap.Tables
	changed := make(map[string]time.Time, len(services))
	for _, s := range services {
		if t, ok := n.healthChanged[s.Name]; ok {
			changed[s.Name] = t
		}
	}
	maps.DeleteFunc(n.healthChanged, func(svc string, _ time.Time) bool { _, ok := changed[svc]; return !ok }) // services gone
	prevVerdicts := n.verdicts
	n.mu.Unlock()
	own := n.mon.States()
	if n.targets.doc != applied || n.targets.set == "" {
		n.targets = targetSet{doc: applied, set: TargetSet(services)}
	}
	vd := HealthVerdicts(VerdictInput{Self: cfg.Node.Name, Config: n.targets.set, Own: own, Members: members,
		Local: cfg.Health.Verdict == configs.VerdictLocal, Hold: cfg.Health.LocalHold, Since: prevVerdicts.Disagree, Now: now})
	if cfg.Health.Verdict != configs.VerdictLocal {
		vd = FailOpen(services, own, vd)
	}
	n.logVerdicts(prevVerdicts, vd, cfg.Health.LocalHold, now)
	size, sizeWake := NextActiveSize(prevSize, cfg.Node.Name, cfg.Cluster.MaxActive, members, now, n.opts.ActiveStepHold)
	if size.Size != prevSize.Size || !slices.Equal(size.Disagree, prevSize.Disagree) {
		n.log.Info("active set size", "size", size.Size, "was", prevSize.Size, "cluster_max_active", size.Target,
			"configured_here", cfg.Cluster.MaxActive, "members_configured_otherwise", strings.Join(size.Disagree, " "))
	}

	in := Input{
		Self: cfg.Node.Name, Services: services, Members: members, MaxActive: size.Size,
		Local: Local{Priority: cfg.Cluster.Priority, Healthy: selfSt.Healthy, Reason: selfSt.Reason(),
			Drained: drain.Drained, DrainedAt: drain.Since, BehindSince: behindAt,
			Applied: fmt.Sprintf("v%d/%s", ver, hash), Newest: newest},
		Backends: vd.States, Failed: failed, Now: now,
		GracefulShutdown: cfg.Routing.BGP.GracefulShutdown, BehindGrace: n.opts.BehindGrace,
		Announced: announced, Settling: settling, HealthChanged: changed,
		Role: lastRole, PromotedOffline: promotedOffline,
	}
	// The tables as the last turn left them; a repair this turn may
	// change that (below).
	tcheck := CompareTables(cfg.Node.Name, ver, applied, ownTables, members)
	in.TableOutvoted, in.TableOutvotedSince = tcheck.Outvoted, n.outvotedSince(tcheck, now)
	if cfg.Routing.Mode != configs.ModeBGP {
		// GRACEFUL_SHUTDOWN is a BGP community: elsewhere a drain
		// withdraws at once.
		in.GracefulShutdown = 0
	} else {
		in.Attrs = routing.Announcement{Communities: cfg.Routing.BGP.Communities,
			LargeCommunities: cfg.Routing.BGP.LargeCommunities, MED: cfg.Routing.BGP.MED}
		in.Routing = bgpSessions(n.ann.Status().Peers)
	}
	select {
	case <-n.abort:
		in.GracefulShutdown = 0
	default:
	}
	d := Plan(in)
	for _, w := range []time.Time{sizeWake, vd.WakeAt} {
		if !w.IsZero() {
			d.WakeAt = earliest(d.WakeAt, w)
		}
	}

	// 1. Withdraw first what is no longer to be announced (before IPVS
	// entries it needs can go).
	// Not for an announcer that elects (VRRP), which must not be
	// withdrawn from in two steps (see routing.Elects).
	if !routing.Elects(n.ann) {
		keep := keepAnnounced(n.ann.Status().Announced, d.Announce)
		if err := n.ann.Set(ctx, keep); err != nil {
			n.log.Warn("withdraw", "err", err)
		}
	}
	// 2. IPVS, and the host settings it needs; a table the other
	// directors outvote is read in full first, so that a difference in
	// the kernel is repaired before anything is announced from it.
	n.setupHost(cfg, services)
	n.syncConns(ctx, cfg, now)
	n.repairTable(tcheck, now)
	rinfo, newFailed := n.reconcile(ctx, d.Table, now)
	tables := tableFingerprints(n.rec.Fingerprints(), serviceNames(services))
	if after := CompareTables(cfg.Node.Name, ver, applied, tables, members); !slices.Equal(after.Outvoted, tcheck.Outvoted) || !maps2Equal(failed, newFailed) {
		// The repair (or whatever the reconcile changed) made the table
		// agree, or not: what is announced follows this turn.
		tcheck = after
		in.TableOutvoted, in.TableOutvotedSince = tcheck.Outvoted, n.outvotedSince(tcheck, now)
		in.Failed = newFailed
		wake := d.WakeAt
		d = Plan(in)
		d.WakeAt = earliest(d.WakeAt, wake)
	}
	// 3. Announce.
	if err := n.ann.Set(ctx, d.Announce); err != nil {
		n.log.Warn("announce", "err", err)
	}
	n.mu.Lock()
	prev := n.snap.Desired
	n.lastFailed = newFailed
	n.activeSize = size
	n.verdicts = vd
	var report *cluster.HealthReport
	if doc != nil {
		report = healthReport(n.targets.set, own)
	}
	n.report = report
	// What this director says of the rollout that reached it.
	var rep *cluster.RolloutReport
	if n.rollout != nil {
		st := standing(services, own, selfSt.Healthy, failedNames(newFailed, services))
		if doc.InProgress() {
			st.DownElsewhere = downElsewhere(cfg.Node.Name, shortHash(doc.PreviousHash), members)
		}
		rep = rolloutReport(n.rollout, st, now)
		if rep.State == cluster.RolloutHolding {
			d.WakeAt = earliest(d.WakeAt, rep.Until)
		}
	}
	rinfo.Loops = n.snap.Reconcile.Loops + 1
	n.metrics.loops.Inc()
	// The table is the reconciler's now (and the kernel's); keeping a
	// copy here would only hold 10,000 destinations twice.
	d.Table = ipvs.Table{}
	n.snap = Snapshot{Desired: d, Reconcile: rinfo, Tables: tables, TablesCheck: tcheck, Applied: applied, Rollout: rep, At: now}
	seen := n.docSeen.at
	n.mu.Unlock()
	n.logChanges(prev, d)
	n.publish(cfg, d, doc, report)
	n.updateDNS(cfg, d, members)
	if doc.InProgress() {
		n.driveRollout(cfg.Node.Name, doc, d, rep, size.Size, seen, now)
	}
}

// disagreeLogAfter is how long this director's checks must disagree with
// the cluster's verdict before the log says so: while a backend that
// really failed is being found by the directors one after another, each
// one's check disagrees for a moment (a second or two), and that is no
// news.
const disagreeLogAfter = 5 * time.Second

// logVerdicts logs where this director's checks and the cluster's
// verdict have parted for disagreeLogAfter (checked on each turn: the
// loop turns at least every Resync), where it overrides the cluster, and
// where they agree again after that was logged. logged is the loop's.
func (n *Node) logVerdicts(prev, vd Verdicts, hold time.Duration, now time.Time) {
	if n.disagreeLogged == nil {
		n.disagreeLogged = map[string]bool{}
	}
	for t, since := range vd.Disagree {
		if !n.disagreeLogged[t] && now.Sub(since) >= disagreeLogAfter {
			n.disagreeLogged[t] = true
			n.log.Info("backend: this director's checks hold it down, most directors' up; it stays in the table until local_hold",
				"target", t, "for", now.Sub(since).Round(time.Millisecond), "down_votes", vd.DownVotes[t], "voters", vd.Voters, "local_hold", hold)
		}
		if slices.Contains(vd.Overridden, t) && !slices.Contains(prev.Overridden, t) {
			n.disagreeLogged[t] = true
			n.log.Warn("backend: this director's checks have held it down for local_hold while most directors hold it up; taken out of this director's table",
				"target", t, "for", now.Sub(since).Round(time.Millisecond), "down_votes", vd.DownVotes[t], "voters", vd.Voters)
		}
	}
	for t := range n.disagreeLogged {
		if _, ok := vd.Disagree[t]; !ok {
			delete(n.disagreeLogged, t)
			n.log.Info("backend: this director's checks and the cluster's verdict agree again", "target", t)
		}
	}
	for _, s := range vd.FailOpen {
		if !slices.Contains(prev.FailOpen, s) {
			n.log.Warn("service: most directors' checks would put it below quorum, this director's do not; it serves on its own checks here",
				"service", s, "voters", vd.Voters)
		}
	}
	for _, s := range prev.FailOpen {
		if !slices.Contains(vd.FailOpen, s) {
			n.log.Info("service: back on the directors' shared verdict", "service", s)
		}
	}
}

// keepAnnounced is what is announced now and still wanted, with the
// wanted attributes: the withdraw-only half of a change.
func keepAnnounced(now, want []routing.Announcement) []routing.Announcement {
	var out []routing.Announcement
	for _, w := range want {
		if slices.ContainsFunc(now, func(a routing.Announcement) bool { return a.Prefix == w.Prefix }) {
			out = append(out, w)
		}
	}
	return out
}

func maps2Equal(a, b map[ipvs.ServiceKey]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// setupHost takes the VIPs as local (local routes, so that an address on
// lo stays the kernel announcer's) and sets the sysctls IPVS needs
// (kernel dataplane only).
func (n *Node) setupHost(cfg *configs.Config, services []configs.Service) {
	if n.host == nil {
		return
	}
	set := ipvs.DirectorSettings{Interface: "lo"}
	for _, s := range services {
		if !slices.Contains(set.VIPs, s.VIP) {
			set.VIPs = append(set.VIPs, s.VIP)
		}
		set.NAT = set.NAT || s.Forwarding == configs.ForwardNAT ||
			slices.ContainsFunc(s.Backends, func(b configs.Backend) bool { return b.Forwarding == configs.ForwardNAT })
	}
	did, err := n.host.SetupDirector(set)
	for _, d := range did {
		// Every turn checks every setting: only what changed is news.
		if !strings.HasPrefix(d, "unchanged") {
			n.log.Info("host: " + d)
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if err != nil {
		msg := "host settings: " + err.Error()
		if n.hostErr != msg {
			n.log.Error("host settings", "err", err)
		}
		n.hostErr = msg
	} else {
		n.hostErr = ""
	}
}

// ipvsReadGrace is how long reads of the IPVS table may fail before IPVS
// counts as unreachable (the "ipvs" self check fails and the director
// withdraws): one failed read is not a verdict (fail static), a table
// that stays unreadable is.
const ipvsReadGrace = 3 * time.Second

// reconcile makes the dataplane hold want and says which services it
// does not hold as wanted (their VIPs are not announced). Each kind of
// failure counts as what it is: a refused service costs its own VIP; a
// failed read keeps the last verdicts (nothing was applied) until reads
// have failed for ipvsReadGrace; a failed save of the ownership record is
// reported and retried, and costs no VIP.
func (n *Node) reconcile(ctx context.Context, want ipvs.Table, now time.Time) (ReconcileInfo, map[ipvs.ServiceKey]string) {
	start := time.Now()
	res, err := n.rec.Reconcile(ctx, want, now)
	info := ReconcileInfo{At: now, Duration: time.Since(start), Ops: len(res.Plan), Draining: res.Draining}
	n.metrics.reconcile.Observe(info.Duration.Seconds())
	for _, op := range res.Plan {
		n.metrics.ipvsOps.WithLabelValues(op.Kind.String()).Inc()
	}
	for _, f := range res.Foreign {
		info.Foreign = append(info.Foreign, f.String())
	}
	n.metrics.ipvsErrors.Add(float64(len(res.Errs)))
	if len(res.Drift) > 0 {
		// Someone else (ipvsadm, another daemon) changed anycastd's
		// services: the plan puts them back.
		n.metrics.ipvsDrift.Add(float64(len(res.Drift)))
		n.log.Warn("IPVS: anycastd's services were changed behind its back (found by the periodic full read); restoring",
			"differences", len(res.Drift), "undo", res.Drift.String())
	}
	for _, e := range res.Errs {
		info.Errors = append(info.Errors, e.Error())
	}
	failed := make(map[ipvs.ServiceKey]string, len(res.Failed))
	for k, e := range res.Failed {
		var oe *ipvs.OpError
		if errors.As(e, &oe) {
			failed[k] = oe.Err.Error()
		} else {
			failed[k] = e.Error()
		}
	}
	if res.SaveErr != nil {
		info.SaveError = res.SaveErr.Error()
	}

	n.mu.Lock()
	if res.ReadErr != nil {
		// Nothing was applied: what the dataplane held, it holds, and
		// the last verdicts on its services stand.
		failed = n.lastFailed
		if n.ipvsReadFailing.IsZero() {
			n.ipvsReadFailing = now
		}
		n.retryAt = now.Add(time.Second)
	} else {
		n.ipvsReadFailing, n.retryAt = time.Time{}, time.Time{}
	}
	ipvsErr := ""
	if res.ReadErr != nil && now.Sub(n.ipvsReadFailing) >= ipvsReadGrace {
		ipvsErr = fmt.Sprintf("%v (failing for %s)", res.ReadErr, now.Sub(n.ipvsReadFailing).Round(time.Second))
	}
	if (ipvsErr == "") != (n.ipvsErr == "") {
		defer n.evaluateSelf(ctx)
	}
	n.ipvsErr = ipvsErr
	logErr := err != nil && (err.Error() != n.lastIPVSErr)
	n.lastIPVSErr = ""
	if err != nil {
		n.lastIPVSErr = err.Error()
	}
	n.mu.Unlock()
	if logErr {
		// Logged when it changes: a service the kernel refuses is
		// refused again on every turn.
		n.log.Error("IPVS reconcile", "err", err, "services_failed", len(failed),
			"read_failed", res.ReadErr != nil, "save_failed", res.SaveErr != nil)
	}
	if len(res.Plan) > 0 {
		n.log.Info("IPVS reconciled", "ops", len(res.Plan), "took", info.Duration.Round(time.Microsecond), "draining", res.Draining)
		n.log.Debug("IPVS plan", "plan", res.Plan.String())
	}
	return info, failed
}

func (n *Node) logChanges(prev, d Desired) {
	if prev.Role != d.Role {
		n.log.Info("role", "now", d.Role, "was", cmp.Or(string(prev.Role), "none"))
	}
	switch {
	case d.PromotedOffline && !prev.PromotedOffline:
		n.log.Warn("active while no routing session is up (this director may have been cut off): it announces once a session has been up for the rejoin hold, if still active",
			"hold", RejoinHold)
	case !d.PromotedOffline && prev.PromotedOffline && d.Role == cluster.RoleActive:
		n.log.Info("rejoin hold over: still active with a routing session up")
	}
	old := map[netip.Addr]VIPState{}
	for _, v := range prev.VIPs {
		old[v.VIP] = v
	}
	for _, v := range d.VIPs {
		o, seen := old[v.VIP]
		if seen && o.Announced == v.Announced && o.GracefulShutdown == v.GracefulShutdown {
			continue
		}
		switch {
		case v.GracefulShutdown:
			n.log.Info("VIP announced with GRACEFUL_SHUTDOWN", "vip", v.VIP)
		case v.Announced:
			n.log.Info("VIP announced", "vip", v.VIP)
		case seen && o.Announced || !seen:
			n.log.Info("VIP not announced", "vip", v.VIP, "reason", v.Reason)
		}
	}
}

// bgpSessions is what Plan needs of the BGP sessions (none reported: an
// announcer without any, nothing to know): since when at least one has
// been established (the earliest start among those established:
// with several neighbours, a session that came up later does not end the
// time at least one was up).
func bgpSessions(peers []routing.Peer) Sessions {
	s := Sessions{Known: len(peers) > 0}
	for _, p := range peers {
		if p.Established() && (s.UpSince.IsZero() || p.Since.Before(s.UpSince)) {
			s.UpSince = p.Since
		}
	}
	return s
}
