package director

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/anycastd/anycastd/cluster"
	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/health"
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
	// newProbe builds the real servers' probes (tests: a director whose
	// checks of one backend fail while the others' pass); nil: health.New.
	newProbe func(configs.Check, health.Target) (health.Probe, error)
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
	// tableRepairAt is when a full read of the IPVS table was last forced
	// because the other directors outvoted its fingerprints, and
	// tableRepairs how many times (repairTable).
	tableRepairAt time.Time
	tableRepairs  uint64
	// tableOutvotedAt is since when the table has been outvoted
	// (outvotedSince).
	tableOutvotedAt time.Time
	selfSt          health.SelfStatus
	// services and the document they came from, as applied.
	services   []configs.Service
	appliedDoc *cluster.Document
	// appliedHash is the hash of the services applied: appliedDoc's, or
	// while a rollout has not reached this director the previous ones'.
	appliedHash string
	// rollout is the rollout that reached this director (nil: none), and
	// docSeen when the applied document's version was first held here
	// (a stage's timeout counts from it).
	rollout *rolloutRun
	docSeen struct {
		version uint64
		at      time.Time
	}
	docErr     string // why the cluster's newest document is not applied
	behindAt   time.Time
	hostErr    string
	connSync   connSyncState
	ipvsErr    string
	lastFailed map[ipvs.ServiceKey]string
	// healthChanged is when a backend of each service last went up or
	// down (noteHealth), for Plan's settling hold.
	healthChanged map[string]time.Time
	// verdicts are the backends' health the last turn built the table
	// from (HealthVerdicts).
	verdicts Verdicts
	// report is what this director's checks said on the last turn, as it
	// publishes it.
	report *cluster.HealthReport
	// targets is TargetSet of the applied services, and the document's
	// hash it was computed for (the loop's alone).
	targets targetSet
	// disagreeLogged are the disagreements logged (logVerdicts; the
	// loop's alone).
	disagreeLogged map[string]bool
	// ipvsReadFailing is when reads of the IPVS table began to fail
	// (zero: the last one worked); retryAt wakes the loop to read again.
	ipvsReadFailing time.Time
	retryAt         time.Time
	lastIPVSErr     string
	// activeSize is the active set's size as last applied.
	activeSize ActiveSize
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
			k.SetLogger(n.log.With("part", "ipvs"))
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

	newProbe := n.opts.newProbe
	if newProbe == nil {
		newProbe = health.New
	}
	n.mon = health.NewMonitorWith(n.log.With("part", "health"), cfg.Health.Concurrency, newProbe)
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

// Cluster is the node's cluster membership (for the API and tests).
func (n *Node) Cluster() *cluster.Cluster { return n.cl }

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

// ErrLost is Apply's error when another change won: the cluster took
// another document of the same version (two applies at once on two
// directors, both on the same base), or a newer one before every member
// confirmed this one.
var ErrLost = errors.New("another change won")
