package director

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/cluster"
	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/health"
	"github.com/anycastd/anycastd/ipvs"
	"github.com/anycastd/anycastd/routing"
)

// services parses a services section through configs, so defaults are
// filled as in a real document.
func services(t testing.TB, yaml string) []configs.Service {
	t.Helper()
	cfg, err := configs.Parse([]byte("node: {name: d1}\ncluster: {insecure: true}\nrouting: {mode: kernel, kernel: {table: 100}}\nservices:\n" + yaml))
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Services
}

const twoVIPs = `
  - name: web
    vip: 192.0.2.1
    port: 80
    scheduler: mh
    quorum: 2
    backends: [{address: 10.0.0.1}, {address: 10.0.0.2}, {address: 10.0.0.3}]
  - name: tls
    vip: 192.0.2.1
    port: 443
    quorum: 1
    on_down: remove
    backends: [{address: 10.0.0.1}, {address: 10.0.0.2}]
  - name: dns
    vip: 192.0.2.2
    protocol: udp
    port: 53
    quorum: 0
    health: {type: none}
    backends: [{address: 10.0.1.1}]
`

func members(n int, mod func(i int, m *cluster.Member)) []cluster.Member {
	var out []cluster.Member
	for i := 1; i <= n; i++ {
		m := cluster.Member{Name: fmt.Sprintf("d%d", i), State: cluster.StateAlive,
			Meta: cluster.Meta{Priority: 100, Healthy: true, ConfigVersion: 3, ConfigHash: "aaaa"}}
		if mod != nil {
			mod(i, &m)
		}
		out = append(out, m)
	}
	return out
}

func allUp(ss []configs.Service) map[string]health.State {
	h := map[string]health.State{}
	for _, s := range ss {
		for _, b := range s.Backends {
			h[TargetID(s.Name, b)] = health.Up
		}
	}
	return h
}

var t0 = time.Date(2026, 11, 25, 3, 0, 0, 0, time.UTC)

func baseInput(t *testing.T) Input {
	ss := services(t, twoVIPs)
	return Input{
		Self: "d1", Services: ss, Members: members(3, nil), MaxActive: 8,
		Local:    Local{Priority: 100, Healthy: true},
		Backends: allUp(ss),
		Attrs:    routing.Announcement{Communities: []string{"65000:1"}, MED: 10},
		Now:      t0, GracefulShutdown: 10 * time.Second, BehindGrace: 5 * time.Second,
	}
}

func prefixes(d Desired) []string {
	var out []string
	for _, a := range d.Announce {
		s := a.Prefix.String()
		if a.GracefulShutdown {
			s += "+gshut"
		}
		out = append(out, s)
	}
	return out
}

func reasons(d Desired) map[string]string {
	out := map[string]string{}
	for _, v := range d.VIPs {
		out[v.VIP.String()] = v.Reason
	}
	return out
}

