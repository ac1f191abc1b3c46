package director

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/anycastd/anycastd/cluster"
	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/health"
	"github.com/anycastd/anycastd/internal/atomicfile"
	"github.com/anycastd/anycastd/ipvs"
)

// The config's state: the file's services settled against the cluster's
// document at start, reloads (what a running daemon takes, what waits for a
// restart), applies through the API, and adopting the cluster's newest
// document.

// settleServices decides at start whether the config file's services are
// a change to propose or the cluster's (or the persisted) document rules.
// The file wins only if the operator edited it since this director last
// read it: a director that was down while `anyctl apply` changed the
// cluster must not bring the old services back.
func (n *Node) settleServices() error {
	n.mu.Lock()
	file, hash := n.fileServices, n.fileHash
	n.fileServices, n.settled = nil, true
	n.mu.Unlock()
	recorded, err := os.ReadFile(n.statePath("file-services.sha256"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("state: %w", err)
	}
	doc := n.cl.Document()
	switch {
	case doc.IsZero():
		n.log.Info("no cluster config yet: the config file's services become version 1")
		if _, err := n.cl.Propose(file); err != nil {
			return err
		}
	case doc.Hash == hash:
	case len(recorded) > 0 && strings.TrimSpace(string(recorded)) != hash:
		n.log.Info("the config file's services changed while anycastd was down: proposing them to the cluster",
			"cluster_version", doc.Version)
		if _, err := n.cl.Propose(file); err != nil {
			return err
		}
	default:
		n.log.Info("serving the cluster's config, not the file's services (they differ; the cluster's is newer)",
			"version", doc.Version, "hash", doc.Short(), "author", doc.Author)
	}
	return atomicfile.Write(n.statePath("file-services.sha256"), []byte(hash+"\n"), 0o600)
}

// Reload takes a new config (already loaded and valid): the services are
// proposed to the cluster if they differ from what the file held before;
// the local settings that can change at runtime do; the others are logged
// as needing a restart. It applies all of itself or nothing: everything
// that can fail is checked (keys, self checks) or done (the proposal)
// before anything local changes, and a reload that failed is tried again
// by the next one, even of the same file.
func (n *Node) Reload(cfg *configs.Config) error {
	n.applyMu.Lock()
	defer n.applyMu.Unlock()
	n.mu.Lock()
	old := n.cfg
	oldHash, settled := n.fileHash, n.settled
	n.mu.Unlock()
	if restart := needsRestart(old, cfg); len(restart) > 0 {
		n.log.Warn("config changes that take effect only at restart (the running values are kept)", "fields", strings.Join(restart, ", "))
	}
	keys, err := cluster.DecodeKeys(cfg.Cluster.Keys)
	if err != nil {
		return err
	}
	if err := n.cl.CheckKeys(keys); err != nil {
		return fmt.Errorf("cluster.keys: %w", err)
	}
	checks, err := health.PrepareOperatorChecks(cfg.Health.Self.Checks)
	if err != nil {
		return fmt.Errorf("health.self.checks: %w", err)
	}
	newHash, err := cluster.ServicesHash(cfg.Services)
	if err != nil {
		return err
	}
	if newHash != oldHash && settled {
		if doc := n.cl.Document(); doc.IsZero() || doc.Hash != newHash {
			d, err := n.cl.Propose(cfg.Services)
			if err != nil {
				return fmt.Errorf("propose the file's services to the cluster: %w", err)
			}
			n.log.Info("config file's services changed: proposed to the cluster", "version", d.Version, "hash", d.Short())
		}
		if err := atomicfile.Write(n.statePath("file-services.sha256"), []byte(newHash+"\n"), 0o600); err != nil {
			// The proposal is made; this record only tells a restart
			// whether the file changed while the daemon was down.
			n.log.Warn("could not record the file's services hash (a restart may propose the file again)", "err", err)
		}
	}

	// Nothing below fails on input that passed the checks above.
	if err := n.cl.SetKeys(keys); err != nil {
		return fmt.Errorf("cluster.keys: %w", err)
	}
	if err := n.self.SetPrepared(checks); err != nil {
		return fmt.Errorf("health.self.checks: %w", err)
	}
	merged := *old
	takeRuntime(&merged, cfg)
	n.mu.Lock()
	n.cfg, n.fileHash = &merged, newHash
	if !n.settled {
		n.fileServices = cfg.Services // settleServices has not run yet: these are the file's now
	}
	n.mu.Unlock()
	n.log.Info("config reloaded")
	n.Wake()
	return nil
}

// takeRuntime copies into dst the settings a reload changes in a running
// daemon: the one list of them (everything else takes a restart, and
// needsRestart names it). The services are not among them: a file's
// services are proposed to the cluster.
func takeRuntime(dst, src *configs.Config) {
	dst.Health = src.Health
	dst.Node.ConnSync = src.Node.ConnSync
	dst.Cluster.Keys = src.Cluster.Keys
	dst.Cluster.MaxActive, dst.Cluster.Priority = src.Cluster.MaxActive, src.Cluster.Priority
	dst.Routing.BGP.Communities, dst.Routing.BGP.LargeCommunities = src.Routing.BGP.Communities, src.Routing.BGP.LargeCommunities
	dst.Routing.BGP.MED, dst.Routing.BGP.GracefulShutdown = src.Routing.BGP.MED, src.Routing.BGP.GracefulShutdown
}

// needsRestart names the sections where b differs from the running a in
// what a reload does not change (all but takeRuntime's).
func needsRestart(a, b *configs.Config) []string {
	x := *a
	takeRuntime(&x, b)
	var out []string
	eq := func(name string, x, y any) {
		xj, _ := json.Marshal(x)
		yj, _ := json.Marshal(y)
		if string(xj) != string(yj) {
			out = append(out, name)
		}
	}
	eq("node", x.Node, b.Node)
	eq("cluster (bind, port, advertise, seeds, insecure)", x.Cluster, b.Cluster)
	eq("routing.mode", x.Routing.Mode, b.Routing.Mode)
	eq("routing.bgp (session settings)", x.Routing.BGP, b.Routing.BGP)
	eq("routing.kernel", x.Routing.Kernel, b.Routing.Kernel)
	eq("routing.vrrp", x.Routing.VRRP, b.Routing.VRRP)
	eq("routing.dns", x.Routing.DNS, b.Routing.DNS)
	eq("api", x.API, b.API)
	return out
}

// Apply makes services the cluster's config, if the cluster's config is
// still baseVersion/baseHash (0, "": none; see cluster.ProposeIf), and
// waits (up to Options.ApplyWait, or ctx) until every live member runs it.
// It returns the document and the members that have not confirmed it yet
// (none: the cluster converged on it). When another change wins meanwhile
// it returns that document with ErrLost: a change that lost is never
// reported as applied.
func (n *Node) Apply(ctx context.Context, baseVersion uint64, baseHash string, services []configs.Service) (*cluster.Document, []string, error) {
	n.applyMu.Lock()
	defer n.applyMu.Unlock()
	d, err := n.cl.ProposeIf(baseVersion, baseHash, services)
	if err != nil {
		return nil, nil, err
	}
	n.log.Info("cluster config applied through the API", "version", d.Version, "hash", d.Short())
	n.Wake()
	wait := time.NewTimer(n.opts.ApplyWait)
	defer wait.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if cur := n.cl.Document(); cur.Version != d.Version || cur.Hash != d.Hash {
			n.log.Warn("a change applied through the API lost", "version", d.Version, "hash", d.Short(),
				"winner", fmt.Sprintf("v%d/%s", cur.Version, cur.Short()), "author", cur.Author)
			how := "the same version, made at the same time"
			if cur.Version > d.Version {
				how = "a newer version, before every director confirmed this one"
			}
			return cur, nil, fmt.Errorf("%w: the cluster took v%d/%s by %s (%s)", ErrLost, cur.Version, cur.Short(), cur.Author, how)
		}
		pending, refusedHere := n.unconfirmed(d)
		if len(pending) == 0 || refusedHere {
			return d, pending, nil
		}
		select {
		case <-tick.C:
		case <-wait.C:
			return d, pending, nil
		case <-ctx.Done():
			return d, pending, nil
		}
	}
}

