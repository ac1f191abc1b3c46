package director

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/anycastd/anycastd/cluster"
	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/health"
	"github.com/anycastd/anycastd/ipvs"
	"github.com/anycastd/anycastd/routing"
)

// Input is everything Plan decides from. It is a snapshot: the loop fills
// it and Plan reads it, nothing else.
type Input struct {
	// Self is this director's name in the cluster.
	Self string
	// Services are the applied cluster config's services.
	Services []configs.Service
	// Members is the gossip view. This director's own entry, if there,
	// is replaced by what Local says (the view may lag behind it).
	Members   []cluster.Member
	MaxActive int
	// Local is this director's own state.
	Local Local
	// Backends are the real servers' health by target ID (TargetID). A
	// backend of a service checked with type none is always up; any other
	// backend missing here is unknown.
	Backends map[string]health.State
	// Failed are services the dataplane refused, with the kernel's reason:
	// their VIPs are not announced (traffic would be dropped here).
	Failed map[ipvs.ServiceKey]string
	// Attrs are the attributes of every announcement (communities, MED).
	Attrs routing.Announcement
	// Now, with Local.DrainedAt and Local.BehindSince, times the drain
	// and the grace before a lagging config counts as behind.
	Now time.Time
	// GracefulShutdown is how long a drained director announces with the
	// GRACEFUL_SHUTDOWN community before it withdraws.
	GracefulShutdown time.Duration
	// BehindGrace is how long this director may lag the cluster's newest
	// config (while it is being fetched and applied) before it withdraws.
	BehindGrace time.Duration
	// Announced are the VIPs the last turn announced (Desired.VIPs), and
	// Settling since when each VIP not announced then has been held back
	// for its backends' health to settle (Desired.Settling).
	Announced map[netip.Addr]bool
	Settling  map[netip.Addr]time.Time
	// HealthChanged is when a backend of each service (by name) last
	// went up or down, as the health monitor reported it.
	HealthChanged map[string]time.Time
	// Role is the role the last turn decided (Desired.Role; "" before
	// the first), and PromotedOffline what it said of it.
	Role            cluster.Role
	PromotedOffline bool
	// Routing is what this director knows of its routing sessions.
	Routing Sessions
	// TableOutvoted are the services (by name) whose IPVS fingerprint
	// here a strict majority of the directors outvotes (TableCheck), and
	// TableOutvotedSince since when this director has been outvoted on
	// one (zero: it is not).
	TableOutvoted      []string
	TableOutvotedSince time.Time
}

// TableHold is how long at most a VIP that is not announced here waits
// while this director's IPVS table for one of its services differs from
// the one most directors hold (mh would send some of the flows it takes
// over to other real servers than they had): time for the full read the
// difference forces to repair it. A difference that outlasts it comes
// from what the table is built from (a drain under way on the others, a
// health verdict in flux), and holding a director out of its slot for
// longer costs more than the flows it would move.
const TableHold = 10 * time.Second

// Sessions is what a director knows of its sessions with the routers.
type Sessions struct {
	// Known: the announcer has sessions to report (BGP). Without them
	// (kernel mode, VRRP) the rejoin hold does not apply.
	Known bool
	// UpSince is since when at least one session has been established
	// (zero: none is).
	UpSince time.Time
}

// RejoinHold is how long a director that took an active slot while it
// had no routing session up waits, once a session is up, before it
// announces: long enough for the gossip, which the same cut stopped, to
// tell it whether the members it saw die are alive (a join is retried
// every 2 s).
const RejoinHold = 3 * time.Second

// Local is this director's own state, as the loop knows it now.
type Local struct {
	Priority int
	// Healthy and Reason are the self health (health.Self).
	Healthy bool
	Reason  string
	// Drained is the operator's drain flag, set at DrainedAt.
	Drained   bool
	DrainedAt time.Time
	// BehindSince is when a member was first seen with a newer config
	// than the applied one (zero: not behind; see Behind).
	BehindSince time.Time
	// Applied names the applied config and Newest the newer one
	// ("v12/3f2a…"), for the reason.
	Applied, Newest string
}