func TestPlanAnnouncements(t *testing.T) {
	cases := []struct {
		name     string
		mod      func(in *Input)
		announce []string
		role     cluster.Role
		eligible bool
		// reason substrings per VIP (only for the VIPs listed)
		why map[string]string
	}{
		{"healthy active announces every VIP", nil,
			[]string{"192.0.2.1/32", "192.0.2.2/32"}, cluster.RoleActive, true, nil},
		{"self unhealthy withdraws everything", func(in *Input) { in.Local.Healthy, in.Local.Reason = false, "uplink eth1: down" },
			nil, cluster.RoleIneligible, false, map[string]string{"192.0.2.1": "unhealthy: uplink eth1: down"}},
		{"drained immediately after the hold", func(in *Input) {
			in.Local.Drained, in.Local.DrainedAt = true, t0.Add(-time.Minute)
		}, nil, cluster.RoleIneligible, true, map[string]string{"192.0.2.2": "drained"}},
		{"drained within the hold announces with GSHUT", func(in *Input) {
			in.Local.Drained, in.Local.DrainedAt = true, t0.Add(-time.Second)
		}, []string{"192.0.2.1/32+gshut", "192.0.2.2/32+gshut"}, cluster.RoleIneligible, true, nil},
		{"drained within the hold but standby: nothing to shut down", func(in *Input) {
			in.Local.Drained, in.Local.DrainedAt = true, t0.Add(-time.Second)
			in.MaxActive = 2
			in.Local.Priority = 200
		}, nil, cluster.RoleIneligible, true, map[string]string{"192.0.2.1": "drained"}},
		{"unhealthy and drained: no GSHUT, just withdraw", func(in *Input) {
			in.Local.Drained, in.Local.DrainedAt = true, t0
			in.Local.Healthy = false
		}, nil, cluster.RoleIneligible, false, map[string]string{"192.0.2.1": "unhealthy"}},
		{"config behind within the grace still announces", func(in *Input) {
			in.Local.BehindSince, in.Local.Newest = t0.Add(-time.Second), "v4/bbbb"
		}, []string{"192.0.2.1/32", "192.0.2.2/32"}, cluster.RoleActive, true, nil},
		{"config behind past the grace withdraws everything", func(in *Input) {
			in.Local.BehindSince, in.Local.Applied, in.Local.Newest = t0.Add(-time.Minute), "v3/aaaa", "v4/bbbb"
		}, nil, cluster.RoleIneligible, false, map[string]string{"192.0.2.2": "config behind the cluster (have v3/aaaa, members have v4/bbbb)"}},
		{"standby beyond max_active announces nothing", func(in *Input) {
			in.MaxActive = 2
			in.Self = "d3"
		}, nil, cluster.RoleStandby, true, map[string]string{"192.0.2.1": "standby (max_active 2 reached)"}},
		{"lower priority number wins the slot", func(in *Input) {
			in.MaxActive = 2
			in.Self = "d3"
			in.Local.Priority = 10
		}, []string{"192.0.2.1/32", "192.0.2.2/32"}, cluster.RoleActive, true, nil},
		{"standby moves up when an active member dies", func(in *Input) {
			in.MaxActive = 2
			in.Self = "d3"
			in.Members[1].State = cluster.StateDead
		}, []string{"192.0.2.1/32", "192.0.2.2/32"}, cluster.RoleActive, true, nil},
		{"standby moves up when an active member is unhealthy", func(in *Input) {
			in.MaxActive = 2
			in.Self = "d3"
			in.Members[0].Meta.Healthy = false
		}, []string{"192.0.2.1/32", "192.0.2.2/32"}, cluster.RoleActive, true, nil},
		{"standby moves up when an active member's metadata is unreadable", func(in *Input) {
			in.MaxActive = 2
			in.Self = "d3"
			in.Members[1].Bad = "unreadable metadata"
		}, []string{"192.0.2.1/32", "192.0.2.2/32"}, cluster.RoleActive, true, nil},
		{"own stale entry in the view is overridden by local state", func(in *Input) {
			in.Members[0].Meta.Healthy = false
			in.Members[0].State = cluster.StateDead
		}, []string{"192.0.2.1/32", "192.0.2.2/32"}, cluster.RoleActive, true, nil},
		{"alone before joining: active", func(in *Input) { in.Members = nil },
			[]string{"192.0.2.1/32", "192.0.2.2/32"}, cluster.RoleActive, true, nil},
		{"one backend down: quorum 2 of 3 still holds", func(in *Input) {
			in.Backends["web/10.0.0.1:80"] = health.Down
		}, []string{"192.0.2.1/32", "192.0.2.2/32"}, cluster.RoleActive, true, nil},
		{"below quorum on one service withdraws its VIP only", func(in *Input) {
			in.Backends["web/10.0.0.1:80"] = health.Down
			in.Backends["web/10.0.0.2:80"] = health.Down
		}, []string{"192.0.2.2/32"}, cluster.RoleActive, true,
			map[string]string{"192.0.2.1": "service web below quorum (1 of 3 backends up, quorum 2)"}},
		{"unknown health does not count towards quorum", func(in *Input) {
			in.Backends = map[string]health.State{}
		}, []string{"192.0.2.2/32"}, cluster.RoleActive, true,
			map[string]string{"192.0.2.1": "service web below quorum (0 of 3 backends up, quorum 2)"}},
		{"quorum 0 and check none: always announced", func(in *Input) {
			in.Backends = map[string]health.State{"dns/10.0.1.1:53": health.Down}
		}, []string{"192.0.2.2/32"}, cluster.RoleActive, true, nil},
		{"backend at configured weight 0 does not count", func(in *Input) {
			in.Services[0].Backends[0].Weight = 0
			in.Services[0].Backends[1].Weight = 0
		}, []string{"192.0.2.2/32"}, cluster.RoleActive, true, map[string]string{"192.0.2.1": "below quorum"}},
		{"service the dataplane refused withdraws its VIP", func(in *Input) {
			in.Failed = map[ipvs.ServiceKey]string{serviceKey(in.Services[2]): "scheduler not found"}
		}, []string{"192.0.2.1/32"}, cluster.RoleActive, true,
			map[string]string{"192.0.2.2": "service dns not in IPVS: scheduler not found"}},
		{"no services, nothing to announce", func(in *Input) { in.Services = nil },
			nil, cluster.RoleActive, true, nil},
		{"unhealthy and below quorum: both reasons kept apart", func(in *Input) {
			in.Local.Healthy = false
			in.Backends = map[string]health.State{}
		}, nil, cluster.RoleIneligible, false, map[string]string{"192.0.2.1": "below quorum", "192.0.2.2": "unhealthy"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := baseInput(t)
			if c.mod != nil {
				c.mod(&in)
			}
			d := Plan(in)
			if got := prefixes(d); !slices.Equal(got, c.announce) {
				t.Errorf("announce %v, want %v", got, c.announce)
			}
			if d.Role != c.role {
				t.Errorf("role %s, want %s", d.Role, c.role)
			}
			if d.Eligible != c.eligible {
				t.Errorf("eligible %v, want %v (reason %q)", d.Eligible, c.eligible, d.Reason)
			}
			got := reasons(d)
			for vip, want := range c.why {
				if !strings.Contains(got[vip], want) {
					t.Errorf("reason for %s: %q, want it to say %q", vip, got[vip], want)
				}
			}
			for _, v := range d.VIPs {
				if v.Announced != (v.Reason == "") || v.Announced != (len(v.Why) == 0) {
					t.Errorf("%s: announced %v with reason %q (%v)", v.VIP, v.Announced, v.Reason, v.Why)
				}
			}
			// The table never depends on role, self health or drain.
			base := baseInput(t)
			base.Services, base.Backends, base.Failed = in.Services, in.Backends, in.Failed
			if !equalTables(d.Table, Plan(base).Table) {
				t.Errorf("table depends on more than services and backend health")
			}
		})
	}
}

