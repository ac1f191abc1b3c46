package api

import (
	"net/netip"
	"time"

	"github.com/anycastd/anycastd/configs"
)

// MemberView is one member as `anyctl members` shows it.
type MemberView struct {
	Name    string `json:"name"`
	Addr    string `json:"addr"`
	Self    bool   `json:"self,omitempty"`
	State   string `json:"state"`
	Role    string `json:"role"`
	Healthy bool   `json:"healthy"`
	Reason  string `json:"reason,omitempty"`
	// Why are the kinds of reasons it may not be in the active set
	// (gone, unreadable_metadata, unhealthy, drained).
	Why           []string `json:"why,omitempty"`
	Drained       bool     `json:"drained"`
	Priority      int      `json:"priority"`
	ConfigVersion uint64   `json:"config_version"`
	ConfigHash    string   `json:"config_hash,omitempty"`
	// Applied is, during a staged rollout that has not reached this
	// member, the short hash of the previous services it still applies
	// ("": it applies ConfigHash's).
	Applied    string       `json:"applied,omitempty"`
	Announced  []string     `json:"announced"`
	Announcing int          `json:"announcing"`
	PeersUp    int          `json:"peers_up"`
	Peers      int          `json:"peers"`
	Mode       string       `json:"mode,omitempty"`
	Addrs      []netip.Addr `json:"addrs,omitempty"`
	Started    time.Time    `json:"started,omitzero"`
	Since      time.Time    `json:"since,omitzero"`
	Build      string       `json:"build,omitempty"`
	Bad        string       `json:"bad,omitempty"`
}

// MembersResponse is GET /v1/members.
type MembersResponse struct {
	Self      string       `json:"self"`
	MaxActive int          `json:"max_active"`
	Members   []MemberView `json:"members"`
}

// ConfigInfo names a config document.
type ConfigInfo struct {
	Version  uint64    `json:"version"`
	Hash     string    `json:"hash"`
	Author   string    `json:"author,omitempty"`
	Time     time.Time `json:"time,omitzero"`
	Services int       `json:"services"`
	// Error says why the cluster's newest document is not applied here.
	Error string `json:"error,omitempty"`
	// SaveError says why the applied document is not saved in the state
	// dir (retried every second; it is served all the same).
	SaveError string `json:"save_error,omitempty"`
	// Applied is, while a staged rollout has not reached this director,
	// the hash of the previous services it still applies ("": Hash's).
	Applied string `json:"applied,omitempty"`
}

// VIPView is a VIP and whether this director announces it.
type VIPView struct {
	VIP              netip.Addr `json:"vip"`
	Announced        bool       `json:"announced"`
	GracefulShutdown bool       `json:"graceful_shutdown,omitempty"`
	Reason           string     `json:"reason,omitempty"`
	// Why are the kinds of Reason's parts (unhealthy, config_behind,
	// drained, not_in_ipvs, below_quorum, standby, not_active, settling,
	// rejoining, table_differs).
	Why      []string `json:"why,omitempty"`
	Services []string `json:"services"`
}

// DrainView is the operator's drain flag.
type DrainView struct {
	Drained bool      `json:"drained"`
	Reason  string    `json:"reason,omitempty"`
	Since   time.Time `json:"since,omitzero"`
	// SaveError says why the flag is not saved for the next start (it is
	// in effect, and saved again on every turn).
	SaveError string `json:"save_error,omitempty"`
}

// StatusResponse is GET /v1/status: this director.
type StatusResponse struct {
	Name       string         `json:"name"`
	Build      string         `json:"build"`
	Started    time.Time      `json:"started"`
	Mode       string         `json:"mode"`
	Dataplane  string         `json:"dataplane"`
	Role       string         `json:"role"`
	Eligible   bool           `json:"eligible"`
	Reason     string         `json:"reason,omitempty"`
	Drain      DrainView      `json:"drain"`
	SelfChecks []CheckStatus  `json:"self_checks"`
	Config     ConfigInfo     `json:"config"`
	VIPs       []VIPView      `json:"vips"`
	Peers      []Peer         `json:"peers"`
	Reconcile  ReconcileInfo  `json:"reconcile"`
	Members    map[string]int `json:"members"`
	// ActiveSize is the cluster's max_active as this director applies it.
	ActiveSize ActiveSize `json:"active_size"`
	Stopping   bool       `json:"stopping,omitempty"`
	// ConnSync is the IPVS connection synchronisation, when
	// node.conn_sync manages it.
	ConnSync *ConnSyncView `json:"conn_sync,omitempty"`
	Foreign  []string      `json:"foreign_ipvs,omitempty"`
	// Tables is how this director's IPVS table compares with the other
	// directors' for the services whose scheduler's choice depends on it
	// (mh, sh, dh); nil without such services.
	Tables *TablesView `json:"tables,omitempty"`
}