// Desired is what Plan decides.
type Desired struct {
	// Table is the IPVS table to hold, the same on every director whatever
	// its role, so that a standby takes over with warm tables and mh picks
	// the same real server everywhere.
	Table ipvs.Table
	// Announce is the complete set of announcements, sorted by prefix.
	Announce []routing.Announcement
	// Role is this director's place in the active set.
	Role cluster.Role
	// Me is this director as the election saw it: its gossip entry with
	// its own state (alive, its priority, eligibility and drain) in place
	// of the gossip's echo, which may lag. WithLocal puts it into a member
	// list so that whoever elects again (the API) elects as Plan did.
	Me cluster.Member
	// Eligible is what this director tells the others (cluster.Meta's
	// Healthy): self healthy and config current. Reason says why not.
	Eligible bool
	Reason   string
	// Why are the kinds of Reason's parts, in its order (none when
	// eligible and not drained).
	Why []Why
	// VIPs is every VIP of the config, sorted, with whether it is
	// announced and why not.
	VIPs []VIPState
	// Up is, per service name, its backends that count toward its quorum
	// (up, weight above 0), as the quorum rule counted them.
	Up map[string]int
	// WakeAt is when Plan's answer changes by itself (the end of a
	// graceful-shutdown hold, the end of the config grace, the end of a
	// settling hold); zero if never.
	WakeAt time.Time
	// Settling is, for each VIP held back until its backends' health has
	// settled, since when it is held (the next turn's Input.Settling).
	Settling map[netip.Addr]time.Time
	// PromotedOffline: this director went from standby to active while
	// no routing session was up, and has not yet had a session up for
	// RejoinHold (the next turn's Input.PromotedOffline). A standby that
	// sees the members ahead of it die while it cannot reach the router
	// is more likely cut off itself (a blackhole, its link) than the one
	// survivor: when the cut ends, its BGP session is up within a second,
	// before the gossip has told it the others are alive, and announcing
	// then would draw flows into a table that missed every connection
	// synced while it was cut off (the soak lab saw such flows reset).
	PromotedOffline bool
}

// VIPState says whether a VIP is announced here, and why not.
type VIPState struct {
	VIP              netip.Addr
	Announced        bool
	GracefulShutdown bool
	// Reason is why the VIP is not announced ("" when it is), in words
	// with the details; Why are its kinds, in its order.
	Reason string
	Why    []Why
	// Services are the names of the services on the VIP.
	Services []string
}

// Why is a kind of reason why this director is not eligible or a VIP is
// not announced here: what tests, metrics and alerts compare (the words
// with their details are the Reason beside it).
type Why string

// The kinds of reasons.
const (
	// WhyUnhealthy: a self check of this director fails.
	WhyUnhealthy Why = "unhealthy"
	// WhyConfigBehind: the cluster's members have a newer config and the
	// grace to catch up has passed.
	WhyConfigBehind Why = "config_behind"
	// WhyDrained: the operator drained this director.
	WhyDrained Why = "drained"
	// WhyNotInIPVS: the dataplane refused a service on the VIP.
	WhyNotInIPVS Why = "not_in_ipvs"
	// WhyBelowQuorum: a service on the VIP has fewer healthy backends
	// than its quorum.
	WhyBelowQuorum Why = "below_quorum"
	// WhyStandby: eligible, but beyond max_active.
	WhyStandby Why = "standby"
	// WhyNotActive: not in the active set for another reason (the
	// election counted this director out).
	WhyNotActive Why = "not_active"
	// WhySettling: the VIP waits for its backends' health to settle
	// before it is announced again.
	WhySettling Why = "settling"
	// WhyRejoining: this director took its active slot while it had no
	// routing session up; it waits RejoinHold after one is up (see
	// Desired.PromotedOffline).
	WhyRejoining Why = "rejoining"
	// WhyTableDiffers: the VIP was not announced here, and this
	// director's IPVS table for one of its services differs from the one
	// most directors hold; it waits for the repair, TableHold at most.
	WhyTableDiffers Why = "table_differs"
)