func equalTables(a, b ipvs.Table) bool {
	return len(ipvs.Diff(a, b)) == 0 && len(ipvs.Diff(b, a)) == 0
}

func TestPlanAttributes(t *testing.T) {
	in := baseInput(t)
	in.Attrs.LargeCommunities = []string{"65000:1:2"}
	d := Plan(in)
	if len(d.Announce) != 2 {
		t.Fatalf("announce %v", d.Announce)
	}
	a := d.Announce[0]
	if a.Prefix != netip.MustParsePrefix("192.0.2.1/32") || a.MED != 10 ||
		!slices.Equal(a.Communities, []string{"65000:1"}) || !slices.Equal(a.LargeCommunities, []string{"65000:1:2"}) {
		t.Errorf("announcement %+v", a)
	}
	a.Communities[0] = "changed"
	if in.Attrs.Communities[0] != "65000:1" {
		t.Error("announcements share the input's slices")
	}
	in.Services = services(t, `
  - name: v6
    vip: "2001:db8::1"
    port: 80
    health: {type: none}
    backends: [{address: "2001:db8:1::1"}]
`)
	if got := prefixes(Plan(in)); !slices.Equal(got, []string{"2001:db8::1/128"}) {
		t.Errorf("IPv6 VIP announced as %v", got)
	}
}

func TestPlanWakeAt(t *testing.T) {
	in := baseInput(t)
	if d := Plan(in); !d.WakeAt.IsZero() {
		t.Errorf("steady state wakes at %v", d.WakeAt)
	}
	in.Local.Drained, in.Local.DrainedAt = true, t0.Add(-3*time.Second)
	if d := Plan(in); !d.WakeAt.Equal(t0.Add(7 * time.Second)) {
		t.Errorf("drain hold wakes at %v, want the hold's end", d.WakeAt)
	}
	in.Local.Drained = false
	in.Local.BehindSince = t0.Add(-2 * time.Second)
	if d := Plan(in); !d.WakeAt.Equal(t0.Add(3 * time.Second)) {
		t.Errorf("config grace wakes at %v, want the grace's end", d.WakeAt)
	}
}

