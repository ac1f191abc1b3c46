package director

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/anycastd/anycastd/cluster"
	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/health"
	"github.com/anycastd/anycastd/ipvs"
	"github.com/anycastd/anycastd/routing"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the director's Prometheus metrics: counters the loop keeps
// (IPVS operations, reconcile durations) and a collector that reads the
// rest (membership, roles, health, announcements, sessions, IPVS counters)
// from the live state at scrape time.
type metrics struct {
	reg        *prometheus.Registry
	ipvsOps    *prometheus.CounterVec
	ipvsErrors prometheus.Counter
	ipvsDrift  prometheus.Counter
	// tableRepairs counts the full reads forced by outvoted fingerprints.
	tableRepairs prometheus.Counter
	reconcile    prometheus.Histogram
	loops        prometheus.Counter
}

func newMetrics(n *Node) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		ipvsOps: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "anycastd_ipvs_operations_total",
			Help: "IPVS operations sent to the dataplane, by kind (add-service, add-dest, update-dest, ...)."}, []string{"op"}),
		ipvsErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "anycastd_ipvs_errors_total",
			Help: "IPVS operations the dataplane refused, and failed reads of the table."}),
		ipvsDrift: prometheus.NewCounter(prometheus.CounterOpts{Name: "anycastd_ipvs_drift_total",
			Help: "Differences the periodic full read of the IPVS table found in anycastd's services from what it had applied (changed behind its back; restored)."}),
		tableRepairs: prometheus.NewCounter(prometheus.CounterOpts{Name: "anycastd_ipvs_table_repairs_total",
			Help: "Full reads of the IPVS table made because most directors hold another fingerprint of an mh (sh, dh) service's destinations than this one (at most one per 5 s while it lasts)."}),
		reconcile: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "anycastd_reconcile_duration_seconds",
			Help: "How long one IPVS reconcile (diff and apply; read of the table when it is a full read) took.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}),
		loops: prometheus.NewCounter(prometheus.CounterOpts{Name: "anycastd_loop_runs_total",
			Help: "Turns of the control loop."}),
	}
	m.reg.MustRegister(m.ipvsOps, m.ipvsErrors, m.ipvsDrift, m.tableRepairs, m.reconcile, m.loops,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&stateCollector{n: n})
	return m
}