// TargetID is the health monitor's ID of a service's backend.
func TargetID(service string, b configs.Backend) string {
	return string(appendTargetID(nil, service, b))
}

// appendTargetID appends TargetID(service, b) to buf: Plan looks every
// backend up by it on every turn, through a reused buffer.
func appendTargetID(buf []byte, service string, b configs.Backend) []byte {
	buf = append(buf, service...)
	buf = append(buf, '/')
	return netip.AddrPortFrom(b.Address, uint16(b.Port)).AppendTo(buf)
}

// Behind reports whether a live member has applied a newer config than
// applied (version, then hash, as cluster.Document.Newer orders them), and
// which.
func Behind(self string, version uint64, hash string, members []cluster.Member) (bool, string) {
	mine := &cluster.Document{Version: version, Hash: hash}
	var newest *cluster.Document
	for _, m := range members {
		if m.Name == self || m.State != cluster.StateAlive || m.Bad != "" {
			continue
		}
		d := &cluster.Document{Version: m.Meta.ConfigVersion, Hash: m.Meta.ConfigHash}
		if d.Version == 0 {
			continue
		}
		if d.Newer(mine) && d.Newer(newest) {
			newest = d
		}
	}
	if newest == nil {
		return false, ""
	}
	return true, fmt.Sprintf("v%d/%s", newest.Version, newest.Hash)
}