func TestPlanTable(t *testing.T) {
	ss := services(t, twoVIPs+`
  - name: nat
    vip: 192.0.2.3
    port: 443
    forwarding: nat
    scheduler: wlc
    persistence: {timeout: 300s, netmask: 24}
    backends: [{address: 10.0.2.1, port: 8443, weight: 200, upper_threshold: 100}, {address: 10.0.2.2, port: 8443}]
  - name: marked
    vip: 192.0.2.4
    fwmark: 7
    scheduler: sh
    flags: [sh-fallback]
    backends: [{address: 10.0.3.1, forwarding: tun}]
`)
	in := baseInput(t)
	in.Services, in.Backends = ss, allUp(ss)
	in.Backends["web/10.0.0.2:80"] = health.Down  // weight0 service
	in.Backends["tls/10.0.0.1:443"] = health.Down // remove service
	in.Backends["nat/10.0.2.2:8443"] = health.Unknown
	got := Plan(in).Table
	v4 := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	dst := func(a string, port uint16, w int, f ipvs.Forward) ipvs.Destination {
		return ipvs.Destination{DestKey: ipvs.DestKey{Addr: v4(a), Port: port}, Weight: w, Forward: f}
	}
	key := func(vip string, p ipvs.Protocol, port uint16) ipvs.ServiceKey {
		return ipvs.ServiceKey{Family: ipvs.IPv4, Protocol: p, Addr: v4(vip), Port: port}
	}
	want := ipvs.Table{Services: []ipvs.Service{
		// mh with no flags in the config: fallback all the same (case 24
		// of the fail-safe issue: a down backend must not cost new
		// connections).
		{ServiceKey: key("192.0.2.1", ipvs.TCP, 80), Scheduler: "mh", Flags: ipvs.SchedFlag1, DrainTimeout: ss[0].DrainTimeout, Destinations: []ipvs.Destination{
			dst("10.0.0.1", 80, 1, ipvs.DR), dst("10.0.0.2", 80, 0, ipvs.DR), dst("10.0.0.3", 80, 1, ipvs.DR)}},
		{ServiceKey: key("192.0.2.1", ipvs.TCP, 443), Scheduler: ss[1].Scheduler, Flags: ipvs.Fallback(ss[1].Scheduler), DrainTimeout: ss[1].DrainTimeout, Destinations: []ipvs.Destination{
			dst("10.0.0.2", 443, 1, ipvs.DR)}},
		{ServiceKey: key("192.0.2.2", ipvs.UDP, 53), Scheduler: ss[2].Scheduler, Flags: ipvs.Fallback(ss[2].Scheduler), DrainTimeout: ss[2].DrainTimeout, Destinations: []ipvs.Destination{
			dst("10.0.1.1", 53, 1, ipvs.DR)}},
		{ServiceKey: key("192.0.2.3", ipvs.TCP, 443), Scheduler: "wlc", Timeout: 300, PersistBits: 24, DrainTimeout: ss[3].DrainTimeout, Destinations: []ipvs.Destination{
			{DestKey: ipvs.DestKey{Addr: v4("10.0.2.1"), Port: 8443}, Weight: 200, Forward: ipvs.NAT, UpperThreshold: 100},
			dst("10.0.2.2", 8443, 1, ipvs.NAT)}},
		{ServiceKey: ipvs.ServiceKey{Family: ipvs.IPv4, FWMark: 7}, Scheduler: "sh", Flags: ipvs.SchedFlag1, DrainTimeout: ss[4].DrainTimeout, Destinations: []ipvs.Destination{
			dst("10.0.3.1", 0, 1, ipvs.TUN)}},
	}}
	if err := got.Check(); err != nil {
		t.Fatal(err)
	}
	if !equalTables(got, want) {
		t.Errorf("table:\n%+v\nwant\n%+v\ndiff: %v", got, want, ipvs.Diff(got, want))
	}
	// Same order on every director: the order of the config, whatever the
	// order health results came in.
	for i, s := range got.Services {
		for j, d := range s.Destinations {
			if d.DestKey != want.Services[i].Destinations[j].DestKey {
				t.Errorf("%s: destination %d is %s, want %s", s.ServiceKey, j, d.DestKey, want.Services[i].Destinations[j].DestKey)
			}
		}
	}
}

