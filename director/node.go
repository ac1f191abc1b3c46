package director

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/anycastd/anycastd/cluster"
	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/health"
	"github.com/anycastd/anycastd/internal/atomicfile"
	"github.com/anycastd/anycastd/ipvs"
	"github.com/anycastd/anycastd/routing"
	"github.com/anycastd/anycastd/routing/bgp"
	"github.com/anycastd/anycastd/routing/dns"
	"github.com/anycastd/anycastd/routing/kernel"
	"github.com/anycastd/anycastd/routing/vrrp"
)

// Options configure a Node.
type Options struct {
	// Config is the loaded, valid config.
	Config *configs.Config
	// Build is the version string shown to the other members.
	Build string
	Log   *slog.Logger
	// Dataplane and Announcer replace the ones the config names (tests).
	Dataplane ipvs.Dataplane
	Announcer routing.Announcer
	// Timing is the gossip timing (default cluster.LANTiming).
	Timing cluster.Timing
	// JoinWait is how long start waits for a seed before it goes on alone
	// (default 5s).
	JoinWait time.Duration
	// Coalesce is how long the loop gathers a burst of inputs before it
	// acts (default 20ms).
	Coalesce time.Duration
	// Resync is how often the loop reconciles IPVS even without an input
	// (ends drains, checks that IPVS answers; default 5s).
	Resync time.Duration
	// FullRead is how often a reconcile reads the whole IPVS table from the
	// kernel (and repairs what was changed behind anycastd's back); in
	// between it works from what it applied (ipvs.Reconciler.SetFullRead;
	// default 30s, negative: every reconcile).
	FullRead time.Duration
	// SelfEvery is how often the built-in self checks are evaluated
	// (default 1s); an operator check's change is acted on at once.
	SelfEvery time.Duration
	// BehindGrace: see Input.BehindGrace (default 3s).
	BehindGrace time.Duration
	// ActiveStepHold is how long the active set holds each one-director
	// step when max_active falls (default 5s; see ActiveSize).
	ActiveStepHold time.Duration
	// ApplyWait is how long Apply waits for every member to confirm a
	// change (default 8s: anyctl waits 10s for an answer).
	ApplyWait time.Duration
	Now       func() time.Time
}

// Node is one director: it owns the control loop that joins config,
// cluster view and health into IPVS and routing changes.
type Node struct {
	opts    Options
	log     *slog.Logger
	cl      *cluster.Cluster
	mon     *health.Monitor
	self    *health.Self
	rec     *ipvs.Reconciler
	dp      ipvs.Dataplane
	host    *ipvs.Host
	ann     routing.Announcer
	dns     *dns.Server
	metrics *metrics
	started time.Time
	// lock is the state dir's lock, held until Run returns.
	lock *os.File

	wake  chan struct{}
	abort chan struct{}
	once  sync.Once
	// ready is closed after the first turn of the loop (config settled,
	// IPVS reconciled, routing told).
	ready     chan struct{}
	readyOnce sync.Once

	// applyMu serialises local config changes (reload, API apply).
	applyMu sync.Mutex

	mu sync.Mutex
	// cfg is the local config without its services: those live in the
	// cluster's document (services, below) once settled, and in memory
	// only once.
	cfg *configs.Config
	// fileServices are the config file's services until settleServices
	// has decided what to do with them (settled); fileHash is their hash,
	// kept to tell whether a reload changed them.
	fileServices []configs.Service
	fileHash     string
	settled      bool
	drain        drainState
	// drainUnsaved is the operator's drain change still to be saved, and
	// drainSaveErr why the last save failed; drainSaveMu orders saves.
	drainUnsaved *drainState
	drainSaveErr string
	drainSaveMu  sync.Mutex
	stopping     bool
	snap         Snapshot
	selfSt       health.SelfStatus
	// services and the document they came from, as applied.
	services   []configs.Service
	appliedDoc *cluster.Document
	docErr     string // why the cluster's newest document is not applied
	behindAt   time.Time
	hostErr    string
	ipvsErr    string
	lastFailed map[ipvs.ServiceKey]string
	// healthChanged is when a backend of each service last went up or
	// down (noteHealth), for Plan's settling hold.
	healthChanged map[string]time.Time
	// ipvsReadFailing is when reads of the IPVS table began to fail
	// (zero: the last one worked); retryAt wakes the loop to read again.
	ipvsReadFailing time.Time
	retryAt         time.Time
	lastIPVSErr     string
	// activeSize is the active set's size as last applied.
	activeSize ActiveSize
}