// Plan is the decision core of a director: from the config, the cluster
// view and health it computes the IPVS table and the announcements. It is
// pure: the same input gives the same output.
//
// A director announces a VIP if and only if it is healthy, its config is
// the cluster's, it is in the active set, it is not drained, every service
// on the VIP has at least its quorum of healthy backends, and the dataplane
// took every service on the VIP. A drained director first announces with
// GRACEFUL_SHUTDOWN for GracefulShutdown, then withdraws.
//
// A VIP not announced on the last turn is announced only once its
// backends' health has settled (see settleHold): a director whose own
// path to the real servers failed (blackholed, its link down) saw every
// backend fail, and they come back one probe at a time; announcing at the
// first one (quorum) would take flows from the other directors into a
// table with the rest still at weight 0, where mh picks other real
// servers for them, and they are reset.
func Plan(in Input) Desired {
	var d Desired
	var key []byte // lookup keys of in.Backends
	d.Table = table(&in, &key)

	// This director's standing.
	behind := !in.Local.BehindSince.IsZero()
	behindNow := behind && !in.Now.Before(in.Local.BehindSince.Add(in.BehindGrace))
	var why []string
	if !in.Local.Healthy {
		why = append(why, "unhealthy: "+cmp.Or(in.Local.Reason, "self check failed"))
		d.Why = append(d.Why, WhyUnhealthy)
	}
	if behindNow {
		why = append(why, fmt.Sprintf("config behind the cluster (have %s, members have %s)", cmp.Or(in.Local.Applied, "none"), in.Local.Newest))
		d.Why = append(d.Why, WhyConfigBehind)
	} else if behind {
		d.WakeAt = in.Local.BehindSince.Add(in.BehindGrace)
	}
	d.Eligible = len(why) == 0
	if in.Local.Drained {
		why = append(why, "drained")
		d.Why = append(d.Why, WhyDrained)
	}
	d.Reason = strings.Join(why, "; ")

	me := cluster.Member{Name: in.Self}
	if i := slices.IndexFunc(in.Members, func(m cluster.Member) bool { return m.Name == in.Self }); i >= 0 {
		me = in.Members[i]
	}
	me.State, me.Bad = cluster.StateAlive, ""
	me.Meta.Priority, me.Meta.Healthy, me.Meta.Drained, me.Meta.Reason = in.Local.Priority, d.Eligible, in.Local.Drained, d.Reason
	d.Me = me
	members := WithLocal(in.Members, me)
	maxActive := in.MaxActive
	if maxActive <= 0 {
		maxActive = 8
	}
	d.Role = cluster.Elect(members, maxActive)[in.Self]

	// A drained director that was active keeps announcing, with GSHUT,
	// for the hold time; the drain does not take it out of the active set
	// until then, so the upstream moves flows away while the routes work.
	gshut := false
	if in.Local.Drained && d.Eligible {
		end := in.Local.DrainedAt.Add(in.GracefulShutdown)
		if in.Now.Before(end) {
			gshut = true
			d.WakeAt = earliest(d.WakeAt, end)
			me.Meta.Drained = false
			members[len(members)-1] = me
			if cluster.Elect(members, maxActive)[in.Self] != cluster.RoleActive {
				gshut = false
			}
		}
	}

	// An active slot taken while no routing session was up waits for
	// one to have been up for RejoinHold.
	rejoining := ""
	if d.Role == cluster.RoleActive && in.Routing.Known &&
		(in.Role == cluster.RoleStandby && in.Routing.UpSince.IsZero() || in.Role == cluster.RoleActive && in.PromotedOffline) {
		d.PromotedOffline = true
		switch end := in.Routing.UpSince.Add(RejoinHold); {
		case in.Routing.UpSince.IsZero():
			rejoining = "rejoining: became active while no routing session was up (cut off?); waits for a session, then " + RejoinHold.String() + " for the cluster to confirm"
			// Nothing wakes the loop when a session comes up: look again.
			d.WakeAt = earliest(d.WakeAt, in.Now.Add(time.Second))
		case in.Now.Before(end):
			rejoining = fmt.Sprintf("rejoining: became active while no routing session was up (cut off?); a session is up since %s, waits until %s for the cluster to confirm",
				in.Routing.UpSince.Format(time.TimeOnly), end.Format(time.TimeOnly))
			d.WakeAt = earliest(d.WakeAt, end)
		default:
			d.PromotedOffline = false // confirmed
		}
	}

	// Each VIP on its own (its services by index in in.Services).
	d.Up = make(map[string]int, len(in.Services))
	byVIP := map[netip.Addr][]int{}
	for i := range in.Services {
		v := in.Services[i].VIP
		byVIP[v] = append(byVIP[v], i)
	}
	vips := make([]netip.Addr, 0, len(byVIP))
	for v := range byVIP {
		vips = append(vips, v)
	}
	slices.SortFunc(vips, netip.Addr.Compare)
	for _, v := range vips {
		st := VIPState{VIP: v}
		var vwhy []string
		for _, i := range byVIP[v] {
			s := &in.Services[i]
			st.Services = append(st.Services, s.Name)
			if r, ok := in.Failed[serviceKey(*s)]; ok {
				vwhy = append(vwhy, fmt.Sprintf("service %s not in IPVS: %s", s.Name, r))
				st.Why = appendWhy(st.Why, WhyNotInIPVS)
			}
			up := healthyBackends(&in, s, &key)
			d.Up[s.Name] = up
			if up < s.Quorum {
				vwhy = append(vwhy, fmt.Sprintf("service %s below quorum (%d of %d backends up, quorum %d)", s.Name, up, len(s.Backends), s.Quorum))
				st.Why = appendWhy(st.Why, WhyBelowQuorum)
			}
		}
		switch {
		case len(vwhy) > 0:
			st.Reason = strings.Join(vwhy, "; ")
		case gshut:
			st.Announced, st.GracefulShutdown = true, true
		case d.Reason != "":
			st.Reason, st.Why = d.Reason, slices.Clone(d.Why)
		case d.Role != cluster.RoleActive:
			st.Reason, st.Why = "not in the active set: "+string(d.Role), []Why{WhyNotActive}
			if d.Role == cluster.RoleStandby {
				st.Reason, st.Why = fmt.Sprintf("standby (max_active %d reached)", maxActive), []Why{WhyStandby}
			}
		case rejoining != "":
			st.Reason, st.Why = rejoining, []Why{WhyRejoining}
		default:
			if !in.Announced[v] && !in.TableOutvotedSince.IsZero() && in.Now.Before(in.TableOutvotedSince.Add(TableHold)) {
				if svc := outvoted(&in, byVIP[v]); svc != "" {
					end := in.TableOutvotedSince.Add(TableHold)
					st.Reason = fmt.Sprintf("IPVS table of service %s differs from the one most directors hold (mh would move flows); waits for the repair until %s",
						svc, end.Format(time.TimeOnly))
					st.Why = []Why{WhyTableDiffers}
					d.WakeAt = earliest(d.WakeAt, end)
					break
				}
			}
			if !in.Announced[v] {
				if since, wake, why := settleHold(&in, byVIP[v], v); why != "" {
					st.Reason, st.Why = why, []Why{WhySettling}
					if d.Settling == nil {
						d.Settling = map[netip.Addr]time.Time{}
					}
					d.Settling[v] = since
					d.WakeAt = earliest(d.WakeAt, wake)
					break
				}
			}
			st.Announced = true
		}
		if st.Announced {
			a := in.Attrs
			a.Prefix = ipvs.HostPrefix(v)
			a.Communities = slices.Clone(a.Communities)
			a.LargeCommunities = slices.Clone(a.LargeCommunities)
			a.GracefulShutdown = st.GracefulShutdown
			d.Announce = append(d.Announce, a)
		}
		d.VIPs = append(d.VIPs, st)
	}
	return d
}