var (
	descMembers  = prometheus.NewDesc("anycastd_members", "Members in this director's gossip view, by state.", []string{"state"}, nil)
	descRole     = prometheus.NewDesc("anycastd_role", "This director's role (1 for the current one).", []string{"role"}, nil)
	descHealthy  = prometheus.NewDesc("anycastd_self_healthy", "1 if this director's own health checks pass.", nil, nil)
	descCheck    = prometheus.NewDesc("anycastd_self_check_ok", "1 if the self check passes.", []string{"check"}, nil)
	descSyncd    = prometheus.NewDesc("anycastd_ipvs_sync_daemon_running", "1 if the kernel's IPVS connection sync daemon of this state (master, backup) runs as node.conn_sync asks (only while conn_sync manages them).", []string{"state"}, nil)
	descDrained  = prometheus.NewDesc("anycastd_drained", "1 if the operator drained this director.", nil, nil)
	descEligib   = prometheus.NewDesc("anycastd_eligible", "1 if this director may be in the active set (healthy, config current).", nil, nil)
	descConfig   = prometheus.NewDesc("anycastd_config_version", "Version of the applied cluster config.", nil, nil)
	descVIP      = prometheus.NewDesc("anycastd_vip_announced", "1 if this director announces the VIP.", []string{"vip"}, nil)
	descVIPWhy   = prometheus.NewDesc("anycastd_vip_withheld", "1 for each kind of reason why this director does not announce the VIP: unhealthy, config_behind, drained, not_in_ipvs, below_quorum, standby, not_active, settling, rejoining, table_differs (no series while it is announced).", []string{"vip", "why"}, nil)
	descPeerUp   = prometheus.NewDesc("anycastd_routing_peer_up", "1 if the routing session is established (BGP) or this router is master (VRRP).", []string{"peer", "state"}, nil)
	descFlaps    = prometheus.NewDesc("anycastd_routing_peer_flaps_total", "Times the session left established.", []string{"peer"}, nil)
	descVRRP     = prometheus.NewDesc("anycastd_vrrp_state", "1 for the VRRP instance's current state (initialize, backup, master).", []string{"vrid", "state"}, nil)
	descVRRPFl   = prometheus.NewDesc("anycastd_vrrp_master_losses_total", "Times the VRRP instance left master.", []string{"vrid"}, nil)
	descVRRPRej  = prometheus.NewDesc("anycastd_vrrp_rejected_adverts_total", "Advertisements for the VRRP instance dropped as misconfigured, by reason (version, auth, interval, addresses, vrid, malformed): a peer that is not heard, so both may be master.", []string{"vrid", "reason"}, nil)
	descBFDFl    = prometheus.NewDesc("anycastd_bfd_flaps_total", "Times this director took the BGP session with the peer down because BFD found the path failed (its own detection, or the peer's BFD reporting a failure; never an AdminDown).", []string{"peer"}, nil)
	descBFD      = prometheus.NewDesc("anycastd_bfd_up", "1 if the BFD session with the peer is up.", []string{"peer"}, nil)
	descDisagr   = prometheus.NewDesc("anycastd_backends_disagreeing", "Backends this director's checks hold down while most directors' hold them up (health.verdict cluster); overridden: held down that long (health.local_hold) and taken out of this director's table.", []string{"state"}, nil)
	descFailOpen = prometheus.NewDesc("anycastd_services_fail_open", "Services this director keeps on its own checks because the directors' shared verdict would put them below quorum and its own checks do not (health.verdict cluster).", nil, nil)
	descVoters   = prometheus.NewDesc("anycastd_backend_verdict_voters", "Directors whose health reports decide the backends' verdicts here, this one included (1: its own checks alone).", nil, nil)
	descBackend  = prometheus.NewDesc("anycastd_backend_up", "1 if the backend passes its health check here (rise/fall applied), 0 if down or not checked yet.", []string{"service", "backend"}, nil)
	descLatency  = prometheus.NewDesc("anycastd_backend_probe_latency_seconds", "Latency of the backend's last health probe.", []string{"service", "backend"}, nil)
	descProbes   = prometheus.NewDesc("anycastd_backend_probes_total", "Health probes run against the backend.", []string{"service", "backend"}, nil)
	descConns    = prometheus.NewDesc("anycastd_ipvs_connections_total", "Connections IPVS scheduled for the service (kernel counter).", []string{"service"}, nil)
	descInPkts   = prometheus.NewDesc("anycastd_ipvs_in_packets_total", "Packets IPVS received for the service (kernel counter).", []string{"service"}, nil)
	descInBytes  = prometheus.NewDesc("anycastd_ipvs_in_bytes_total", "Bytes IPVS received for the service (kernel counter).", []string{"service"}, nil)
	descOutPkts  = prometheus.NewDesc("anycastd_ipvs_out_packets_total", "Packets IPVS sent back for the service (NAT only; DR and TUN replies bypass the director).", []string{"service"}, nil)
	descOutByte  = prometheus.NewDesc("anycastd_ipvs_out_bytes_total", "Bytes IPVS sent back for the service (NAT only).", []string{"service"}, nil)
	descActive   = prometheus.NewDesc("anycastd_ipvs_backend_active_connections", "Active connections IPVS has to the backend.", []string{"service", "backend"}, nil)
	descInact    = prometheus.NewDesc("anycastd_ipvs_backend_inactive_connections", "Inactive connections IPVS has to the backend.", []string{"service", "backend"}, nil)
	descTableDif = prometheus.NewDesc("anycastd_ipvs_table_mismatches", "Other directors on the same config whose fingerprint of the service's IPVS destinations (their order and weights, which decide mh's, sh's and dh's choice of real server) differs from this director's; only services with such a scheduler have series.", []string{"service"}, nil)
	descTableOut = prometheus.NewDesc("anycastd_ipvs_table_outvoted", "1 if a strict majority of the directors on the same config hold another fingerprint of the service's IPVS destinations than this director (its table is the odd one out).", []string{"service"}, nil)
	descWeight   = prometheus.NewDesc("anycastd_ipvs_backend_weight", "The backend's weight in IPVS (0 while down or draining).", []string{"service", "backend"}, nil)
)

type stateCollector struct{ n *Node }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMembers, descRole, descHealthy, descCheck, descDrained, descEligib, descConfig, descVIP, descVIPWhy, descSyncd,
		descPeerUp, descFlaps, descVRRP, descVRRPFl, descVRRPRej, descBFD, descBFDFl, descBackend, descLatency, descProbes, descConns, descInPkts, descInBytes, descOutPkts, descOutByte,
		descActive, descInact, descWeight, descDisagr, descVoters, descFailOpen, descTableDif, descTableOut} {
		ch <- d
	}
}

