package cluster

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"
)

// Meta is what a director tells the others about itself. Its small,
// fixed-size part travels in memberlist's node metadata (at most 512
// bytes), so a change reaches every member within a gossip round or two;
// the parts that grow with the config (the announced prefixes) and the
// free-text reason travel as the member's state (see MemberState), whole, never
// cut to fit.
type Meta struct {
	Priority int `json:"p"`
	// Healthy is the director's self health; Reason says why not.
	Healthy bool   `json:"h"`
	Reason  string `json:"-"`
	Drained bool   `json:"d,omitempty"`
	// ConfigVersion and ConfigHash (short) are of the applied document.
	ConfigVersion uint64 `json:"v"`
	ConfigHash    string `json:"c,omitempty"`
	// Applied is the short hash of the services this director applies:
	// ConfigHash, or while a rollout has not reached it the previous
	// services' ("" from a build without rollouts: ConfigHash).
	Applied string `json:"ap,omitempty"`
	// Staged says the build understands staged rollouts (a document
	// with a Rollout); one that does not rejects such documents.
	Staged bool `json:"sr,omitempty"`
	// Rollout is what the director says of the rollout that reached it
	// (nil: none, or a build without rollouts).
	Rollout *RolloutReport `json:"-"`
	// Announced are the prefixes the director announces now;
	// AnnouncedCount is their number.
	Announced      []string `json:"-"`
	AnnouncedCount int      `json:"n"`
	// StandIn are announced prefixes held for a failed peer (VRRP).
	StandIn []string `json:"-"`
	// Health is what the director's own checks say of the backends (nil
	// from a build without it).
	Health *HealthReport `json:"-"`
	// Tables are the fingerprints of the director's IPVS table for its
	// order-sensitive services (ipvs.Fingerprint by service name), as
	// its reconciler knows the kernel's (nil: unknown, or a build
	// without them).
	Tables map[string]string `json:"-"`
	// StateSeq is the sequence number of the member's state (Reason,
	// Announced, StandIn) as it sent it last: a receiver that holds an
	// older one knows it is stale and asks for it.
	StateSeq uint64 `json:"q,omitempty"`
	// PeersUp of Peers routing sessions are established.
	PeersUp int `json:"pu"`
	Peers   int `json:"pt"`
	// MaxActive is this director's configured cluster.max_active and
	// ActiveSize the active-set size its election uses now (see
	// director.NextActiveSize); 0 from a build without them.
	MaxActive  int `json:"ma,omitempty"`
	ActiveSize int `json:"as,omitempty"`
	// Mode is the routing mode.
	Mode    string       `json:"m,omitempty"`
	Addrs   []netip.Addr `json:"ad,omitempty"`
	Started int64        `json:"s"`
	Build   string       `json:"b,omitempty"`
	// Legacy are the lists of a build that sent them in the metadata
	// (they were dropped when they did not fit); read, never sent.
	Legacy *legacyMeta `json:"-"`
}

// legacyMeta is what earlier builds put in the metadata beside Meta.
type legacyMeta struct {
	Reason    string   `json:"r,omitempty"`
	Announced []string `json:"a,omitempty"`
	StandIn   []string `json:"si,omitempty"`
}

// MemberState is the part of a member's Meta sent apart from memberlist's node
// metadata, to every member over TCP and in every push/pull exchange: the
// parts that do not fit 512 bytes (100 VIPs are 1.6 kB), under a sequence
// number that only grows, so the newest wins wherever it arrives.
type MemberState struct {
	Seq       uint64            `json:"q"`
	Reason    string            `json:"r,omitempty"`
	Announced []string          `json:"a,omitempty"`
	StandIn   []string          `json:"si,omitempty"`
	Health    *HealthReport     `json:"h,omitempty"`
	Tables    map[string]string `json:"t,omitempty"`
	Rollout   *RolloutReport    `json:"ro,omitempty"`
}