// outvoted returns the first of the services whose table is outvoted
// here ("" if none).
func outvoted(in *Input, services []int) string {
	for _, i := range services {
		if slices.Contains(in.TableOutvoted, in.Services[i].Name) {
			return in.Services[i].Name
		}
	}
	return ""
}

// appendWhy appends w unless it is there already (two services on a VIP
// below quorum are one kind).
func appendWhy(ws []Why, w Why) []Why {
	if slices.Contains(ws, w) {
		return ws
	}
	return append(ws, w)
}

// settleHold says whether a VIP that may be announced is held back for its
// backends' health to settle, since when, until when, and why ("" when
// not). Its settle time is the longest, over its checked services, of
// rise x interval + timeout: the time within which every backend whose
// path came back has risen. It is held while a backend of its services
// changed state less than that ago, and at most three settle times (a
// backend that flaps must not keep the VIP down for ever).
func settleHold(in *Input, services []int, v netip.Addr) (since, wake time.Time, why string) {
	var settle time.Duration
	var last time.Time
	for _, i := range services {
		s := &in.Services[i]
		if s.Health.Type == configs.CheckNone {
			continue
		}
		settle = max(settle, time.Duration(max(s.Health.Rise, 1))*s.Health.Interval+s.Health.Timeout)
		if t := in.HealthChanged[s.Name]; t.After(last) {
			last = t
		}
	}
	if settle <= 0 || last.IsZero() {
		return time.Time{}, time.Time{}, ""
	}
	since = in.Settling[v]
	if since.IsZero() {
		since = in.Now
	}
	end, limit := last.Add(settle), since.Add(3*settle)
	if !in.Now.Before(end) || !in.Now.Before(limit) {
		return time.Time{}, time.Time{}, ""
	}
	return since, earliest(end, limit), fmt.Sprintf("settling: a backend's health changed %s ago; announcing once none has for %s",
		in.Now.Sub(last).Round(time.Millisecond), settle)
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}

