package main

import (
	"bytes"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/api"
)

var now = time.Date(2026, 11, 25, 3, 0, 0, 0, time.UTC)

func TestRenderMembersGolden(t *testing.T) {
	r := api.MembersResponse{Self: "d1", MaxActive: 2, Members: []api.MemberView{
		{Name: "d1", Self: true, Addr: "10.0.0.1:7946", State: "alive", Role: "active", Healthy: true, Priority: 100,
			ConfigVersion: 7, ConfigHash: "3f2a1b9c0d4e", Announced: []string{"198.51.100.1/32", "198.51.100.2/32"},
			Announcing: 2, PeersUp: 2, Peers: 2, Started: now.Add(-50 * time.Hour)},
		{Name: "d2", Addr: "10.0.0.2:7946", State: "alive", Role: "active", Healthy: true, Priority: 100,
			ConfigVersion: 7, ConfigHash: "3f2a1b9c0d4e", Applied: "77e0c1d2a3b4", Announcing: 40, PeersUp: 1, Peers: 2, Started: now.Add(-90 * time.Minute)},
		{Name: "d3", Addr: "10.0.0.3:7946", State: "alive", Role: "standby", Healthy: true, Priority: 200,
			ConfigVersion: 7, ConfigHash: "3f2a1b9c0d4e", PeersUp: 2, Peers: 2, Started: now.Add(-30 * time.Second)},
		{Name: "d4", Addr: "10.0.0.4:7946", State: "alive", Role: "ineligible", Healthy: false, Reason: "unhealthy: uplink eth1: no carrier",
			ConfigVersion: 6, ConfigHash: "aa00ff", Drained: true, Started: now.Add(-3 * time.Hour)},
		{Name: "d5", Addr: "10.0.0.5:7946", State: "dead", Role: "ineligible", Healthy: true, ConfigVersion: 7, ConfigHash: "3f2a1b9c0d4e"},
	}}
	var b bytes.Buffer
	renderMembers(&b, r, now)
	golden(t, "members.golden", b.String())
}

func TestRenderStatusGolden(t *testing.T) {
	s := api.StatusResponse{
		Name: "d1", Build: "v0.3.0", Started: now.Add(-26 * time.Hour), Mode: "bgp", Dataplane: "kernel",
		Role: "active", Eligible: true,
		Drain:      api.DrainView{},
		SelfChecks: []api.CheckStatus{{Name: "ipvs", OK: true}, {Name: "config", OK: true}, {Name: "uplink", OK: true}, {Name: "local-dns", OK: true}},
		Config:     api.ConfigInfo{Version: 7, Hash: "3f2a1b9c0d4e", Author: "d3", Services: 3},
		VIPs: []api.VIPView{
			{VIP: netip.MustParseAddr("198.51.100.1"), Announced: true, Services: []string{"web-http", "web-https"}},
			{VIP: netip.MustParseAddr("198.51.100.2"), Reason: "service api below quorum (1 of 2 backends up, quorum 2)", Services: []string{"api"}},
		},
		Peers: []api.Peer{
			{Address: netip.MustParseAddr("10.0.1.254"), ASN: 65000, State: "established", BFD: "up", Flaps: 2, BFDFlaps: 2, Since: now.Add(-25 * time.Hour)},
			{Address: netip.MustParseAddr("10.0.2.254"), ASN: 65000, State: "active", Flaps: 3, Reason: "hold timer expired", Since: now.Add(-40 * time.Second)},
		},
		Reconcile: api.ReconcileInfo{At: now.Add(-2 * time.Second), Duration: 1234 * time.Microsecond, Ops: 2, Draining: 1},
		Members:   map[string]int{"active": 2, "standby": 1},
		Foreign:   []string{"tcp 192.0.2.99:80"},
		ConnSync: &api.ConnSyncView{Daemons: []string{"master on eth0 sync id 1 group 224.0.0.81 port 8848 ttl 1 maxlen 1472",
			"backup on eth0 sync id 1 group 224.0.0.81 port 8848 ttl 1 maxlen 1472"}},
		Tables: &api.TablesView{Fingerprints: map[string]string{"web-http": "0a1b2c3d4e", "web-https": "5f6a7b8c9d"}, Compared: 2},
	}
	var b bytes.Buffer
	renderStatus(&b, s, now)
	golden(t, "status.golden", b.String())

	s.Eligible, s.Role = false, "ineligible"
	s.Reason = "drained"
	s.Drain = api.DrainView{Drained: true, Reason: "kernel upgrade", Since: now.Add(-5 * time.Minute)}
	s.Reconcile.Errors = []string{"add service tcp 198.51.100.3:443: scheduler mh: no such file or directory"}
	s.Config.Applied = "77e0c1d2a3b4c5d6"
	s.Tables = &api.TablesView{Fingerprints: map[string]string{"web-http": "0a1b2c3d4e", "web-https": "5f6a7b8c9d"}, Compared: 2,
		Differ: map[string][]string{"web-http": {"d2", "d3"}}, Outvoted: []string{"web-http"}, Repairs: 3, LastRepair: now.Add(-4 * time.Second)}
	s.ConnSync = &api.ConnSyncView{Error: "start IPVS sync daemon (master on eth7 sync id 1 group 224.0.0.81 port 8848 ttl 1 maxlen 0): no such device"}
	b.Reset()
	renderStatus(&b, s, now)
	golden(t, "status-drained.golden", b.String())
}

