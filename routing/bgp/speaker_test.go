package bgp

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/routing"
	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	gobgp "github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

func TestParseCommunity(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint32
		ok   bool
	}{
		{"65000:100", 65000<<16 | 100, true},
		{"0:0", 0, true},
		{"65535:0", 0xffff0000, true},
		{"65536:0", 0, false},
		{"1:65536", 0, false},
		{"65000", 0, false},
		{"a:b", 0, false},
		{"1:2:3", 0, false},
		{"", 0, false},
	} {
		got, err := parseCommunity(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseCommunity(%q) = %d, %v; want %d ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func attr[T gobgp.PathAttributeInterface](p *apiutil.Path) (T, bool) {
	for _, a := range p.Attrs {
		if x, ok := a.(T); ok {
			return x, true
		}
	}
	var zero T
	return zero, false
}

func TestPathFor(t *testing.T) {
	cfg := configs.BGP{ASN: 65001}
	t.Run("IPv4 next hop self, communities, GRACEFUL_SHUTDOWN, MED", func(t *testing.T) {
		a := routing.Announcement{Prefix: netip.MustParsePrefix("192.0.2.10/32"), Communities: []string{"65001:100"},
			LargeCommunities: []string{"65001:1:2"}, MED: 50, GracefulShutdown: true}
		p, err := pathFor(a, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if p.Family != gobgp.RF_IPv4_UC || p.Nlri.String() != "192.0.2.10/32" {
			t.Errorf("family %v nlri %v", p.Family, p.Nlri)
		}
		nh, ok := attr[*gobgp.PathAttributeNextHop](p)
		if !ok || nh.Value != netip.IPv4Unspecified() {
			t.Errorf("next hop %v: want 0.0.0.0 (self)", nh)
		}
		c, _ := attr[*gobgp.PathAttributeCommunities](p)
		if c == nil || !slices.Equal(c.Value, []uint32{65001<<16 | 100, 0xffff0000}) {
			t.Errorf("communities %v", c)
		}
		if slices.Contains(a.Communities, routing.GracefulShutdown) {
			t.Error("pathFor changed the announcement's communities")
		}
		lc, _ := attr[*gobgp.PathAttributeLargeCommunities](p)
		if lc == nil || len(lc.Values) != 1 || lc.Values[0].String() != "65001:1:2" {
			t.Errorf("large communities %v", lc)
		}
		med, _ := attr[*gobgp.PathAttributeMultiExitDisc](p)
		if med == nil || med.Value != 50 {
			t.Errorf("MED %v", med)
		}
	})
	t.Run("IPv6 goes in MP_REACH with the configured next hop", func(t *testing.T) {
		cfg := cfg
		cfg.NextHopIPv6 = netip.MustParseAddr("2001:db8::1")
		p, err := pathFor(routing.Announcement{Prefix: netip.MustParsePrefix("2001:db8:100::10/128")}, cfg)
		if err != nil {
			t.Fatal(err)
		}
		mp, ok := attr[*gobgp.PathAttributeMpReachNLRI](p)
		if p.Family != gobgp.RF_IPv6_UC || !ok || mp.Nexthop != cfg.NextHopIPv6 {
			t.Errorf("family %v mp_reach %v", p.Family, mp)
		}
		if _, ok := attr[*gobgp.PathAttributeCommunities](p); ok {
			t.Error("communities without any configured")
		}
		if _, ok := attr[*gobgp.PathAttributeMultiExitDisc](p); ok {
			t.Error("MED 0 must not be sent")
		}
	})
	t.Run("bad communities are errors", func(t *testing.T) {
		for _, a := range []routing.Announcement{
			{Prefix: netip.MustParsePrefix("192.0.2.10/32"), Communities: []string{"nope"}},
			{Prefix: netip.MustParsePrefix("192.0.2.10/32"), LargeCommunities: []string{"1:2"}},
		} {
			if _, err := pathFor(a, cfg); err == nil {
				t.Errorf("%+v: no error", a)
			}
		}
	})
}

func TestPeerConfig(t *testing.T) {
	n := configs.Neighbor{
		Address: netip.MustParseAddr("10.0.1.0"), ASN: 65000, Password: "s3cret",
		LocalAddress: netip.MustParseAddr("10.0.1.1"),
		HoldTime:     9 * time.Second, Keepalive: 3 * time.Second, ConnectRetry: 2 * time.Second,
		Multihop: 2, Families: []string{"ipv4", "ipv6"},
		BFD: configs.BFD{Enabled: true, MinTx: 100 * time.Millisecond, MinRx: 300 * time.Millisecond, Multiplier: 3},
	}
	p := peerConfig(n)
	if p.Conf.NeighborAddress != "10.0.1.0" || p.Conf.PeerAsn != 65000 || p.Conf.AuthPassword != "s3cret" {
		t.Errorf("conf %+v", p.Conf)
	}
	tc := p.Timers.Config
	if tc.HoldTime != 9 || tc.KeepaliveInterval != 3 || tc.ConnectRetry != 2 || tc.IdleHoldTimeAfterReset != 2 {
		t.Errorf("timers %+v", tc)
	}
	if p.Transport.LocalAddress != "10.0.1.1" || !p.EbgpMultihop.Enabled || p.EbgpMultihop.MultihopTtl != 2 {
		t.Errorf("transport %+v multihop %+v", p.Transport, p.EbgpMultihop)
	}
	if len(p.AfiSafis) != 2 || p.AfiSafis[0].Config.Family.Afi != api.Family_AFI_IP || p.AfiSafis[1].Config.Family.Afi != api.Family_AFI_IP6 {
		t.Errorf("families %v", p.AfiSafis)
	}
	// BFD is anycastd's (package bfd), never GoBGP's: GoBGP's resets the
	// session on a neighbour's AdminDown (issue 17).
	if p.Bfd != nil {
		t.Errorf("GoBGP's BFD is configured: %+v", p.Bfd)
	}
	sp := New(configs.BGP{Neighbors: []configs.Neighbor{n}}, slog.New(slog.DiscardHandler))
	if sp.bfd == nil {
		t.Fatal("no BFD session for a neighbour with BFD")
	}
	// Held down until the BGP session is established.
	if st := sp.Status(); len(st.Peers) != 1 || st.Peers[0].BFD != "admin down" {
		t.Errorf("status before Run: %+v", st.Peers)
	}
	n.BFD.Enabled, n.Multihop, n.LocalAddress = false, 0, netip.Addr{}
	p = peerConfig(n)
	if p.EbgpMultihop != nil || p.Transport != nil {
		t.Errorf("unset options were configured: multihop %v transport %v", p.EbgpMultihop, p.Transport)
	}
	if sp := New(configs.BGP{Neighbors: []configs.Neighbor{n}}, slog.New(slog.DiscardHandler)); sp.bfd != nil || sp.Status().Peers[0].BFD != "" {
		t.Error("a BFD session for a neighbour without BFD")
	}
}

// TestSpeakerLocalRIB runs a real GoBGP server (no listener, no peers) and
// checks that Set puts exactly the wanted paths into its RIB, past the
// import policy that rejects everything else, and that a bad Set changes
// nothing.
func TestSpeakerLocalRIB(t *testing.T) {
	cfg := configs.BGP{ASN: 65001, RouterID: netip.MustParseAddr("192.0.2.1"), ListenPort: -1}
	var logs syncBuffer
	s := New(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	// Set before Run is kept and announced once the server is up.
	a1 := routing.Announcement{Prefix: netip.MustParsePrefix("198.51.100.1/32"), Communities: []string{"65001:1"}}
	if err := s.Set(ctx, []routing.Announcement{a1}); err != nil {
		t.Fatal(err)
	}
	go func() { done <- s.Run(ctx) }()
	rib := func() []string {
		s.mu.Lock()
		srv := s.srv
		s.mu.Unlock()
		if srv == nil {
			return nil
		}
		var out []string
		for _, fam := range []gobgp.Family{gobgp.RF_IPv4_UC, gobgp.RF_IPv6_UC} {
			srv.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: fam},
				func(prefix gobgp.NLRI, paths []*apiutil.Path) { out = append(out, prefix.String()) })
		}
		slices.Sort(out)
		return out
	}
	waitRIB := func(want ...string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !slices.Equal(rib(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("RIB %v, want %v", rib(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitRIB("198.51.100.1/32")

	a2 := routing.Announcement{Prefix: netip.MustParsePrefix("2001:db8::10/128")}
	if err := s.Set(ctx, []routing.Announcement{a2, {Prefix: netip.MustParsePrefix("198.51.100.2/32")}}); err != nil {
		t.Fatal(err)
	}
	waitRIB("198.51.100.2/32", "2001:db8::10/128")

	bad := []routing.Announcement{{Prefix: netip.MustParsePrefix("198.51.100.3/32"), Communities: []string{"x"}}}
	if err := s.Set(ctx, bad); err == nil {
		t.Error("a bad community was accepted")
	}
	waitRIB("198.51.100.2/32", "2001:db8::10/128")
	if st := s.Status(); st.Mode != configs.ModeBGP || len(st.Announced) != 2 {
		t.Errorf("status %+v", st)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if st := s.Status(); len(st.Announced) != 0 {
		t.Errorf("after shutdown still announced: %v", st.Announced)
	}
	// Case 16 of the fail-safe issue: every stop logged
	// "ERROR failed to stop BGP server: BGP server is not running".
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("a clean stop logged an error:\n%s", logs.String())
	}
}

// syncBuffer is a bytes.Buffer safe for the speaker's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestConfirmFailure: an expiry of our BFD detection time takes the BGP
// session down only when the neighbour's BGP messages stopped too (or the
// session is down already); messages still arriving mean the neighbour's
// BFD went silent on a working path (BIRD with "bfd off").
func TestConfirmFailure(t *testing.T) {
	for _, tc := range []struct {
		name        string
		before, now uint64
		established bool
		want        bool
	}{
		{"path failed: no message in the window", 120, 120, true, true},
		{"neighbour's BFD silent: keepalives still arrive", 120, 122, true, false},
		{"one message is enough", 7, 8, true, false},
		{"session already down", 120, 125, false, true},
		{"counters lower (a new session): no message seen", 120, 3, true, true},
	} {
		if got := confirmFailure(tc.before, tc.now, tc.established); got != tc.want {
			t.Errorf("%s: confirmFailure(%d, %d, %v) = %v, want %v", tc.name, tc.before, tc.now, tc.established, got, tc.want)
		}
	}
	for hold, want := range map[time.Duration]time.Duration{3 * time.Second: 1250 * time.Millisecond, 9 * time.Second: 3250 * time.Millisecond, 90 * time.Second: 30250 * time.Millisecond} {
		if got := keepaliveWindow(hold); got != want {
			t.Errorf("keepaliveWindow(%s) = %s, want %s", hold, got, want)
		}
	}
}