// RolloutReport is what a director a rollout reached says of the new
// services: holding while they settle (Until), then whether anything is
// worse off than under the previous ones.
type RolloutReport struct {
	// ID is the rollout's (Rollout.ID).
	ID    uint64       `json:"id"`
	State RolloutState `json:"s"`
	// Until is when the hold ends.
	Until time.Time `json:"u,omitzero"`
	// Problems say what is worse off (State RolloutWorse).
	Problems []string `json:"p,omitempty"`
}

// RolloutState is a RolloutReport's verdict.
type RolloutState string

// The verdicts.
const (
	RolloutHolding RolloutState = "holding"
	RolloutOK      RolloutState = "ok"
	RolloutWorse   RolloutState = "worse"
)

// Equal reports whether r and o say the same.
func (r *RolloutReport) Equal(o *RolloutReport) bool {
	if r == nil || o == nil {
		return r == o
	}
	return r.ID == o.ID && r.State == o.State && r.Until.Equal(o.Until) && slices.Equal(r.Problems, o.Problems)
}

func (r *RolloutReport) clone() *RolloutReport {
	if r == nil {
		return nil
	}
	c := *r
	c.Problems = slices.Clone(r.Problems)
	return &c
}

// AppliedHash is the short hash of the services m applies.
func (m Meta) AppliedHash() string {
	if m.Applied != "" {
		return m.Applied
	}
	return m.ConfigHash
}

func (s MemberState) same(o MemberState) bool {
	return s.Reason == o.Reason && slices.Equal(s.Announced, o.Announced) && slices.Equal(s.StandIn, o.StandIn) &&
		s.Health.Equal(o.Health) && maps.Equal(s.Tables, o.Tables) && s.Rollout.Equal(o.Rollout)
}

// HealthReport is what a director's own checks say of the backends of the
// services it applied: the other directors count it as its vote
// (see director.Verdicts).
type HealthReport struct {
	// Config names the set of backends checked (director.TargetSet): a
	// vote counts only among directors checking the same set.
	Config string `json:"c"`
	// Down are the backends (their health target IDs) the checks hold
	// down, sorted.
	Down []string `json:"d,omitempty"`
	// Undecided says some backends have no verdict yet (their first
	// check has not answered): while any has, the report votes no backend
	// up, only the ones in Down down. Not how many: a count changed the
	// report, and sent it to every member, with each first answer.
	Undecided bool `json:"u,omitempty"`
	// TooMany says more than MaxReportDown backends are down: Down is
	// left empty and the report votes nothing (it is not cut to fit).
	TooMany bool `json:"x,omitempty"`
}

// MaxReportDown is the most backends a HealthReport lists down: the
// report travels to every member with each change, and in every push/pull
// exchange beside the services document.
const MaxReportDown = 2048

func (r *HealthReport) clone() *HealthReport {
	if r == nil {
		return nil
	}
	c := *r
	c.Down = slices.Clone(r.Down)
	return &c
}

// Equal reports whether r and o say the same (nil is no report).
func (r *HealthReport) Equal(o *HealthReport) bool {
	if r == nil || o == nil {
		return r == o
	}
	return r.Config == o.Config && r.Undecided == o.Undecided && r.TooMany == o.TooMany && slices.Equal(r.Down, o.Down)
}

// MetaMaxSize is memberlist's limit on node metadata.
const MetaMaxSize = 512

// Encode returns m's metadata part in at most limit bytes, or an error:
// nothing is cut to fit.
//
// Members of earlier builds read the announced list and the reason only
// from the metadata (their DNS feed among them): so that a rolling upgrade
// does not take the new directors' VIPs out of their answers, the lists go
// in as well when they fit whole. This build reads them from the state.
func (m Meta) Encode(limit int) ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(b) > limit {
		return nil, fmt.Errorf("node metadata is %d bytes, memberlist allows %d", len(b), limit)
	}
	if m.Reason == "" && m.Announced == nil && m.StandIn == nil {
		return b, nil
	}
	type withLegacy struct {
		Meta
		legacyMeta
	}
	if full, err := json.Marshal(withLegacy{m, legacyMeta{m.Reason, m.Announced, m.StandIn}}); err == nil && len(full) <= limit {
		return full, nil
	}
	return b, nil
}