func TestRenderServicesGolden(t *testing.T) {
	w := func(n int) *int { return &n }
	r := api.ServicesResponse{Config: api.ConfigInfo{Version: 7, Hash: "3f2a1b9c0d4e"}, Services: []api.ServiceView{
		{Name: "web-http", VIP: netip.MustParseAddr("198.51.100.1"), Protocol: "tcp", Port: 80, Scheduler: "mh", Forwarding: "dr",
			Check: "http", Quorum: 2, Up: 2, InIPVS: true, Announced: true, Backends: []api.BackendView{
				{Address: netip.MustParseAddr("10.1.0.11"), Port: 80, Weight: 1, IPVSWeight: w(1), Health: "up", Since: now.Add(-3 * time.Hour),
					Verdict: "up", Voters: 4, Detail: "HTTP 200", LatencyMS: 1.25, ActiveConns: 120, InactiveConns: 30},
				{Address: netip.MustParseAddr("10.1.0.12"), Port: 80, Weight: 1, IPVSWeight: w(0), Health: "down", Since: now.Add(-40 * time.Second),
					Verdict: "down", DownVotes: 4, Voters: 4, Error: "GET /healthz: HTTP 503, want 200", LatencyMS: 3.5, ActiveConns: 4},
				{Address: netip.MustParseAddr("10.1.0.13"), Port: 80, Weight: 1, IPVSWeight: w(1), Health: "down", Since: now.Add(-12 * time.Second),
					Verdict: "up", DownVotes: 1, Voters: 4, DisagreeSince: now.Add(-12 * time.Second), Error: "dial tcp 10.1.0.13:80: i/o timeout"},
				{Address: netip.MustParseAddr("10.1.0.14"), Port: 80, Weight: 1, IPVSWeight: w(0), Health: "down", Since: now.Add(-45 * time.Second),
					Verdict: "down", DownVotes: 1, Voters: 4, DisagreeSince: now.Add(-45 * time.Second), Overridden: true, Error: "dial tcp 10.1.0.14:80: connect: no route to host"},
			}},
		{Name: "marked", VIP: netip.MustParseAddr("198.51.100.4"), FWMark: 100, Scheduler: "sh", Forwarding: "dr",
			Check: "none", Quorum: 1, Up: 1, InIPVS: false, Backends: []api.BackendView{
				{Address: netip.MustParseAddr("10.1.0.41"), Weight: 1, Health: "up"}}},
		{Name: "web6", VIP: netip.MustParseAddr("2001:db8:100::1"), Protocol: "tcp", Port: 80, Scheduler: "mh", Forwarding: "dr",
			Check: "tcp", Quorum: 1, Up: 0, InIPVS: true, Backends: []api.BackendView{
				{Address: netip.MustParseAddr("2001:db8:200::11"), Port: 80, Weight: 1, IPVSWeight: w(1), Health: "unknown"}}},
		{Name: "api", VIP: netip.MustParseAddr("198.51.100.5"), Protocol: "tcp", Port: 443, Scheduler: "mh", Forwarding: "dr",
			Check: "tcp", Quorum: 1, Up: 1, InIPVS: true, Announced: true, FailOpen: true, Backends: []api.BackendView{
				{Address: netip.MustParseAddr("10.1.0.51"), Port: 443, Weight: 1, IPVSWeight: w(1), Health: "up", Since: now.Add(-time.Minute),
					Verdict: "up", DownVotes: 3, Voters: 4}}},
	}}
	var b bytes.Buffer
	renderServices(&b, r, now)
	golden(t, "services.golden", b.String())
}