// Every director computes the same roles from the same view, whatever the
// order the view lists members in.
func TestPlanRolesAgree(t *testing.T) {
	view := members(10, func(i int, m *cluster.Member) {
		m.Meta.Priority = 100 + (i%3)*10
		if i == 4 {
			m.Meta.Healthy = false
		}
		if i == 7 {
			m.Meta.Drained = true
		}
	})
	active := 0
	roles := map[string]cluster.Role{}
	for i, m := range view {
		in := baseInput(t)
		in.Self, in.MaxActive = m.Name, 6
		in.Members = slices.Clone(view)
		// A different order per director.
		for k := range in.Members {
			j := (k*7 + i) % len(in.Members)
			in.Members[k], in.Members[j] = in.Members[j], in.Members[k]
		}
		in.Local = Local{Priority: m.Meta.Priority, Healthy: m.Meta.Healthy, Drained: m.Meta.Drained, DrainedAt: t0.Add(-time.Hour)}
		d := Plan(in)
		roles[m.Name] = d.Role
		if d.Role == cluster.RoleActive {
			active++
		}
	}
	if active != 6 {
		t.Errorf("%d active, want 6: %v", active, roles)
	}
	if want := cluster.Elect(view, 6); !mapsEqual(roles, want) {
		t.Errorf("roles %v, Elect says %v", roles, want)
	}
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestBehind(t *testing.T) {
	view := members(3, nil)
	if b, _ := Behind("d1", 3, "aaaa", view); b {
		t.Error("same config counts as behind")
	}
	view[2].Meta.ConfigVersion, view[2].Meta.ConfigHash = 4, "bbbb"
	if b, which := Behind("d1", 3, "aaaa", view); !b || which != "v4/bbbb" {
		t.Errorf("behind %v %q", b, which)
	}
	// Same version, higher hash wins the tie.
	view[2].Meta.ConfigVersion, view[2].Meta.ConfigHash = 3, "cccc"
	if b, _ := Behind("d1", 3, "aaaa", view); !b {
		t.Error("tie broken by hash not seen as newer")
	}
	if b, _ := Behind("d1", 3, "dddd", view); b {
		t.Error("a lower hash at the same version counts as newer")
	}
	// Dead members, our own entry and members without config do not count.
	view[2].State = cluster.StateDead
	view[0].Meta.ConfigVersion = 9
	view[1].Meta.ConfigVersion, view[1].Meta.ConfigHash = 0, ""
	if b, w := Behind("d1", 3, "aaaa", view); b {
		t.Errorf("behind %s", w)
	}
}

// BenchmarkPlan1000x10 is the pure part of one loop turn for the memory
// goal's size: 1,000 services, 10,000 backends, all up.
func BenchmarkPlan1000x10(b *testing.B) {
	var sb strings.Builder
	for i := range 1000 {
		fmt.Fprintf(&sb, "  - {name: s%d, vip: 10.200.%d.%d, port: 80, scheduler: mh, quorum: 1, backends: [", i, i/250, i%250+1)
		for j := range 10 {
			fmt.Fprintf(&sb, "{address: 10.1.%d.%d},", (i*10+j)/250, (i*10+j)%250+1)
		}
		sb.WriteString("]}\n")
	}
	ss := services(b, sb.String())
	in := Input{
		Self: "d1", Services: ss, Members: members(8, nil), MaxActive: 8,
		Local:    Local{Priority: 100, Healthy: true},
		Backends: allUp(ss),
		Now:      t0,
	}
	b.ReportAllocs()
	for b.Loop() {
		if d := Plan(in); len(d.Announce) != 1000 {
			b.Fatalf("%d announcements", len(d.Announce))
		}
	}
}

// A VIP that was not announced waits for its backends' health to settle
// before it is announced (a director whose path to the real servers came
// back sees them rise one probe at a time); one announced stays announced
// whatever changes; a backend that flaps holds it at most three settle
// times.
func TestPlanSettle(t *testing.T) {
	in := baseInput(t)
	v1 := netip.MustParseAddr("192.0.2.1")
	// web and tls: rise 2 (the default) x interval + timeout.
	h := in.Services[0].Health
	settle := time.Duration(h.Rise)*h.Interval + h.Timeout
	for _, c := range []struct {
		name      string
		announced bool
		changed   time.Duration // before now
		since     time.Duration // held since, before now (0: not held)
		held      bool
		wake      time.Duration // after now
	}{
		{"not announced, changed just now", false, 0, 0, true, settle},
		{"not announced, changed a moment ago", false, settle / 2, 0, true, settle / 2},
		{"not announced, settled", false, settle, 0, false, 0},
		{"announced, changed just now", true, 0, 0, false, 0},
		{"held for nearly three settle times", false, 0, 3*settle - time.Millisecond, true, time.Millisecond},
		{"held for three settle times (flapping)", false, 0, 3 * settle, false, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := in
			in.Announced = map[netip.Addr]bool{v1: c.announced}
			in.HealthChanged = map[string]time.Time{"tls": t0.Add(-c.changed), "web": t0.Add(-c.changed - time.Second)}
			if c.since > 0 {
				in.Settling = map[netip.Addr]time.Time{v1: t0.Add(-c.since)}
			}
			d := Plan(in)
			got := slices.Contains(prefixes(d), "192.0.2.1/32")
			if got == c.held {
				t.Fatalf("announced %v, want %v (reason %q)", got, !c.held, reasons(d)["192.0.2.1"])
			}
			if !slices.Contains(prefixes(d), "192.0.2.2/32") {
				t.Errorf("the other VIP (no checks) held: %q", reasons(d)["192.0.2.2"])
			}
			if !c.held {
				if _, ok := d.Settling[v1]; ok {
					t.Errorf("Settling kept for an announced VIP")
				}
				return
			}
			if !strings.HasPrefix(reasons(d)["192.0.2.1"], "settling: ") {
				t.Errorf("reason %q", reasons(d)["192.0.2.1"])
			}
			if want := t0.Add(c.wake); !d.WakeAt.Equal(want) {
				t.Errorf("wakes at %v, want %v", d.WakeAt.Sub(t0), c.wake)
			}
			if want := t0.Add(-c.since); !d.Settling[v1].Equal(want) {
				t.Errorf("settling since %v, want %v", d.Settling[v1].Sub(t0), -c.since)
			}
		})
	}
}