// TablesView compares this director's IPVS table with the other
// directors' where the order and weights of the destinations decide
// which real server a flow goes to (mh, sh, dh): directors whose tables
// differ send some flows to other real servers, and a flow that moves
// between them is reset.
type TablesView struct {
	// Fingerprints are this director's, by service name, of the kernel's
	// table as its reconciler knows it (the last full read with what it
	// applied since).
	Fingerprints map[string]string `json:"fingerprints"`
	// Compared is how many other directors on the same config published
	// fingerprints to compare with.
	Compared int `json:"compared"`
	// Differ lists, per service, the directors whose fingerprint differs
	// from this director's.
	Differ map[string][]string `json:"differ,omitempty"`
	// Outvoted are the services where a strict majority of the directors
	// holds another fingerprint than this one: this director reads its
	// table in full (at most every 5 s) to repair it.
	Outvoted []string `json:"outvoted,omitempty"`
	// Repairs counts those full reads; LastRepair is the last one.
	Repairs    uint64    `json:"repairs"`
	LastRepair time.Time `json:"last_repair,omitzero"`
}

// BackendView is a real server of a service as this director sees it.
type BackendView struct {
	Address    netip.Addr `json:"address"`
	Port       int        `json:"port"`
	Weight     int        `json:"weight"`
	IPVSWeight *int       `json:"ipvs_weight,omitempty"`
	Forwarding string     `json:"forwarding"`
	// Health is what this director's checks say.
	Health string    `json:"health"`
	Since  time.Time `json:"since,omitzero"`
	// Verdict is the health the table was built from (health.verdict):
	// the directors' checks by majority, DownVotes of Voters holding it
	// down (this director included).
	Verdict   string `json:"verdict,omitempty"`
	DownVotes int    `json:"down_votes,omitempty"`
	Voters    int    `json:"voters,omitempty"`
	// DisagreeSince is when this director's checks began to hold the
	// backend down while the cluster held it up; Overridden, that they
	// have for health.local_hold and it is down in this director's table.
	DisagreeSince time.Time `json:"disagree_since,omitzero"`
	Overridden    bool      `json:"overridden,omitempty"`
	Detail        string    `json:"detail,omitempty"`
	Error         string    `json:"error,omitempty"`
	LatencyMS     float64   `json:"latency_ms,omitempty"`
	Checks        uint64    `json:"checks"`
	ActiveConns   int       `json:"active_conns"`
	InactiveConns int       `json:"inactive_conns"`
}

// ServiceView is GET /v1/services' element.
type ServiceView struct {
	Name       string     `json:"name"`
	VIP        netip.Addr `json:"vip"`
	Protocol   string     `json:"protocol,omitempty"`
	Port       int        `json:"port,omitempty"`
	FWMark     uint32     `json:"fwmark,omitempty"`
	Scheduler  string     `json:"scheduler"`
	Forwarding string     `json:"forwarding"`
	Check      string     `json:"check"`
	Quorum     int        `json:"quorum"`
	Up         int        `json:"up"`
	InIPVS     bool       `json:"in_ipvs"`
	Announced  bool       `json:"announced"`
	Conns      uint64     `json:"conns"`
	// FailOpen says this director keeps the service on its own checks:
	// the directors' shared verdict would put it below its quorum, its
	// own checks do not (health.verdict cluster).
	FailOpen bool          `json:"fail_open,omitempty"`
	Backends []BackendView `json:"backends"`
}

// ServicesResponse is GET /v1/services.
type ServicesResponse struct {
	Config   ConfigInfo    `json:"config"`
	Services []ServiceView `json:"services"`
}

// AnnouncementsResponse is GET /v1/announcements.
type AnnouncementsResponse struct {
	Mode      string         `json:"mode"`
	Peers     []Peer         `json:"peers"`
	Announced []Announcement `json:"announced"`
	VIPs      []VIPView      `json:"vips"`
}

// ConfigResponse is GET /v1/config and the answer of POST /v1/config:
// the newest cluster config this director holds (what an apply is made
// against), and the version it has applied to IPVS and routing.
type ConfigResponse struct {
	ConfigInfo
	AppliedVersion uint64            `json:"applied_version"`
	Services       []configs.Service `json:"services"`
	// Pending, in the answer to an apply, are the live members that had
	// not confirmed the change when the director stopped waiting.
	Pending []string `json:"pending,omitempty"`
	// Rollout is the document's staged rollout: in progress (Services
	// are the new ones, which only the directors it reached apply), or
	// how the last one ended; nil when the document came without one.
	Rollout *RolloutView `json:"rollout,omitempty"`
}