type drainState struct {
	Drained bool      `json:"drained"`
	Reason  string    `json:"reason,omitempty"`
	Since   time.Time `json:"since"`
}

// Snapshot is what the loop decided last, for the API.
type Snapshot struct {
	Desired   Desired
	Reconcile ReconcileInfo
	At        time.Time
}

// ReconcileInfo is what the last IPVS reconcile did.
type ReconcileInfo struct {
	At       time.Time     `json:"at"`
	Duration time.Duration `json:"duration_ns"`
	Ops      int           `json:"ops"`
	Errors   []string      `json:"errors,omitempty"`
	// SaveError is why the IPVS ownership record could not be saved
	// (retried every turn; the table itself was reconciled).
	SaveError string   `json:"save_error,omitempty"`
	Foreign   []string `json:"foreign,omitempty"`
	Draining  int      `json:"draining"`
	// Loops counts the control loop's turns since start.
	Loops uint64 `json:"loops"`
}

// New builds a director from a valid config: it opens the state dir, the
// dataplane, the IPVS ownership record and the cluster (loading the last
// applied config document), but changes nothing yet; Run does.
func New(o Options) (*Node, error) {
	cfg := o.Config
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	o.JoinWait = cmp.Or(o.JoinWait, 5*time.Second)
	o.Coalesce = cmp.Or(o.Coalesce, 20*time.Millisecond)
	o.SelfEvery = cmp.Or(o.SelfEvery, time.Second)
	o.Resync = cmp.Or(o.Resync, 5*time.Second)
	o.FullRead = cmp.Or(o.FullRead, 30*time.Second)
	o.BehindGrace = cmp.Or(o.BehindGrace, 3*time.Second)
	o.ActiveStepHold = cmp.Or(o.ActiveStepHold, 5*time.Second)
	o.ApplyWait = cmp.Or(o.ApplyWait, 8*time.Second)
	if o.Timing == (cluster.Timing{}) {
		o.Timing = cluster.LANTiming
	}
	if err := os.MkdirAll(cfg.Node.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	lock, err := lockStateDir(cfg.Node.StateDir)
	if err != nil {
		return nil, err
	}
	built := false
	defer func() {
		if !built {
			lock.Close()
		}
	}()
	hash, err := cluster.ServicesHash(cfg.Services)
	if err != nil {
		return nil, err
	}
	local := *cfg
	local.Services = nil
	o.Config = nil // held once, as n.cfg
	n := &Node{opts: o, log: o.Log, cfg: &local, fileServices: cfg.Services, fileHash: hash, lock: lock,
		wake: make(chan struct{}, 1), abort: make(chan struct{}), ready: make(chan struct{}),
		started: o.Now(), lastFailed: map[ipvs.ServiceKey]string{}}

	n.dp = o.Dataplane
	if n.dp == nil {
		switch cfg.Node.Dataplane {
		case configs.DataplaneMemory:
			n.dp = ipvs.NewMemory()
			n.log.Warn("IPVS is simulated in memory (node.dataplane: memory): this director announces and gossips but balances no traffic")
		default:
			k, err := ipvs.OpenKernel("")
			if err != nil {
				return nil, fmt.Errorf("IPVS: %w (on a kernel without IPVS, node.dataplane: memory runs the director without balancing)", err)
			}
			n.dp = k
			h, err := ipvs.OpenHost(filepath.Join(cfg.Node.StateDir, "host.json"))
			if err != nil {
				return nil, err
			}
			n.host = h
		}
	}
	rec, err := ipvs.NewReconciler(n.dp, filepath.Join(cfg.Node.StateDir, "ipvs-owned.json"))
	if err != nil {
		return nil, err
	}
	rec.SetFullRead(max(o.FullRead, 0))
	n.rec = rec

	n.ann = o.Announcer
	if n.ann == nil {
		switch cfg.Routing.Mode {
		case configs.ModeBGP:
			n.ann = bgp.New(cfg.Routing.BGP, n.log.With("part", "bgp"))
		case configs.ModeKernel:
			n.ann = kernel.New(cfg.Routing.Kernel, n.log.With("part", "kernel-routes"))
		case configs.ModeVRRP:
			r, err := vrrp.New(cfg.Routing.VRRP, n.log.With("part", "vrrp"))
			if err != nil {
				return nil, err
			}
			n.ann = r
		default:
			return nil, fmt.Errorf("routing.mode %s is not available in this build yet (bgp, kernel and vrrp are; dns runs beside vrrp with routing.dns.enabled)", cfg.Routing.Mode)
		}
	}
	if cfg.Routing.DNS.Enabled {
		s, err := dns.New(cfg.Routing.DNS, n.log.With("part", "dns"))
		if err != nil {
			return nil, err
		}
		n.dns = s
	}

	keys, err := cluster.DecodeKeys(cfg.Cluster.Keys)
	if err != nil {
		return nil, err
	}
	seeds := cluster.SeedAddrs(cfg.Cluster.Seeds, cfg.Cluster.Port)
	n.cl, err = cluster.New(cluster.Options{
		Name: cfg.Node.Name, Bind: cfg.Cluster.Bind, Port: cfg.Cluster.Port,
		Advertise: cfg.Cluster.Advertise, Seeds: seeds, Keys: keys,
		StateDir: cfg.Node.StateDir, Log: n.log.With("part", "cluster"), Timing: o.Timing, Now: o.Now,
	})
	if err != nil {
		return nil, err
	}

	n.mon = health.NewMonitor(n.log.With("part", "health"), cfg.Health.Concurrency)
	n.self = health.NewSelf(n.log.With("part", "self"))
	// IPVS reachable: the outcome of the loop's last read of the table
	// (every reconcile reads it), not a read of its own: with 10,000
	// destinations a read is not free.
	n.self.AddCheck("ipvs", func(context.Context) error {
		n.mu.Lock()
		defer n.mu.Unlock()
		if n.ipvsErr != "" {
			return errors.New("IPVS unreachable: " + n.ipvsErr)
		}
		return nil
	})
	n.self.AddCheck("config", n.configCheck)
	if cfg.Health.Self.Uplink != "" {
		n.self.AddCheck("uplink", health.UplinkCheck(cfg.Health.Self.Uplink))
	}
	if err := n.self.SetOperatorChecks(cfg.Health.Self.Checks); err != nil {
		return nil, err
	}
	n.metrics = newMetrics(n)
	if d, err := readJSON[drainState](n.statePath("drain.json")); err != nil {
		return nil, err
	} else if d != nil {
		n.drain = *d
		if d.Drained {
			n.log.Warn("starting drained, as the operator left it", "reason", d.Reason, "since", d.Since)
		}
	}
	built = true
	return n, nil
}

// lockStateDir takes the state dir's lock: two daemons on one state dir
// overwrite each other's files (one reverted a cluster-wide apply on its
// next start). The lock is the kernel's (flock), so it goes with the
// process however it ends.
func lockStateDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state dir lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(f.Name())
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("state dir %s is in use by another anycastd (%s): one state dir per daemon", dir, cmp.Or(strings.TrimSpace(string(holder)), "pid unknown"))
		}
		return nil, fmt.Errorf("state dir lock: %w", err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(fmt.Sprintf("pid %d\n", os.Getpid())), 0)
	return f, nil
}