// The API elects on the same member list as Plan: this director's own
// entry from the last plan, not from the gossip, whose echo of a drain
// (or a priority change) lags. With the gossip still saying d1 is
// undrained, the API's roles must already show d2 active.
func TestElectedMembersUseThePlansOwnEntry(t *testing.T) {
	alive := func(name string, prio int) cluster.Member {
		return cluster.Member{Name: name, State: cluster.StateAlive, Meta: cluster.Meta{Healthy: true, Priority: prio}}
	}
	gossip := []cluster.Member{alive("d1", 50), alive("d2", 100)} // lower goes first
	me := alive("d1", 50)
	me.Meta.Drained = true
	members, roles := electedMembers(gossip, Desired{Me: me}, 1)
	if roles["d1"] == cluster.RoleActive || roles["d2"] != cluster.RoleActive {
		t.Errorf("roles %v: the drained d1 must not be active, d2 must", roles)
	}
	if len(members) != 2 || members[0].Name != "d1" || !members[0].Meta.Drained || members[1].Name != "d2" {
		t.Errorf("members %+v", members)
	}
	// Before any plan (no Me) the gossip is all there is.
	if _, roles := electedMembers(gossip, Desired{}, 1); roles["d1"] != cluster.RoleActive {
		t.Errorf("without a plan: roles %v", roles)
	}
}

// The settings a reload changes are listed once (takeRuntime): a change
// to one of them needs no restart, a change anywhere else is named.
func TestNeedsRestartIsTheComplementOfTakeRuntime(t *testing.T) {
	base := func() *configs.Config {
		c := &configs.Config{}
		c.Node.Name, c.Cluster.Port, c.Routing.Mode, c.Routing.BGP.ASN = "d1", 7946, "bgp", 65001
		return c
	}
	cases := []struct {
		name   string
		change func(*configs.Config)
		want   []string
	}{
		{"health", func(c *configs.Config) { c.Health.Self.Uplink = "eth1" }, nil},
		{"max_active and priority", func(c *configs.Config) { c.Cluster.MaxActive, c.Cluster.Priority = 4, 10 }, nil},
		{"keys", func(c *configs.Config) { c.Cluster.Keys = []string{"k"} }, nil},
		{"bgp attributes and hold", func(c *configs.Config) {
			c.Routing.BGP.Communities, c.Routing.BGP.MED, c.Routing.BGP.GracefulShutdown = []string{"65000:1"}, 5, time.Second
		}, nil},
		{"services", func(c *configs.Config) { c.Services = []configs.Service{{Name: "web"}} }, nil},
		{"bgp session", func(c *configs.Config) { c.Routing.BGP.ASN = 65002 }, []string{"routing.bgp (session settings)"}},
		{"gossip port", func(c *configs.Config) { c.Cluster.Port = 7947 }, []string{"cluster (bind, port, advertise, seeds, insecure)"}},
		{"node and mode", func(c *configs.Config) { c.Node.Name, c.Routing.Mode = "d2", "kernel" }, []string{"node", "routing.mode"}},
	}
	for _, c := range cases {
		b := base()
		c.change(b)
		if got := needsRestart(base(), b); !slices.Equal(got, c.want) {
			t.Errorf("%s: needs restart %q, want %q", c.name, got, c.want)
		}
	}
}