func gauge(d *prometheus.Desc, v float64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func counter(d *prometheus.Desc, v float64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	states := map[cluster.State]int{cluster.StateAlive: 0, cluster.StateDead: 0, cluster.StateLeft: 0}
	for _, m := range n.cl.Members() {
		states[m.State]++
	}
	for s, k := range states {
		ch <- gauge(descMembers, float64(k), string(s))
	}
	n.mu.Lock()
	d, selfSt, drained, doc, services, cs := n.snap.Desired, n.selfSt, n.drain.Drained, n.appliedDoc, n.services, n.connSync
	vd := n.verdicts
	tables, tcheck := n.snap.Tables, n.snap.TablesCheck
	n.mu.Unlock()
	for svc := range tables {
		ch <- gauge(descTableDif, float64(len(tcheck.Differ[svc])), svc)
		ch <- gauge(descTableOut, b2f(slices.Contains(tcheck.Outvoted, svc)), svc)
	}
	ch <- gauge(descDisagr, float64(len(vd.Disagree)-len(vd.Overridden)), "held_up")
	ch <- gauge(descDisagr, float64(len(vd.Overridden)), "overridden")
	ch <- gauge(descVoters, float64(max(vd.Voters, 1)))
	ch <- gauge(descFailOpen, float64(len(vd.FailOpen)))
	if cs.managed {
		for _, w := range []ipvs.SyncState{ipvs.SyncMaster, ipvs.SyncBackup} {
			i := slices.IndexFunc(cs.want, func(d ipvs.SyncDaemon) bool { return d.State == w })
			up := i >= 0 && slices.ContainsFunc(cs.running, func(d ipvs.SyncDaemon) bool { return d.Satisfies(cs.want[i]) })
			ch <- gauge(descSyncd, b2f(up), w.String())
		}
	}
	for _, r := range []cluster.Role{cluster.RoleActive, cluster.RoleStandby, cluster.RoleIneligible} {
		ch <- gauge(descRole, b2f(d.Role == r), string(r))
	}
	ch <- gauge(descHealthy, b2f(selfSt.Healthy))
	for _, ck := range selfSt.Checks {
		ch <- gauge(descCheck, b2f(ck.OK), ck.Name)
	}
	ch <- gauge(descDrained, b2f(drained))
	ch <- gauge(descEligib, b2f(d.Eligible))
	if doc != nil {
		ch <- gauge(descConfig, float64(doc.Version))
	}
	for _, v := range d.VIPs {
		ch <- gauge(descVIP, b2f(v.Announced), v.VIP.String())
		for _, w := range v.Why {
			ch <- gauge(descVIPWhy, 1, v.VIP.String(), string(w))
		}
	}
	peerMetrics(ch, n.ann.Status())
	for _, s := range services {
		if s.Health.Type == configs.CheckNone {
			continue
		}
		for _, b := range s.Backends {
			hs, ok := n.mon.Status(TargetID(s.Name, b))
			be := b.Address.String() + ":" + strconv.Itoa(b.Port)
			if !ok {
				continue
			}
			ch <- gauge(descBackend, b2f(hs.State == health.Up), s.Name, be)
			ch <- counter(descProbes, float64(hs.Checks), s.Name, be)
			if hs.Checks > 0 {
				ch <- gauge(descLatency, hs.Last.Latency.Seconds(), s.Name, be)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	table, err := n.dp.Table(ctx)
	if err != nil {
		return
	}
	idx := table.Index()
	for _, s := range services {
		is, ok := idx[IPVSService(s).ServiceKey]
		if !ok {
			continue
		}
		ch <- counter(descConns, float64(is.Stats.Conns), s.Name)
		ch <- counter(descInPkts, float64(is.Stats.InPkts), s.Name)
		ch <- counter(descInBytes, float64(is.Stats.InBytes), s.Name)
		ch <- counter(descOutPkts, float64(is.Stats.OutPkts), s.Name)
		ch <- counter(descOutByte, float64(is.Stats.OutBytes), s.Name)
		for _, dst := range is.Destinations {
			be := dst.DestKey.String()
			ch <- gauge(descActive, float64(dst.ActiveConns), s.Name, be)
			ch <- gauge(descInact, float64(dst.InactiveConns), s.Name, be)
			ch <- gauge(descWeight, float64(dst.Weight), s.Name, be)
		}
	}
}

// peerMetrics are the routing sessions' series: BGP peers (state, flaps,
// BFD) or VRRP instances (state, master losses).
func peerMetrics(ch chan<- prometheus.Metric, st routing.Status) {
	for _, p := range st.Peers {
		peer := p.Address.String()
		if st.Mode == configs.ModeVRRP {
			peer = "vrid " + strconv.Itoa(int(p.ASN))
		}
		ch <- gauge(descPeerUp, b2f(p.Established() || p.State == "master"), peer, p.State)
		if st.Mode == configs.ModeVRRP {
			vrid := strconv.Itoa(int(p.ASN))
			for _, s := range []string{"initialize", "backup", "master"} {
				ch <- gauge(descVRRP, b2f(p.State == s), vrid, s)
			}
			ch <- counter(descVRRPFl, float64(p.Flaps), vrid)
			for _, reason := range slices.Sorted(maps.Keys(p.Rejected)) {
				ch <- counter(descVRRPRej, float64(p.Rejected[reason]), vrid, reason)
			}
		}
		if st.Mode == configs.ModeBGP {
			ch <- counter(descFlaps, float64(p.Flaps), peer)
			if p.BFD != "" {
				ch <- gauge(descBFD, b2f(p.BFD == "up"), peer)
				ch <- counter(descBFDFl, float64(p.BFDFlaps), peer)
			}
		}
	}
}

// MetricsHandler serves the metrics in Prometheus' text format.
func (n *Node) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(n.metrics.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// serveMetrics serves /metrics on api.metrics until ctx ends.
func (n *Node) serveMetrics(ctx context.Context, addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("api.metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", n.MetricsHandler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	// The shutdown is this function's: it waits for it, and it ends when
	// Serve does, whichever comes first.
	served, shut := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(shut)
		select {
		case <-ctx.Done():
		case <-served:
		}
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	n.log.Info("metrics listening", "addr", l.Addr())
	err = srv.Serve(l)
	close(served)
	<-shut
	if !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