// unconfirmed are the live members (this one included) that do not run
// d; refusedHere says this director cannot apply it (there is no point in
// waiting: its reason is in the list).
func (n *Node) unconfirmed(d *cluster.Document) (out []string, refusedHere bool) {
	n.mu.Lock()
	self, applied, docErr := n.cfg.Node.Name, n.appliedDoc, n.docErr
	n.mu.Unlock()
	if applied == nil || applied.Version != d.Version || applied.Hash != d.Hash {
		if strings.HasPrefix(docErr, fmt.Sprintf("cluster config v%d from ", d.Version)) {
			out, refusedHere = append(out, self+" ("+docErr+")"), true
		} else {
			out = append(out, self)
		}
	}
	for _, m := range n.cl.Members() {
		if m.Name == self || m.State != cluster.StateAlive || m.Bad != "" {
			continue
		}
		if m.Meta.ConfigVersion != d.Version || m.Meta.ConfigHash != d.Short() {
			out = append(out, m.Name)
		}
	}
	return out, refusedHere
}

// adoptDocument switches to the cluster's newest document if it is not
// the applied one yet: decode, reconfigure health checks; on failure keep
// serving the old one and say why (the config self check fails).
func (n *Node) adoptDocument() {
	doc := n.cl.Document()
	n.mu.Lock()
	cur := n.appliedDoc
	n.mu.Unlock()
	if doc.IsZero() || (cur != nil && cur.Version == doc.Version && cur.Hash == doc.Hash) {
		return
	}
	own := n.mon.States() // what this director's checks say under the services it applies now
	n.mu.Lock()
	self, was := n.cfg.Node.Name, n.appliedHash
	n.mu.Unlock()
	services, hash, err := doc.For(self)
	if err == nil && hash != was {
		err = n.mon.Set(n.healthSpecs(services))
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if err != nil {
		msg := fmt.Sprintf("cluster config v%d from %s cannot be applied here: %v", doc.Version, doc.Author, err)
		if n.docErr != msg {
			n.log.Error("cluster config refused", "version", doc.Version, "author", doc.Author, "err", err)
		}
		n.docErr = msg
		return
	}
	n.docErr = ""
	switch {
	case !doc.InProgress() || !doc.Reached(self):
		n.rollout = nil
	case n.rollout == nil || n.rollout.id != doc.Rollout.ID:
		// A stage reached this director: what it stood at under the
		// previous services, for the judgement after the hold.
		before := Standing{Unknown: true}
		if was != "" && was != hash {
			before = standing(n.services, own, n.selfSt.Healthy, failedNames(n.lastFailed, n.services))
		}
		n.rollout = &rolloutRun{id: doc.Rollout.ID, before: before, until: n.opts.Now().Add(doc.Rollout.Hold)}
		n.log.Info("rollout: this director runs the new services", "rollout", doc.Rollout.ID, "stage", doc.Rollout.Stage, "hold", doc.Rollout.Hold)
	}
	n.services, n.appliedDoc, n.appliedHash = services, doc, hash
	n.log.Info("cluster config adopted", "version", doc.Version, "hash", doc.Short(), "author", doc.Author, "services", len(services),
		"applied", shortHash(hash))
}

func shortHash(h string) string { return h[:min(len(h), 12)] }

// failedNames names the services of failed (by key).
func failedNames(failed map[ipvs.ServiceKey]string, services []configs.Service) map[string]string {
	names := serviceNames(services)
	out := make(map[string]string, len(failed))
	for k, why := range failed {
		if name, ok := names[k]; ok {
			out[name] = why
		}
	}
	return out
}

func (n *Node) healthSpecs(services []configs.Service) []health.Spec {
	var specs []health.Spec
	for _, s := range services {
		if s.Health.Type == configs.CheckNone {
			continue
		}
		for _, b := range s.Backends {
			specs = append(specs, health.Spec{ID: TargetID(s.Name, b), Check: s.Health, Target: health.CheckTarget(s, b)})
		}
	}
	return specs
}

// configCheck is the "config applied" self check: the host settings the
// applied config needs are in place. A cluster document this director
// cannot apply is not a failure of its own (every director would fail it
// at once): it keeps serving the document it applied, says why in its
// status, and withdraws only if the others did apply it (Behind).
func (n *Node) configCheck(context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.hostErr != "" {
		return errors.New(n.hostErr)
	}
	return nil
}
