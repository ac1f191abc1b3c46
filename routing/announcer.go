// Package routing says how a director tells the network which VIPs it
// serves. Announcer is implemented by routing/bgp (an embedded GoBGP
// speaker), routing/kernel (routes or addresses for an external OSPF or
// BGP daemon), routing/vrrp and routing/dns.
package routing

import (
	"context"
	"net/netip"
	"slices"
	"time"
)

// GracefulShutdown is the well-known GRACEFUL_SHUTDOWN community (RFC 8326),
// 65535:0: a receiver lowers the route's preference so traffic moves away
// before the route is withdrawn.
const GracefulShutdown = "65535:0"

// Announcement is one prefix to announce and its attributes.
type Announcement struct {
	Prefix netip.Prefix
	// Communities ("65000:100") and LargeCommunities ("65000:1:2").
	Communities      []string
	LargeCommunities []string
	MED              uint32
	// GracefulShutdown adds the GRACEFUL_SHUTDOWN community.
	GracefulShutdown bool
}

// Equal reports whether two announcements are the same.
func (a Announcement) Equal(b Announcement) bool {
	return a.Prefix == b.Prefix && a.MED == b.MED && a.GracefulShutdown == b.GracefulShutdown &&
		slices.Equal(a.Communities, b.Communities) && slices.Equal(a.LargeCommunities, b.LargeCommunities)
}

// Peer is a routing session and its state.
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
	// BFDFlaps counts the sessions that this director took down because
	// its BFD found the path failed (BGP with BFD): its own detection
	// expired, or the neighbour's BFD reported a failure. An AdminDown or
	// a session the neighbour closed first is not counted here.
	BFDFlaps uint64
	// Reason is why the session last went down, if known.
	Reason string
	// Rejected counts the advertisements dropped as misconfigured (VRRP),
	// by reason: "version", "auth", "interval", "addresses", "vrid",
	// "malformed"; LastRejected says the last one.
	Rejected     map[string]uint64 `json:",omitempty"`
	LastRejected string            `json:",omitempty"`
}

// Established reports whether the session is up.
func (p Peer) Established() bool { return p.State == "established" }

// Status is what an announcer is doing.
type Status struct {
	Mode      string
	Peers     []Peer
	Announced []Announcement
	// StandIn are announced prefixes held only in place of a router
	// that normally holds them and is gone (VRRP): the fallback DNS
	// leaves them out so that new clients go to the VIPs of the
	// directors that are up.
	StandIn []netip.Prefix
}

// Announcer announces a set of prefixes. Implementations are safe for
// concurrent use.
type Announcer interface {
	// Run runs the announcer until ctx ends, then withdraws what it
	// announced and releases what it holds.
	Run(ctx context.Context) error
	// Set declares the complete set of prefixes to announce now: what is
	// new is announced, what changed is updated, what is missing is
	// withdrawn. Idempotent. Before Run starts, the set is kept and
	// announced once the announcer is up.
	Set(ctx context.Context, anns []Announcement) error
	// Status reports sessions and what is announced.
	Status() Status
	// Changed is signalled (coalesced) when what the announcer holds
	// changes without a Set, which only an announcer that elects does
	// (see Elects). One that holds exactly what it is Set returns nil,
	// a channel that never fires.
	Changed() <-chan struct{}
}

// Elects reports whether a decides for itself what it holds (VRRP): Set
// says what it may hold, and it holds a prefix only while it wins the
// election for it; Status reports what it holds, which changes without a
// Set, and Changed is signalled at each such change. A caller must not
// withdraw from such an announcer in two steps (a Set of what it holds
// now, then the full set): the first Set would resign, for an instant,
// what it had just won, and a peer would take it over.
func Elects(a Announcer) bool { return a.Changed() != nil }