// The kinds of reasons (Why) are what tests, metrics and alerts compare:
// each case names them exactly, per VIP and for the director.
func TestPlanWhy(t *testing.T) {
	cases := []struct {
		name string
		mod  func(in *Input)
		self []Why
		vips map[string][]Why // every VIP of the base input
	}{
		{"announced: no reasons", nil, nil, map[string][]Why{"192.0.2.1": nil, "192.0.2.2": nil}},
		{"unhealthy", func(in *Input) { in.Local.Healthy = false },
			[]Why{WhyUnhealthy}, map[string][]Why{"192.0.2.1": {WhyUnhealthy}, "192.0.2.2": {WhyUnhealthy}}},
		{"config behind past the grace", func(in *Input) {
			in.Local.BehindSince, in.Local.Newest = t0.Add(-time.Minute), "v4/bbbb"
		}, []Why{WhyConfigBehind}, map[string][]Why{"192.0.2.1": {WhyConfigBehind}, "192.0.2.2": {WhyConfigBehind}}},
		{"unhealthy, behind and drained: all three, in order", func(in *Input) {
			in.Local.Healthy = false
			in.Local.BehindSince, in.Local.Newest = t0.Add(-time.Minute), "v4/bbbb"
			in.Local.Drained, in.Local.DrainedAt = true, t0.Add(-time.Minute)
		}, []Why{WhyUnhealthy, WhyConfigBehind, WhyDrained},
			map[string][]Why{"192.0.2.1": {WhyUnhealthy, WhyConfigBehind, WhyDrained}, "192.0.2.2": {WhyUnhealthy, WhyConfigBehind, WhyDrained}}},
		{"drained within the hold: announced with GSHUT, no VIP reason", func(in *Input) {
			in.Local.Drained, in.Local.DrainedAt = true, t0.Add(-time.Second)
		}, []Why{WhyDrained}, map[string][]Why{"192.0.2.1": nil, "192.0.2.2": nil}},
		{"standby", func(in *Input) { in.MaxActive, in.Self = 2, "d3" },
			nil, map[string][]Why{"192.0.2.1": {WhyStandby}, "192.0.2.2": {WhyStandby}}},
		{"below quorum on one VIP: the VIP's own reason beats the director's", func(in *Input) {
			in.Backends["web/10.0.0.1:80"] = health.Down
			in.Backends["web/10.0.0.2:80"] = health.Down
			in.Local.Healthy = false
		}, []Why{WhyUnhealthy}, map[string][]Why{"192.0.2.1": {WhyBelowQuorum}, "192.0.2.2": {WhyUnhealthy}}},
		{"refused by the dataplane and below quorum", func(in *Input) {
			in.Failed = map[ipvs.ServiceKey]string{serviceKey(in.Services[0]): "scheduler not found"}
			in.Backends = map[string]health.State{}
		}, nil, map[string][]Why{"192.0.2.1": {WhyNotInIPVS, WhyBelowQuorum}, "192.0.2.2": nil}},
		{"settling after a backend changed", func(in *Input) {
			in.Announced = map[netip.Addr]bool{}
			in.HealthChanged = map[string]time.Time{"web": t0.Add(-time.Second)}
		}, nil, map[string][]Why{"192.0.2.1": {WhySettling}, "192.0.2.2": nil}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := baseInput(t)
			if c.mod != nil {
				c.mod(&in)
			}
			d := Plan(in)
			if !slices.Equal(d.Why, c.self) {
				t.Errorf("director: why %v, want %v (reason %q)", d.Why, c.self, d.Reason)
			}
			if len(d.VIPs) != len(c.vips) {
				t.Fatalf("%d VIPs, want %d", len(d.VIPs), len(c.vips))
			}
			for _, v := range d.VIPs {
				if want := c.vips[v.VIP.String()]; !slices.Equal(v.Why, want) {
					t.Errorf("%s: why %v, want %v (reason %q)", v.VIP, v.Why, want, v.Reason)
				}
			}
		})
	}
}