// RolloutView is a staged rollout of the services: a warm standby first,
// then one active director, then the rest; each stage holds until the
// directors it reached report nothing worse off than under the previous
// services, else the cluster goes back to them.
type RolloutView struct {
	// ID is the version of the document that started it.
	ID uint64 `json:"id"`
	// Stage is standby, active or all; Reached the directors that run
	// the new services.
	Stage   string   `json:"stage"`
	Reached []string `json:"reached"`
	// Hold is how long a stage's directors run the new services before
	// they judge them.
	Hold    time.Duration `json:"hold_ns"`
	Started time.Time     `json:"started"`
	// Outcome is "" while in progress, rolled_out or rolled_back (with
	// Reason).
	Outcome string `json:"outcome,omitempty"`
	Reason  string `json:"reason,omitempty"`
	// PreviousHash is the hash of the services the directors not reached
	// apply (while in progress).
	PreviousHash string `json:"previous_hash,omitempty"`
	// Reports are what the directors reached say of the new services.
	Reports map[string]RolloutReport `json:"reports,omitempty"`
}

// RolloutReport is one director's verdict on the new services: holding
// (until Until), ok, or worse (with Problems).
type RolloutReport struct {
	State    string    `json:"state"`
	Until    time.Time `json:"until,omitzero"`
	Problems []string  `json:"problems,omitempty"`
}

// ApplyRequest is POST /v1/config: make Services the cluster's config if
// the cluster's config is still BaseVersion/BaseHash.
type ApplyRequest struct {
	BaseVersion uint64            `json:"base_version"`
	BaseHash    string            `json:"base_hash"`
	Services    []configs.Service `json:"services"`
	// Now applies the services on every director at once (an
	// emergency), and ends a rollout in progress. Without it the change
	// is rolled out in stages (RolloutView): the answer comes at once,
	// and GET /v1/config follows the stages.
	Now bool `json:"now,omitempty"`
}

// DrainRequest is POST /v1/drain.
type DrainRequest struct {
	Reason string `json:"reason"`
}

// ErrorResponse is the body of every error answer.
type ErrorResponse struct {
	Error string `json:"error"`
	// Problems are a config's field errors, one per line.
	Problems []string `json:"problems,omitempty"`
}

// ConnSyncView is the kernel's IPVS sync daemons as node.conn_sync keeps
// them.
type ConnSyncView struct {
	// Daemons are the running daemons ("master on eth0 sync id 7 ...").
	Daemons []string `json:"daemons"`
	// Error says why they are not as configured (flows that move
	// between directors may be reset meanwhile).
	Error string `json:"error,omitempty"`
}

// CheckStatus is one of the director's own checks (status's self_checks).
type CheckStatus struct {
	Name   string
	OK     bool
	Reason string
	// Since is when the check's verdict last changed (zero until it
	// changes once).
	Since time.Time `json:",omitzero"`
}

// Peer is a routing session (a BGP neighbour, a VRRP instance, the
// kernel's route) and its state.
type Peer struct {
	Address netip.Addr
	ASN     uint32
	// State is the session state: "established", "active", "connect", ...
	State string
	Since time.Time
	// BFD is the BFD session state ("up", "down", "init") or "" without BFD.
	BFD string
	// Flaps counts the times the session left established (BGP), or the
	// times the instance left master (VRRP).
	Flaps uint64
	// BFDFlaps counts the sessions this director took down because its
	// BFD found the path failed.
	BFDFlaps uint64
	// Reason is why the session last went down, if known.
	Reason string
	// Rejected counts the advertisements dropped as misconfigured (VRRP),
	// by reason; LastRejected says the last one.
	Rejected     map[string]uint64 `json:",omitempty"`
	LastRejected string            `json:",omitempty"`
}

// Announcement is a prefix this director announces and its attributes.
type Announcement struct {
	Prefix           netip.Prefix
	Communities      []string
	LargeCommunities []string
	MED              uint32
	GracefulShutdown bool
}

// ReconcileInfo is the last reconciliation of the IPVS table.
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

// ActiveSize is the cluster's max_active as this director applies it.
type ActiveSize struct {
	// Target is the median of the live members' configured max_active.
	Target int `json:"target"`
	// Size is what the election uses now (it falls one step at a time).
	Size int `json:"size"`
	// Since is when Size last changed.
	Since time.Time `json:"since"`
	// Disagree lists the live members configured with another value
	// than this director ("d3=6").
	Disagree []string `json:"disagree,omitempty"`
}

// Established reports whether the session is up.
func (p Peer) Established() bool { return p.State == "established" }