func (n *Node) statePath(name string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return filepath.Join(n.cfg.Node.StateDir, name)
}

// Cluster is the node's cluster membership (for the API and tests).
func (n *Node) Cluster() *cluster.Cluster { return n.cl }

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

// Wake asks the loop to run (coalesced).
func (n *Node) Wake() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// Ready is closed once the director has settled its config, reconciled
// IPVS and told routing what to announce for the first time.
func (n *Node) Ready() <-chan struct{} { return n.ready }

// Alive reports whether the control loop turned within d (it turns at
// least every Resync): what a watchdog should check.
func (n *Node) Alive(d time.Duration) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return !n.snap.At.IsZero() && n.opts.Now().Sub(n.snap.At) < d
}

// Resync is the loop's longest quiet time.
func (n *Node) Resync() time.Duration { return n.opts.Resync }

// Abort skips the graceful-shutdown hold of a stopping Run (a second
// SIGTERM): withdraw now and exit.
func (n *Node) Abort() { n.once.Do(func() { close(n.abort) }) }

// Run runs the director until ctx ends, then drains (GRACEFUL_SHUTDOWN for
// routing.bgp.graceful_shutdown), withdraws, leaves the cluster and
// returns. The IPVS table is left in place so that a restart drops no
// connection.
func (n *Node) Run(ctx context.Context) error {
	defer n.lock.Close() // last: after everything that writes the state dir
	var wg sync.WaitGroup
	defer wg.Wait()
	bg, stopBG := context.WithCancel(context.Background())
	defer stopBG()
	errc := make(chan error, 4)
	run := func(name string, f func(context.Context) error) {
		wg.Go(func() {
			if err := f(bg); err != nil && !errors.Is(err, context.Canceled) {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		})
	}
	// Routing is stopped last: it withdraws when its context ends.
	annCtx, stopAnn := context.WithCancel(context.Background())
	annDone := make(chan error, 1)
	go func() { annDone <- n.ann.Run(annCtx) }()
	defer func() {
		stopAnn()
		if err := <-annDone; err != nil && !errors.Is(err, context.Canceled) {
			n.log.Warn("routing stopped with an error", "err", err)
		}
	}()
	clusterCtx, leave := context.WithCancel(context.Background())
	clusterDone := make(chan struct{})
	var clusterErr error
	go func() {
		defer close(clusterDone)
		clusterErr = n.cl.Run(clusterCtx)
	}()
	defer func() {
		leave()
		<-clusterDone
	}()
	select {
	case <-n.cl.Ready():
	case <-clusterDone:
		// Gossip could not start (its port taken): nothing else runs.
		return clusterErr
	case <-ctx.Done():
		return nil
	}
	run("health", n.mon.Run)
	run("self health", n.self.Run)
	if n.dns != nil {
		run("dns", n.dns.Run)
	}

	select {
	case <-n.cl.Joined():
	case <-time.After(n.opts.JoinWait):
		n.log.Warn("no seed answered yet; starting with the config this director has", "waited", n.opts.JoinWait)
	case <-ctx.Done():
		return nil
	}
	if err := n.settleServices(); err != nil {
		return err
	}
	return n.loop(ctx, errc)
}

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

// ErrDrainNotSaved is Drain's error when the drain took effect but could
// not be saved for the next start (it is saved again on every turn).
var ErrDrainNotSaved = errors.New("in effect, but not saved")

// Drain sets or clears the operator's drain flag (kept across restarts).
// The flag takes effect at once, whatever the disk says: when it cannot be
// saved, Drain returns ErrDrainNotSaved (wrapped) and the loop saves it
// again on every turn until it can.
func (n *Node) Drain(drained bool, reason string) error {
	n.mu.Lock()
	if n.drain.Drained == drained {
		n.mu.Unlock()
		return n.saveDrain()
	}
	d := drainState{Drained: drained, Reason: reason, Since: n.opts.Now()}
	n.drain, n.drainUnsaved = d, &d
	n.mu.Unlock()
	if drained {
		n.log.Warn("drained by the operator", "reason", reason)
	} else {
		n.log.Info("undrained by the operator")
	}
	n.Wake()
	return n.saveDrain()
}

// saveDrain writes the operator's last drain change if it is not saved
// yet. The drain of a stopping daemon is not the operator's and is never
// saved.
func (n *Node) saveDrain() error {
	n.drainSaveMu.Lock()
	defer n.drainSaveMu.Unlock()
	n.mu.Lock()
	d := n.drainUnsaved
	path := filepath.Join(n.cfg.Node.StateDir, "drain.json")
	n.mu.Unlock()
	if d == nil {
		return nil
	}
	b, _ := json.Marshal(d)
	err := atomicfile.Write(path, b, 0o600)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.drainUnsaved != d {
		return nil // a newer change is on its way
	}
	if err != nil {
		msg := fmt.Sprintf("%v: %v", ErrDrainNotSaved, err)
		if n.drainSaveErr != msg {
			n.log.Error("the drain flag could not be saved; it is in effect and saved again on every turn", "err", err)
		}
		n.drainSaveErr = msg
		return fmt.Errorf("%w: %v", ErrDrainNotSaved, err)
	}
	n.drainUnsaved, n.drainSaveErr = nil, ""
	return nil
}

// ErrLost is Apply's error when another change won: the cluster took
// another document of the same version (two applies at once on two
// directors, both on the same base), or a newer one before every member
// confirmed this one.
var ErrLost = errors.New("another change won")

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
		if m.Name == self || (m.State != cluster.StateAlive && m.State != cluster.StateSuspect) || m.Bad != "" {
			continue
		}
		if m.Meta.ConfigVersion != d.Version || m.Meta.ConfigHash != d.Short() {
			out = append(out, m.Name)
		}
	}
	return out, refusedHere
}

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
				cfg, d, doc := n.cfg, n.snap.Desired, n.appliedDoc
				n.mu.Unlock()
				n.publish(cfg, d, doc)
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
	changed := make(map[string]time.Time, len(services))
	for _, s := range services {
		if t, ok := n.healthChanged[s.Name]; ok {
			changed[s.Name] = t
		}
	}
	maps.DeleteFunc(n.healthChanged, func(svc string, _ time.Time) bool { _, ok := changed[svc]; return !ok }) // services gone
	n.mu.Unlock()
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
		Backends: n.mon.States(), Failed: failed, Now: now,
		GracefulShutdown: cfg.Routing.BGP.GracefulShutdown, BehindGrace: n.opts.BehindGrace,
		Announced: announced, Settling: settling, HealthChanged: changed,
	}
	if cfg.Routing.Mode != configs.ModeBGP {
		// GRACEFUL_SHUTDOWN is a BGP community: elsewhere a drain
		// withdraws at once.
		in.GracefulShutdown = 0
	} else {
		in.Attrs = routing.Announcement{Communities: cfg.Routing.BGP.Communities,
			LargeCommunities: cfg.Routing.BGP.LargeCommunities, MED: cfg.Routing.BGP.MED}
	}
	select {
	case <-n.abort:
		in.GracefulShutdown = 0
	default:
	}
	d := Plan(in)
	if !sizeWake.IsZero() {
		d.WakeAt = earliest(d.WakeAt, sizeWake)
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
	// 2. IPVS, and the host settings it needs.
	n.setupHost(cfg, services)
	rinfo, newFailed := n.reconcile(ctx, d.Table, now)
	if !maps2Equal(failed, newFailed) {
		in.Failed = newFailed
		d = Plan(in)
		if !sizeWake.IsZero() {
			d.WakeAt = earliest(d.WakeAt, sizeWake)
		}
	}
	// 3. Announce.
	if err := n.ann.Set(ctx, d.Announce); err != nil {
		n.log.Warn("announce", "err", err)
	}
	n.mu.Lock()
	prev := n.snap.Desired
	n.lastFailed = newFailed
	n.activeSize = size
	rinfo.Loops = n.snap.Reconcile.Loops + 1
	n.metrics.loops.Inc()
	// The table is the reconciler's now (and the kernel's); keeping a
	// copy here would only hold 10,000 destinations twice.
	d.Table = ipvs.Table{}
	n.snap = Snapshot{Desired: d, Reconcile: rinfo, At: now}
	n.mu.Unlock()
	n.logChanges(prev, d)
	n.publish(cfg, d, doc)
	n.updateDNS(cfg, d, members)
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
	services, err := doc.Decode()
	if err == nil {
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
	n.services, n.appliedDoc = services, doc
	n.log.Info("cluster config adopted", "version", doc.Version, "hash", doc.Short(), "author", doc.Author, "services", len(services))
}

func (n *Node) healthSpecs(services []configs.Service) []health.Spec {
	var specs []health.Spec
	for _, s := range services {
		if s.Health.Type == configs.CheckNone {
			continue
		}
		for _, b := range s.Backends {
			specs = append(specs, health.Spec{ID: TargetID(s.Name, b), Check: s.Health, Target: CheckTarget(s, b)})
		}
	}
	return specs
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

func (n *Node) publish(cfg *configs.Config, d Desired, doc *cluster.Document) {
	st := n.ann.Status()
	m := cluster.Meta{
		Priority: cfg.Cluster.Priority, MaxActive: cfg.Cluster.MaxActive, Healthy: d.Eligible, Reason: d.Reason,
		AnnouncedCount: len(st.Announced), Mode: cfg.Routing.Mode, Addrs: cfg.Node.Addresses,
		Started: n.started.Unix(), Build: n.opts.Build,
	}
	n.mu.Lock()
	m.Drained = n.drain.Drained
	m.ActiveSize = n.activeSize.Size
	n.mu.Unlock()
	if doc != nil {
		m.ConfigVersion, m.ConfigHash = doc.Version, doc.Short()
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

func readJSON[T any](path string) (*T, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("%s is corrupt: %w", path, err)
	}
	return &v, nil
}