// DecodeMeta parses what Encode made.
func DecodeMeta(b []byte) (Meta, error) {
	var m Meta
	if len(b) == 0 {
		return m, fmt.Errorf("no metadata")
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, err
	}
	var l legacyMeta
	if json.Unmarshal(b, &l) == nil && (l.Reason != "" || l.Announced != nil || l.StandIn != nil) {
		m.Legacy = &l
		m.Reason, m.Announced, m.StandIn = l.Reason, l.Announced, l.StandIn
	}
	return m, nil
}

// State is a member's liveness as memberlist sees it.
type State string

// Member states. There is no "suspect": memberlist keeps its suspicion to
// itself (its events say alive, dead or left, and the node records it
// hands out always say alive), so a member it suspects is alive here, and
// keeps its slot, until it is declared dead; a suspect that answers in
// time was never anything else.
const (
	StateAlive State = "alive"
	StateDead  State = "dead"
	StateLeft  State = "left"
)

// Role is a member's place in the active set.
type Role string

// Roles.
const (
	// RoleActive members announce the VIPs.
	RoleActive Role = "active"
	// RoleStandby members are eligible but beyond max_active: they keep
	// the same IPVS table and announce when an active member leaves.
	RoleStandby Role = "standby"
	// RoleIneligible members are unhealthy, drained, or gone.
	RoleIneligible Role = "ineligible"
)

// Member is one director in the gossip view.
type Member struct {
	Name  string
	Addr  netip.AddrPort
	State State
	// Meta is zero for a member whose metadata could not be read (Bad).
	Meta Meta
	Bad  string
	// Since is when this member was first seen in its current state.
	Since time.Time
}

// Ineligibility is a kind of reason why a member may not be in the
// active set: what tests and the API compare (the member's own words are
// its Meta.Reason).
type Ineligibility string

// The kinds of ineligibility.
const (
	// IneligibleGone: memberlist declared it dead, or it left.
	IneligibleGone Ineligibility = "gone"
	// IneligibleUnreadable: its metadata could not be read (Bad).
	IneligibleUnreadable Ineligibility = "unreadable_metadata"
	// IneligibleUnhealthy: it says it is not healthy, or its config is
	// behind (its Meta.Reason says which).
	IneligibleUnhealthy Ineligibility = "unhealthy"
	// IneligibleDrained: its operator drained it.
	IneligibleDrained Ineligibility = "drained"
)

// Ineligible says why m may not be in the active set (none: it may).
func (m Member) Ineligible() []Ineligibility {
	var out []Ineligibility
	if m.State != StateAlive {
		out = append(out, IneligibleGone)
	}
	if m.Bad != "" {
		return append(out, IneligibleUnreadable)
	}
	if !m.Meta.Healthy {
		out = append(out, IneligibleUnhealthy)
	}
	if m.Meta.Drained {
		out = append(out, IneligibleDrained)
	}
	return out
}

// Eligible reports whether m may be in the active set.
func (m Member) Eligible() bool { return len(m.Ineligible()) == 0 }

// Elect orders the eligible members by (priority, name) and returns each
// member's role: the first maxActive are active, the other eligible ones
// standby, the rest ineligible. Every director computes the same roles from
// the same view.
func Elect(members []Member, maxActive int) map[string]Role {
	roles := make(map[string]Role, len(members))
	var eligible []Member
	for _, m := range members {
		roles[m.Name] = RoleIneligible
		if m.Eligible() {
			eligible = append(eligible, m)
		}
	}
	slices.SortFunc(eligible, func(a, b Member) int {
		return cmp.Or(cmp.Compare(a.Meta.Priority, b.Meta.Priority), cmp.Compare(a.Name, b.Name))
	})
	for i, m := range eligible {
		if i < maxActive {
			roles[m.Name] = RoleActive
		} else {
			roles[m.Name] = RoleStandby
		}
	}
	return roles
}