func TestAgeAndNames(t *testing.T) {
	cases := map[time.Duration]string{0: "0s", 90 * time.Second: "90s", 5 * time.Minute: "5m", 3 * time.Hour: "3h", 72 * time.Hour: "3d", -time.Second: "0s"}
	for d, want := range cases {
		if got := age(now, now.Add(-d)); got != want {
			t.Errorf("age(%v) = %q, want %q", d, got, want)
		}
	}
	if age(now, time.Time{}) != "-" || cfgName(0, "") != "none" || cfgName(3, "abcdef0123") != "v3/abcdef01" {
		t.Error("zero age or config names")
	}
}

func TestNaturalCompare(t *testing.T) {
	names := []string{"d10", "d9", "d1", "lb-a2", "d02", "lb-a10", "d", "e1"}
	slices.SortFunc(names, naturalCompare)
	want := []string{"d", "d1", "d02", "d9", "d10", "e1", "lb-a2", "lb-a10"}
	if !slices.Equal(names, want) {
		t.Errorf("%v, want %v", names, want)
	}
}

// A VRRP instance that has heard no master yet has no peer address: the
// peers table says "-", not Go's "invalid IP".
func TestRenderStatusPeerWithoutAddress(t *testing.T) {
	s := api.StatusResponse{Name: "d1", Mode: "vrrp", Role: "active", Eligible: true,
		Peers: []api.Peer{{ASN: 51, State: "backup"}}}
	var b bytes.Buffer
	renderStatus(&b, s, now)
	out := b.String()
	if strings.Contains(out, "invalid IP") {
		t.Fatalf("status shows Go's zero address:\n%s", out)
	}
	if !regexp.MustCompile(`(?m)^  -\s+51\s+backup\s`).MatchString(out) {
		t.Errorf("no '-' peer row for VRID 51:\n%s", out)
	}
}

// A VRRP instance that drops a misconfigured peer's advertisements says so
// under the peers, with the counts and the last one (issue 17, item 4).
func TestRenderStatusRejectedAdverts(t *testing.T) {
	s := api.StatusResponse{Name: "d1", Mode: "vrrp", Role: "active", Eligible: true,
		Peers: []api.Peer{{ASN: 51, State: "master", Rejected: map[string]uint64{"version": 40, "auth": 2},
			LastRejected: "version: 10.9.0.1: received VRRPv2, this instance runs VRRPv3"}, {ASN: 52, State: "backup"}}}
	var b bytes.Buffer
	renderStatus(&b, s, now)
	out := b.String()
	want := "  VRID 51: 42 advertisements dropped as misconfigured (auth 2, version 40); last: version: 10.9.0.1: received VRRPv2, this instance runs VRRPv3\n"
	if !strings.Contains(out, want) || strings.Contains(out, "VRID 52:") {
		t.Errorf("want %q once:\n%s", want, out)
	}
}