// TestPlanRejoinHold: a standby that becomes active while no routing
// session is up (it saw the members ahead of it die while it was cut off
// itself, as a blackholed director does) announces nothing until a session
// has been up for RejoinHold, so that the gossip can tell it the others are
// alive before the router sends it flows (the soak lab: a blackholed
// standby, released, announced within a second, drew flows into a table
// without the connections synced meanwhile, and they were reset). A real
// take-over, with the router reachable, is not delayed, nor is a director
// that was active before its sessions went (a router restart), nor one
// starting, nor one whose announcer has no sessions (kernel mode).
func TestPlanRejoinHold(t *testing.T) {
	both := []string{"192.0.2.1/32", "192.0.2.2/32"}
	for _, c := range []struct {
		name     string
		last     cluster.Role
		promoted bool
		routing  Sessions
		announce []string
		carried  bool
		wake     time.Duration // after now (0: none)
	}{
		{"standby to active, no session up", cluster.RoleStandby, false, Sessions{Known: true}, nil, true, time.Second},
		{"still no session up", cluster.RoleActive, true, Sessions{Known: true}, nil, true, time.Second},
		{"a session up for a moment", cluster.RoleActive, true, Sessions{Known: true, UpSince: t0.Add(-time.Second)}, nil, true, RejoinHold - time.Second},
		{"a session up for the hold: confirmed", cluster.RoleActive, true, Sessions{Known: true, UpSince: t0.Add(-RejoinHold)}, both, false, 0},
		{"standby to active with the router reachable: a take-over", cluster.RoleStandby, false, Sessions{Known: true, UpSince: t0.Add(-time.Hour)}, both, false, 0},
		{"active before its sessions went (the router restarts)", cluster.RoleActive, false, Sessions{Known: true}, both, false, 0},
		{"starting", "", false, Sessions{Known: true}, both, false, 0},
		{"no sessions to know of (kernel mode)", cluster.RoleStandby, false, Sessions{}, both, false, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := baseInput(t)
			in.Role, in.PromotedOffline, in.Routing = c.last, c.promoted, c.routing
			d := Plan(in)
			if d.Role != cluster.RoleActive {
				t.Fatalf("role %s", d.Role)
			}
			if got := prefixes(d); !slices.Equal(got, c.announce) {
				t.Errorf("announces %v, want %v (reasons %v)", got, c.announce, reasons(d))
			}
			if d.PromotedOffline != c.carried {
				t.Errorf("PromotedOffline %v, want %v", d.PromotedOffline, c.carried)
			}
			if c.announce == nil {
				for _, v := range d.VIPs {
					if !slices.Equal(v.Why, []Why{WhyRejoining}) || !strings.HasPrefix(v.Reason, "rejoining: ") {
						t.Errorf("%s: why %v, reason %q", v.VIP, v.Why, v.Reason)
					}
				}
			}
			var want time.Time
			if c.wake > 0 {
				want = t0.Add(c.wake)
			}
			if !d.WakeAt.Equal(want) {
				t.Errorf("wakes at %v, want %v", d.WakeAt, want)
			}
		})
	}
}

// TestPlanTableHold: a VIP not announced on the last turn waits, at most
// TableHold, while the IPVS table of one of its services is outvoted by
// the other directors; a VIP already announced is never withdrawn for
// it.
func TestPlanTableHold(t *testing.T) {
	both := []string{"192.0.2.1/32", "192.0.2.2/32"}
	for _, c := range []struct {
		name      string
		outvoted  []string
		since     time.Duration // before now (0: not outvoted)
		announced bool          // both VIPs announced on the last turn
		announce  []string
		wake      time.Duration // after now (0: none)
	}{
		{"agreed", nil, 0, false, both, 0},
		{"web outvoted: its VIP waits", []string{"web"}, time.Second, false, []string{"192.0.2.2/32"}, TableHold - time.Second},
		{"the hold is over", []string{"web"}, TableHold, false, both, 0},
		{"announced already: kept", []string{"web", "dns"}, time.Second, true, both, 0},
		{"both VIPs' services outvoted", []string{"tls", "dns"}, 0, false, nil, TableHold},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := baseInput(t)
			in.TableOutvoted = c.outvoted
			if c.outvoted != nil {
				in.TableOutvotedSince = t0.Add(-c.since)
			}
			if c.announced {
				in.Announced = map[netip.Addr]bool{mustAddr("192.0.2.1"): true, mustAddr("192.0.2.2"): true}
			}
			d := Plan(in)
			if got := prefixes(d); !slices.Equal(got, c.announce) {
				t.Errorf("announces %v, want %v (reasons %v)", got, c.announce, reasons(d))
			}
			for _, v := range d.VIPs {
				if !v.Announced && (!slices.Equal(v.Why, []Why{WhyTableDiffers}) || !strings.Contains(v.Reason, "differs from the one most directors hold")) {
					t.Errorf("%s: why %v, reason %q", v.VIP, v.Why, v.Reason)
				}
			}
			var want time.Time
			if c.wake > 0 {
				want = t0.Add(c.wake)
			}
			if !d.WakeAt.Equal(want) {
				t.Errorf("wakes at %v, want %v", d.WakeAt, want)
			}
		})
	}
}