// backendUp is a backend's health for Plan: checked with none, always up.
// key is scratch space for the lookup (no string built per backend).
func backendUp(in *Input, s *configs.Service, b *configs.Backend, key *[]byte) health.State {
	if s.Health.Type == configs.CheckNone {
		return health.Up
	}
	*key = appendTargetID((*key)[:0], s.Name, *b)
	return in.Backends[string(*key)]
}

func healthyBackends(in *Input, s *configs.Service, key *[]byte) int {
	n := 0
	for i := range s.Backends {
		if b := &s.Backends[i]; b.Weight > 0 && backendUp(in, s, b, key) == health.Up {
			n++
		}
	}
	return n
}

// table builds the IPVS table from the services: every backend in config
// order (the same on every director); a down backend gets weight 0, or is
// left out when its service says on_down: remove (the reconciler's drainer
// then keeps it at weight 0 until its connections end). A backend whose
// health is not known yet keeps its weight: a restarted director must not
// zero a live table while its first probes run, and it announces nothing
// before quorum is seen up anyway.
func table(in *Input, key *[]byte) ipvs.Table {
	// Sized up front: a turn builds this for every service and backend.
	t := ipvs.Table{Services: make([]ipvs.Service, 0, len(in.Services))}
	for i := range in.Services {
		s := &in.Services[i]
		svc := IPVSService(*s)
		svc.Destinations = make([]ipvs.Destination, 0, len(s.Backends))
		for j := range s.Backends {
			b := &s.Backends[j]
			dst := destination(*s, *b)
			if backendUp(in, s, b, key) == health.Down {
				if s.OnDown == configs.OnDownRemove {
					continue
				}
				dst.Weight = 0
			}
			svc.Destinations = append(svc.Destinations, dst)
		}
		t.Services = append(t.Services, svc)
	}
	return t
}

// IPVSService converts a configured service (validated, defaults filled) into
// its IPVS form, without destinations.
func IPVSService(s configs.Service) ipvs.Service {
	flags, _ := ipvs.ParseSchedFlags(s.Scheduler, s.Flags) // validated by configs
	// A down backend is at weight 0; for mh and sh that costs new
	// connections unless they fall back (see ipvs.Fallback). Always on,
	// and not written into the config: a document of an earlier version
	// gets it too, and so does one that an earlier version can read.
	flags |= ipvs.Fallback(s.Scheduler)
	svc := ipvs.Service{
		ServiceKey:   serviceKey(s),
		Scheduler:    s.Scheduler,
		Flags:        flags,
		DrainTimeout: s.DrainTimeout,
	}
	if s.Persistence.Timeout > 0 {
		// The kernel sets its persistent flag from the timeout.
		svc.Timeout = uint32(s.Persistence.Timeout / time.Second)
		svc.PersistBits = s.Persistence.Netmask
	}
	return svc
}

func serviceKey(s configs.Service) ipvs.ServiceKey {
	k := ipvs.ServiceKey{Family: ipvs.FamilyOf(s.VIP)}
	if s.FWMark != 0 {
		k.FWMark = s.FWMark
		return k
	}
	k.Protocol, _ = ipvs.ParseProtocol(s.Protocol)
	k.Addr, k.Port = s.VIP.Unmap(), uint16(s.Port)
	return k
}

func destination(s configs.Service, b configs.Backend) ipvs.Destination {
	fwd, _ := ipvs.ParseForward(cmp.Or(b.Forwarding, s.Forwarding))
	return ipvs.Destination{
		DestKey:        ipvs.DestKey{Addr: b.Address.Unmap(), Port: uint16(b.Port)},
		Weight:         b.Weight,
		Forward:        fwd,
		UpperThreshold: b.UpperThreshold,
		LowerThreshold: b.LowerThreshold,
	}
}

// WithLocal is members with me in place of the entry of the same name (or
// added): the list a director elects on, its own state known first hand.
func WithLocal(members []cluster.Member, me cluster.Member) []cluster.Member {
	out := slices.DeleteFunc(slices.Clone(members), func(m cluster.Member) bool { return m.Name == me.Name })
	return append(out, me)
}
