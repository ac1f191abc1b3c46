package cluster

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Meta is what a director tells the others about itself. It travels in
// memberlist's node metadata (at most 512 bytes), so a change reaches every
// member within a gossip round or two.
type Meta struct {
	Priority int `json:"p"`
	// Healthy is the director's self health; Reason says why not.
	Healthy bool   `json:"h"`
	Reason  string `json:"r,omitempty"`
	Drained bool   `json:"d,omitempty"`
	// ConfigVersion and ConfigHash (short) are of the applied document.
	ConfigVersion uint64 `json:"v"`
	ConfigHash    string `json:"c,omitempty"`
	// Announced are the prefixes the director announces now;
	// AnnouncedCount is their number (the list is dropped when it does
	// not fit).
	Announced      []string `json:"a,omitempty"`
	AnnouncedCount int      `json:"n"`
	// StandIn are announced prefixes held for a failed peer (VRRP).
	StandIn []string `json:"si,omitempty"`
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
}

// MetaMaxSize is memberlist's limit on node metadata.
const MetaMaxSize = 512

// Encode returns m in at most limit bytes: the announced list, then the
// reason, then the build string are shortened until it fits.
func (m Meta) Encode(limit int) ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil || len(b) <= limit {
		return b, err
	}
	m.Announced, m.StandIn = nil, nil
	if b, _ = json.Marshal(m); len(b) <= limit {
		return b, nil
	}
	for len(b) > limit && (m.Reason != "" || m.Build != "") {
		over := len(b) - limit
		if m.Reason != "" {
			r := []rune(m.Reason)
			m.Reason = string(r[:max(0, len(r)-over-1)])
		} else {
			m.Build = ""
		}
		b, _ = json.Marshal(m)
	}
	if len(b) > limit {
		return nil, fmt.Errorf("node metadata is %d bytes, memberlist allows %d", len(b), limit)
	}
	return b, nil
}

// DecodeMeta parses what Encode made.
func DecodeMeta(b []byte) (Meta, error) {
	var m Meta
	if len(b) == 0 {
		return m, fmt.Errorf("no metadata")
	}
	err := json.Unmarshal(b, &m)
	return m, err
}

// State is a member's liveness as memberlist sees it.
type State string

// Member states. Suspect members still count: memberlist suspects before
// it declares a member dead, and a suspect that answers stays.
const (
	StateAlive   State = "alive"
	StateSuspect State = "suspect"
	StateDead    State = "dead"
	StateLeft    State = "left"
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

// Eligible reports whether m may be in the active set.
func (m Member) Eligible() bool {
	return (m.State == StateAlive || m.State == StateSuspect) && m.Bad == "" && m.Meta.Healthy && !m.Meta.Drained
}

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
