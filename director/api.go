package director

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/anycastd/anycastd/api"
	"github.com/anycastd/anycastd/cluster"
	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/health"
	"github.com/anycastd/anycastd/ipvs"
	"github.com/anycastd/anycastd/routing"
	"golang.org/x/net/netutil"
)

// The local API: JSON over HTTP on a unix socket (and, if configured, TCP
// with TLS). Its wire types are package api's; anyctl decodes them.

// Handler returns the API's HTTP handler.
func (n *Node) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/members", func(w http.ResponseWriter, r *http.Request) { reply(w, http.StatusOK, n.MembersView()) })
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) { reply(w, http.StatusOK, n.StatusView()) })
	mux.HandleFunc("GET /v1/services", func(w http.ResponseWriter, r *http.Request) {
		v, err := n.ServicesView(r.Context())
		if err != nil {
			fail(w, http.StatusInternalServerError, err)
			return
		}
		reply(w, http.StatusOK, v)
	})
	mux.HandleFunc("GET /v1/announcements", func(w http.ResponseWriter, r *http.Request) {
		st := n.ann.Status()
		reply(w, http.StatusOK, api.AnnouncementsResponse{Mode: st.Mode, Peers: peerViews(st.Peers),
			Announced: convert(st.Announced, func(a routing.Announcement) api.Announcement { return api.Announcement(a) }), VIPs: n.vipViews()})
	})
	mux.HandleFunc("GET /v1/config", func(w http.ResponseWriter, r *http.Request) { reply(w, http.StatusOK, n.ConfigView()) })
	mux.HandleFunc("POST /v1/config", func(w http.ResponseWriter, r *http.Request) {
		var req api.ApplyRequest
		if err := decodeBody(r, &req); err != nil {
			fail(w, http.StatusBadRequest, err)
			return
		}
		configs.CanonicalizeServices(req.Services)
		if err := configs.ValidateServices(req.Services); err != nil {
			fail(w, http.StatusUnprocessableEntity, err)
			return
		}
		var doc *cluster.Document
		var pending []string
		var err error
		if req.Now {
			doc, pending, err = n.Apply(r.Context(), req.BaseVersion, req.BaseHash, req.Services)
		} else {
			doc, err = n.StartRollout(req.BaseVersion, req.BaseHash, req.Services)
		}
		if err != nil {
			code := http.StatusInternalServerError
			switch {
			case errors.Is(err, cluster.ErrConflict) || errors.Is(err, ErrLost) || errors.Is(err, cluster.ErrRollout):
				code = http.StatusConflict // GET /v1/config shows the winner
			case errors.Is(err, ErrNotStaged):
				code = http.StatusPreconditionFailed
			}
			fail(w, code, err)
			return
		}
		resp := n.ConfigView()
		resp.ConfigInfo = api.ConfigInfo{Version: doc.Version, Hash: doc.Hash, Author: doc.Author, Time: doc.Time, Services: len(req.Services)}
		resp.Services = nonNil(req.Services)
		resp.Pending = pending
		resp.Rollout = n.rolloutView(doc)
		reply(w, http.StatusOK, resp)
	})
	mux.HandleFunc("POST /v1/drain", func(w http.ResponseWriter, r *http.Request) {
		var req api.DrainRequest
		if err := decodeBody(r, &req); err != nil {
			fail(w, http.StatusBadRequest, err)
			return
		}
		// Not saved is still done: the view says so (save_error).
		if err := n.Drain(true, strings.TrimSpace(req.Reason)); err != nil && !errors.Is(err, ErrDrainNotSaved) {
			fail(w, http.StatusInternalServerError, err)
			return
		}
		reply(w, http.StatusOK, n.drainView())
	})
	mux.HandleFunc("POST /v1/undrain", func(w http.ResponseWriter, r *http.Request) {
		if err := n.Drain(false, ""); err != nil && !errors.Is(err, ErrDrainNotSaved) {
			fail(w, http.StatusInternalServerError, err)
			return
		}
		reply(w, http.StatusOK, n.drainView())
	})
	// Go's profiler, for the unix socket only (root): what an operator
	// or a developer needs when a director uses more CPU or memory than
	// it should (curl --unix-socket SOCK http://x/debug/pprof/heap).
	mux.Handle("GET /metrics", n.MetricsHandler())
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fail(w, http.StatusNotFound, fmt.Errorf("no such API call: %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// convert maps a domain slice to its wire form (never nil: JSON's []).
func convert[S, D any](s []S, f func(S) D) []D {
	out := make([]D, 0, len(s))
	for _, v := range s {
		out = append(out, f(v))
	}
	return out
}

// peerViews are the routing sessions in the API's form.
func peerViews(ps []routing.Peer) []api.Peer {
	return convert(ps, func(p routing.Peer) api.Peer { return api.Peer(p) })
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// decodeBody reads a JSON request body strictly: at most 16 MiB, unknown
// fields refused, one value.
func decodeBody(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20+1))
	if err != nil {
		return fmt.Errorf("read request: %w", err)
	}
	if len(body) > 16<<20 {
		return errors.New("request body larger than 16 MiB")
	}
	if len(bytes.TrimSpace(body)) == 0 {
		body = []byte("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("request body: %w", err)
	}
	if dec.More() {
		return errors.New("request body: more than one JSON value")
	}
	return nil
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func fail(w http.ResponseWriter, code int, err error) {
	resp := api.ErrorResponse{Error: err.Error()}
	// Only a config's field errors are "an invalid config"; FieldErrors
	// would dress up any error as one (a 401, a 404, a bad drain body).
	var fe *configs.FieldError
	if !errors.As(err, &fe) {
		reply(w, code, resp)
		return
	}
	if fes := configs.FieldErrors(err); len(fes) > 0 {
		resp.Error = fmt.Sprintf("invalid services config (%d problems)", len(fes))
		for _, fe := range fes {
			resp.Problems = append(resp.Problems, fe.Error())
		}
	}
	reply(w, code, resp)
}

// electedMembers is the gossip's members with this director's own entry
// as the last plan had it (Desired.Me: its drain, priority and eligibility
// first hand, not the gossip's echo), and the roles an election over them
// gives: the same as Plan's.
func electedMembers(gossip []cluster.Member, d Desired, size int) ([]cluster.Member, map[string]cluster.Role) {
	members := gossip
	if d.Me.Name != "" {
		members = WithLocal(gossip, d.Me)
		slices.SortFunc(members, func(a, b cluster.Member) int { return strings.Compare(a.Name, b.Name) })
	}
	return members, cluster.Elect(members, size)
}

// MembersView is the cluster as this director sees it, with roles.
func (n *Node) MembersView() api.MembersResponse {
	n.mu.Lock()
	cfg, d := n.cfg, n.snap.Desired
	n.mu.Unlock()
	n.mu.Lock()
	size := n.activeSize.Size
	n.mu.Unlock()
	if size == 0 {
		size = cfg.Cluster.MaxActive
	}
	members, roles := electedMembers(n.cl.Members(), d, size)
	out := api.MembersResponse{Self: cfg.Node.Name, MaxActive: size}
	for _, m := range members {
		v := api.MemberView{Name: m.Name, State: string(m.State), Role: string(roles[m.Name]), Healthy: m.Meta.Healthy,
			Reason: m.Meta.Reason, Drained: m.Meta.Drained, Priority: m.Meta.Priority,
			Why:           convert(m.Ineligible(), func(w cluster.Ineligibility) string { return string(w) }),
			ConfigVersion: m.Meta.ConfigVersion, ConfigHash: m.Meta.ConfigHash, Applied: m.Meta.Applied, Announced: nonNil(m.Meta.Announced),
			Announcing: m.Meta.AnnouncedCount, PeersUp: m.Meta.PeersUp, Peers: m.Meta.Peers, Mode: m.Meta.Mode,
			Addrs: m.Meta.Addrs, Since: m.Since, Build: m.Meta.Build, Bad: m.Bad, Self: m.Name == cfg.Node.Name}
		if m.Addr.IsValid() {
			v.Addr = m.Addr.String()
		}
		if m.Meta.Started > 0 {
			v.Started = time.Unix(m.Meta.Started, 0).UTC()
		}
		if v.Self {
			v.Role = string(d.Role)
		}
		out.Members = append(out.Members, v)
	}
	return out
}

func (n *Node) drainView() api.DrainView {
	n.mu.Lock()
	defer n.mu.Unlock()
	return api.DrainView{Drained: n.drain.Drained, Reason: n.drain.Reason, Since: n.drain.Since, SaveError: n.drainSaveErr}
}

func (n *Node) vipViews() []api.VIPView {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := []api.VIPView{}
	for _, v := range n.snap.Desired.VIPs {
		out = append(out, api.VIPView{VIP: v.VIP, Announced: v.Announced, GracefulShutdown: v.GracefulShutdown,
			Reason: v.Reason, Why: convert(v.Why, func(w Why) string { return string(w) }), Services: v.Services})
	}
	return out
}

func (n *Node) configInfo() api.ConfigInfo {
	n.mu.Lock()
	doc, services, docErr, applied := n.appliedDoc, n.services, n.docErr, n.appliedHash
	n.mu.Unlock()
	ci := api.ConfigInfo{Services: len(services), Error: docErr}
	if err := n.cl.SaveError(); err != nil {
		ci.SaveError = err.Error()
	}
	if doc != nil {
		ci.Version, ci.Hash, ci.Author, ci.Time = doc.Version, doc.Hash, doc.Author, doc.Time
		if applied != doc.Hash {
			ci.Applied = applied
		}
	}
	return ci
}

// ConfigView is the newest cluster config here (see api.ConfigResponse).
func (n *Node) ConfigView() api.ConfigResponse {
	ci := n.configInfo()
	n.mu.Lock()
	services := n.services
	n.mu.Unlock()
	resp := api.ConfigResponse{ConfigInfo: ci, AppliedVersion: ci.Version, Services: nonNil(services)}
	// The cluster's config is its newest document's services (during a
	// rollout the new ones, whether or not this director runs them yet).
	if doc := n.cl.Document(); !doc.IsZero() && (doc.Version != ci.Version || doc.Hash != ci.Hash || doc.InProgress()) {
		if ss, err := doc.Decode(); err == nil {
			resp.ConfigInfo = api.ConfigInfo{Version: doc.Version, Hash: doc.Hash, Author: doc.Author, Time: doc.Time,
				Services: len(ss), Error: ci.Error, SaveError: ci.SaveError}
			resp.Services = nonNil(ss)
		}
		resp.Rollout = n.rolloutView(doc)
	} else if !doc.IsZero() {
		resp.Rollout = n.rolloutView(doc)
	}
	return resp
}

// rolloutView is doc's rollout with the reports of the directors it
// reached (nil: the document came without one).
func (n *Node) rolloutView(doc *cluster.Document) *api.RolloutView {
	if doc == nil || doc.Rollout == nil {
		return nil
	}
	r := doc.Rollout
	v := &api.RolloutView{ID: r.ID, Stage: string(r.Stage), Reached: nonNil(slices.Clone(r.Reached)), Hold: r.Hold, Started: r.Started,
		Outcome: string(r.Outcome), Reason: r.Reason, PreviousHash: doc.PreviousHash}
	if !doc.InProgress() {
		return v
	}
	for _, m := range n.cl.Members() {
		if rep := m.Meta.Rollout; rep != nil && rep.ID == r.ID && slices.Contains(r.Reached, m.Name) {
			if v.Reports == nil {
				v.Reports = map[string]api.RolloutReport{}
			}
			v.Reports[m.Name] = api.RolloutReport{State: string(rep.State), Until: rep.Until, Problems: rep.Problems}
		}
	}
	return v
}

// StatusView is this director's state.
func (n *Node) StatusView() api.StatusResponse {
	st := n.ann.Status()
	mv := n.MembersView()
	n.mu.Lock()
	cfg, snap, selfSt, stopping, size, cs := n.cfg, n.snap, n.selfSt, n.stopping, n.activeSize, n.connSync
	var tables *api.TablesView
	if len(snap.Tables) > 0 {
		tables = &api.TablesView{Fingerprints: snap.Tables, Compared: snap.TablesCheck.Compared, Differ: snap.TablesCheck.Differ,
			Outvoted: snap.TablesCheck.Outvoted, Repairs: n.tableRepairs, LastRepair: n.tableRepairAt}
	}
	n.mu.Unlock()
	var csv *api.ConnSyncView
	if cs.managed {
		csv = &api.ConnSyncView{Daemons: convert(cs.running, ipvs.SyncDaemon.String), Error: cs.err}
	}
	counts := map[string]int{}
	for _, m := range mv.Members {
		counts[m.Role]++
	}
	return api.StatusResponse{
		Name: cfg.Node.Name, Build: n.opts.Build, Started: n.started.UTC(), Mode: cfg.Routing.Mode,
		Dataplane: cfg.Node.Dataplane, Role: string(snap.Desired.Role), Eligible: snap.Desired.Eligible,
		Reason: snap.Desired.Reason, Drain: n.drainView(), SelfChecks: convert(selfSt.Checks, func(c health.CheckStatus) api.CheckStatus { return api.CheckStatus(c) }),
		Config: n.configInfo(), VIPs: n.vipViews(), Peers: peerViews(st.Peers), Reconcile: snap.Reconcile,
		Members: counts, ActiveSize: api.ActiveSize(size), Stopping: stopping, ConnSync: csv, Foreign: snap.Reconcile.Foreign,
		Tables: tables,
	}
}

// ServicesView is every service with its backends, their health here and
// their entries in IPVS.
func (n *Node) ServicesView(ctx context.Context) (api.ServicesResponse, error) {
	n.mu.Lock()
	services, d, vd := n.services, n.snap.Desired, n.verdicts
	n.mu.Unlock()
	table, err := n.dp.Table(ctx)
	if err != nil {
		return api.ServicesResponse{}, fmt.Errorf("read IPVS: %w", err)
	}
	idx := table.Index()
	announced := map[netip.Addr]bool{}
	for _, v := range d.VIPs {
		announced[v.VIP] = v.Announced
	}
	out := api.ServicesResponse{Config: n.configInfo(), Services: []api.ServiceView{}}
	for _, s := range services {
		sv := api.ServiceView{Name: s.Name, VIP: s.VIP, Port: s.Port, FWMark: s.FWMark, Scheduler: s.Scheduler,
			Forwarding: s.Forwarding, Check: s.Health.Type, Quorum: s.Quorum, Announced: announced[s.VIP],
			FailOpen: slices.Contains(vd.FailOpen, s.Name)}
		if s.FWMark == 0 {
			sv.Protocol = s.Protocol
		}
		sv.Up = d.Up[s.Name] // as the quorum rule counted them
		k := IPVSService(s).ServiceKey
		is, inIPVS := idx[k]
		sv.InIPVS = inIPVS
		if inIPVS {
			sv.Conns = is.Stats.Conns
		}
		for _, b := range s.Backends {
			bv := api.BackendView{Address: b.Address, Port: b.Port, Weight: b.Weight, Forwarding: firstNonEmpty(b.Forwarding, s.Forwarding), Health: "up"}
			if s.Health.Type != configs.CheckNone {
				id := TargetID(s.Name, b)
				bv.Verdict, bv.DownVotes, bv.Voters = vd.States[id].String(), vd.DownVotes[id], vd.Voters
				bv.DisagreeSince, bv.Overridden = vd.Disagree[id], slices.Contains(vd.Overridden, id)
				hs, ok := n.mon.Status(id)
				bv.Health = health.Unknown.String()
				if ok {
					bv.Health, bv.Since, bv.Checks = hs.State.String(), hs.Since, hs.Checks
					bv.Detail, bv.LatencyMS = hs.Last.Detail, float64(hs.Last.Latency.Microseconds())/1000
					if hs.Last.Err != nil {
						bv.Error = hs.Last.Err.Error()
					}
				}
			}
			if inIPVS {
				key := ipvs.DestKey{Addr: b.Address.Unmap(), Port: uint16(b.Port)}
				if i := slices.IndexFunc(is.Destinations, func(d ipvs.Destination) bool { return d.DestKey == key }); i >= 0 {
					dd := is.Destinations[i]
					w := dd.Weight
					bv.IPVSWeight, bv.ActiveConns, bv.InactiveConns = &w, dd.ActiveConns, dd.InactiveConns
				}
			}
			sv.Backends = append(sv.Backends, bv)
		}
		out.Services = append(out.Services, sv)
	}
	return out, nil
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Serve runs the API until ctx ends: on the unix socket (mode 0600) and,
// if api.tcp.listen is set, on TCP with TLS, where a client must show a
// certificate signed by api.tcp.client_ca or the bearer token of
// api.tcp.token_file.
func (n *Node) Serve(ctx context.Context) error {
	n.mu.Lock()
	api := n.cfg.API
	n.mu.Unlock()
	h := n.Handler()
	var servers []*http.Server
	var listeners []net.Listener
	if api.Socket != "" {
		if err := os.MkdirAll(filepath.Dir(api.Socket), 0o755); err != nil {
			return fmt.Errorf("api.socket: %w", err)
		}
		if err := checkSocketDir(filepath.Dir(api.Socket)); err != nil {
			return fmt.Errorf("api.socket %s: %w", api.Socket, err)
		}
		// A socket left by a crashed daemon is in the way; one that
		// answers belongs to a running daemon.
		if c, err := net.DialTimeout("unix", api.Socket, time.Second); err == nil {
			c.Close()
			return fmt.Errorf("api.socket %s: another anycastd is listening there", api.Socket)
		}
		_ = os.Remove(api.Socket)
		old := umask(0o177)
		l, err := net.Listen("unix", api.Socket)
		umask(old)
		if err != nil {
			return fmt.Errorf("api.socket: %w", err)
		}
		if err := os.Chmod(api.Socket, 0o600); err != nil {
			l.Close()
			return fmt.Errorf("api.socket: %w", err)
		}
		listeners = append(listeners, l)
		servers = append(servers, &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute})
	}
	if api.TCP.Listen.IsValid() {
		tl, srv, err := tlsListener(api.TCP, h)
		if err != nil {
			for _, l := range listeners {
				l.Close()
			}
			return err
		}
		listeners = append(listeners, tl)
		servers = append(servers, srv)
	}
	// The servers are this function's: it waits for every one of them.
	errc := make(chan error, len(servers)+1)
	mctx, stopMetrics := context.WithCancel(ctx)
	defer stopMetrics()
	var wg sync.WaitGroup
	for i, srv := range servers {
		wg.Go(func() { errc <- srv.Serve(listeners[i]) })
	}
	if api.Metrics.IsValid() {
		wg.Go(func() { errc <- n.serveMetrics(mctx, api.Metrics.String()) })
	}
	n.log.Info("API listening", "socket", api.Socket, "tcp", api.TCP.Listen)
	var failed error
	select {
	case <-ctx.Done():
	case err := <-errc:
		// A listener that stops while the daemon runs (or the metrics
		// listener that could not bind) is a failure: the caller exits
		// non-zero, so that systemd's Restart=on-failure acts.
		if ctx.Err() != nil {
			break // stopping anyway
		}
		if err == nil || errors.Is(err, http.ErrServerClosed) {
			err = errors.New("stopped unexpectedly")
		}
		failed = fmt.Errorf("API server: %w", err)
	}
	stopMetrics()
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, srv := range servers {
		_ = srv.Shutdown(sctx)
	}
	wg.Wait()
	if api.Socket != "" {
		_ = os.Remove(api.Socket)
	}
	return failed
}

func tlsListener(c configs.APITCP, h http.Handler) (net.Listener, *http.Server, error) {
	cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("api.tcp.cert/key: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	var token []byte
	if c.TokenFile != "" {
		b, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return nil, nil, fmt.Errorf("api.tcp.token_file: %w", err)
		}
		token = bytes.TrimSpace(b)
		if len(token) < 16 {
			return nil, nil, errors.New("api.tcp.token_file: the token is shorter than 16 characters")
		}
	}
	if c.ClientCA != "" {
		pem, err := os.ReadFile(c.ClientCA)
		if err != nil {
			return nil, nil, fmt.Errorf("api.tcp.client_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, errors.New("api.tcp.client_ca: no PEM certificate in it")
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.VerifyClientCertIfGiven
	}
	authed := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ok := r.TLS != nil && len(r.TLS.VerifiedChains) > 0
		if !ok && token != nil {
			got, found := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			ok = found && subtle.ConstantTimeCompare([]byte(got), token) == 1
		}
		if !ok {
			// No keep-alive for a client that is not one of ours.
			w.Header().Set("Connection", "close")
			fail(w, http.StatusUnauthorized, errors.New("a client certificate or a bearer token is required"))
			return
		}
		if strings.HasPrefix(r.URL.Path, "/debug/") {
			fail(w, http.StatusNotFound, errors.New("the profiler is only on the unix socket"))
			return
		}
		h.ServeHTTP(w, r)
	})
	l, err := net.Listen("tcp", c.Listen.String())
	if err != nil {
		return nil, nil, fmt.Errorf("api.tcp.listen: %w", err)
	}
	// Whoever reaches the port can open connections before anyone knows
	// who they are: bound how many, and how long each may idle.
	l = netutil.LimitListener(l, apiTCPMaxConns)
	srv := &http.Server{Handler: authed, TLSConfig: tc,
		ReadHeaderTimeout: 5 * time.Second,  // also bounds the TLS handshake
		ReadTimeout:       30 * time.Second, // a body of up to 16 MiB
		WriteTimeout:      2 * time.Minute,  // a large services answer
		IdleTimeout:       30 * time.Second, // between keep-alive requests
		MaxHeaderBytes:    64 << 10,
	}
	return tls.NewListener(l, tc), srv, nil
}

// apiTCPMaxConns bounds the remote API's open connections (anyctl opens
// one per command).
const apiTCPMaxConns = 64

// checkSocketDir refuses a socket directory that another user could
// replace the socket in (and so capture `anyctl drain` and apply): the
// directory and every one above it must belong to root or to this
// process's user, and must not be writable by others, unless sticky (as
// /tmp is: then others cannot rename or remove what is not theirs).
func checkSocketDir(dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	euid := uint32(os.Geteuid())
	for d, first := dir, true; ; d, first = filepath.Dir(d), false {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil // not a Unix file system: nothing to check
		}
		mode := fi.Mode()
		switch {
		case st.Uid != 0 && st.Uid != euid:
			return fmt.Errorf("directory %s belongs to uid %d, not root: its owner could replace the socket; use a directory only root can write (e.g. /run/anycastd)", d, st.Uid)
		case mode.Perm()&0o022 != 0 && (first || mode&os.ModeSticky == 0):
			return fmt.Errorf("directory %s is writable by others (mode %04o): another user could replace the socket; use a directory only root can write (e.g. /run/anycastd)", d, mode.Perm()|stickyBits(mode))
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

func stickyBits(m os.FileMode) os.FileMode {
	if m&os.ModeSticky != 0 {
		return 0o1000
	}
	return 0
}
