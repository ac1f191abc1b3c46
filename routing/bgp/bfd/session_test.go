package bfd

import (
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

var fast = Config{MinTx: 100 * time.Millisecond, MinRx: 100 * time.Millisecond, Multiplier: 3}

// neighbour builds a packet from the neighbour (discriminator 7) to a
// session with local discriminator 42.
func neighbour(state State, diag Diag, your uint32) Packet {
	return Packet{Version: 1, State: state, Diagnostic: diag, DetectTimeMultiplier: 3,
		MyDiscriminator: 7, YourDiscriminator: your,
		DesiredMinTxInterval: 100_000, RequiredMinRxInterval: 100_000}
}

func up(t *testing.T) *Session {
	t.Helper()
	s := NewSession(fast, 42, t0, func() float64 { return 0 })
	s.Receive(t0, neighbour(Down, DiagNone, 0))
	if _, changed, _, _ := s.Receive(t0, neighbour(Up, DiagNone, 42)); !changed || s.State() != Up {
		t.Fatalf("handshake: state %s", StateName(s.State()))
	}
	return s
}

func TestSessionHandshake(t *testing.T) {
	for _, tc := range []struct {
		name  string
		recv  []State // the neighbour's states, in order
		want  State
		trans []State // the states passed through
	}{
		{"down, down: init", []State{Down}, Init, []State{Init}},
		{"down, init: up", []State{Init}, Up, []State{Up}},
		{"down, up: stays down", []State{Up}, Down, nil},
		{"three-way", []State{Down, Up}, Up, []State{Init, Up}},
		{"init, init: up", []State{Down, Init}, Up, []State{Init, Up}},
		{"init, down: stays init", []State{Down, Down}, Init, []State{Init}},
		{"down, admin down: stays down", []State{AdminDown}, Down, nil},
		{"init, admin down: down", []State{Down, AdminDown}, Down, []State{Init, Down}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewSession(fast, 42, t0, nil)
			var got []State
			for i, st := range tc.recv {
				your := uint32(42)
				if st == Down || st == AdminDown {
					your = 0
				}
				tr, changed, _, ok := s.Receive(t0.Add(time.Duration(i)*time.Millisecond), neighbour(st, DiagNone, your))
				if !ok {
					t.Fatalf("packet %d not taken", i)
				}
				if changed {
					got = append(got, tr.To)
					if tr.To != s.State() {
						t.Errorf("transition to %s, state %s", StateName(tr.To), StateName(s.State()))
					}
				}
			}
			if s.State() != tc.want {
				t.Errorf("state %s, want %s", StateName(s.State()), StateName(tc.want))
			}
			if len(got) != len(tc.trans) {
				t.Fatalf("transitions %v, want %v", got, tc.trans)
			}
			for i := range got {
				if got[i] != tc.trans[i] {
					t.Errorf("transitions %v, want %v", got, tc.trans)
				}
			}
			if s.Remote() != 7 {
				t.Errorf("remote discriminator %d, want 7", s.Remote())
			}
		})
	}
}

// TestSessionDownCauses: what takes an Up session down, and which of
// those the BGP session must follow (issue 17, items 1 and 2).
func TestSessionDownCauses(t *testing.T) {
	for _, tc := range []struct {
		name    string
		pkt     Packet
		cause   Cause
		failure bool
	}{
		{"admin down (FRR's 'shutdown', BIRD's disabled session)", neighbour(AdminDown, DiagAdminDown, 42), CauseRemoteAdminDown, false},
		{"admin down with no diagnostic", neighbour(AdminDown, DiagNone, 42), CauseRemoteAdminDown, false},
		{"down: neighbour signalled down (FRR replacing its session)", neighbour(Down, DiagNeighborDown, 42), CauseRemoteDown, false},
		{"down: no diagnostic", neighbour(Down, DiagNone, 0), CauseRemoteDown, false},
		{"down: administratively down", neighbour(Down, DiagAdminDown, 42), CauseRemoteDown, false},
		{"down: its detection time expired", neighbour(Down, DiagExpired, 42), CauseRemoteDown, true},
		{"down: path down", neighbour(Down, 5, 42), CauseRemoteDown, true},
		{"down: forwarding plane reset", neighbour(Down, 4, 42), CauseRemoteDown, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := up(t)
			now := t0.Add(50 * time.Millisecond)
			tr, changed, _, ok := s.Receive(now, tc.pkt)
			if !ok || !changed {
				t.Fatalf("ok %v changed %v", ok, changed)
			}
			if tr.From != Up || tr.To != Down || tr.Cause != tc.cause || tr.RemoteDiag != tc.pkt.Diagnostic {
				t.Errorf("transition %+v", tr)
			}
			if tr.UpFor != 50*time.Millisecond {
				t.Errorf("up for %v", tr.UpFor)
			}
			if tr.Failure() != tc.failure {
				t.Errorf("failure %v, want %v", tr.Failure(), tc.failure)
			}
			if s.Diag() != DiagNeighborDown {
				t.Errorf("local diag %v, want 3", s.Diag())
			}
			if p := s.Packet(false); p.State != Down || p.DesiredMinTxInterval != 1_000_000 {
				t.Errorf("packet after down: state %s, desired tx %d µs (want down, the 1 s slow rate)", StateName(p.State), p.DesiredMinTxInterval)
			}
		})
	}
}

func TestSessionExpire(t *testing.T) {
	s := up(t)
	// The neighbour sends every 100 ms with multiplier 3, we require
	// 100 ms: 300 ms.
	if d := s.DetectionTime(); d != 300*time.Millisecond {
		t.Fatalf("detection time %v", d)
	}
	if _, ok := s.Expire(t0.Add(299 * time.Millisecond)); ok {
		t.Fatal("expired before the detection time")
	}
	s.Receive(t0.Add(200*time.Millisecond), neighbour(Up, DiagNone, 42))
	if _, ok := s.Expire(t0.Add(450 * time.Millisecond)); ok {
		t.Fatal("a packet did not restart the detection time")
	}
	tr, ok := s.Expire(t0.Add(500 * time.Millisecond))
	if !ok || tr.Cause != CauseExpired || !tr.Failure() || s.Diag() != DiagExpired || s.State() != Down {
		t.Fatalf("expire: %+v %v, diag %v state %s", tr, ok, s.Diag(), StateName(s.State()))
	}
	if s.Remote() != 0 || !s.Deadline().IsZero() {
		t.Errorf("remote %d deadline %v: the neighbour is forgotten after a detection time of silence", s.Remote(), s.Deadline())
	}
	if _, ok := s.Expire(t0.Add(time.Hour)); ok {
		t.Error("a down session expired again")
	}
	// A slower neighbour sets the detection time: its 1 s x 3.
	p := neighbour(Down, DiagNone, 0)
	p.DesiredMinTxInterval = 1_000_000
	s.Receive(t0.Add(time.Hour), p)
	if d := s.DetectionTime(); d != 3*time.Second {
		t.Errorf("detection time with a 1 s neighbour %v", d)
	}
}

func TestSessionPoll(t *testing.T) {
	s := NewSession(fast, 42, t0, nil)
	if p := s.Packet(false); p.DesiredMinTxInterval != 1_000_000 || p.Poll {
		t.Fatalf("down: %+v (want 1 s desired tx, no poll)", p)
	}
	s.Receive(t0, neighbour(Init, DiagNone, 42))
	p := s.Packet(false)
	if p.State != Up || !p.Poll || p.DesiredMinTxInterval != 100_000 {
		t.Fatalf("up: %+v (want the configured rate behind a poll)", p)
	}
	if _, _, final, _ := s.Receive(t0, func() Packet { p := neighbour(Up, DiagNone, 42); p.Poll = true; return p }()); !final {
		t.Error("a poll from the neighbour is not answered with final")
	}
	if p := s.Packet(true); !p.Final || p.Poll {
		t.Errorf("the answer: %+v (final, never poll with it)", p)
	}
	fin := neighbour(Up, DiagNone, 42)
	fin.Final = true
	s.Receive(t0, fin)
	if s.Packet(false).Poll {
		t.Error("poll goes on after the neighbour's final")
	}
}

func TestSessionTransmitInterval(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     Config
		up      bool
		rnd     float64
		remote  uint32 // the neighbour's required min rx, µs
		wantMin time.Duration
	}{
		{"down: slow rate, no jitter draw", fast, false, 0, 100_000, 750 * time.Millisecond},
		{"down: slow rate, most jitter", fast, false, 0.9999999, 100_000, time.Second},
		{"up: configured", fast, true, 0, 100_000, 75 * time.Millisecond},
		{"up: the neighbour wants slower", fast, true, 0, 500_000, 375 * time.Millisecond},
		{"multiplier 1: at most 90 %", Config{MinTx: 100 * time.Millisecond, MinRx: 100 * time.Millisecond, Multiplier: 1}, true, 0.9999999, 100_000, 90 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewSession(tc.cfg, 42, t0, func() float64 { return tc.rnd })
			p := neighbour(Down, DiagNone, 0)
			p.RequiredMinRxInterval = tc.remote
			s.Receive(t0, p)
			if tc.up {
				p = neighbour(Up, DiagNone, 42)
				p.RequiredMinRxInterval = tc.remote
				s.Receive(t0, p)
			}
			s.nextTx = t0
			if !s.Due(t0) {
				t.Fatal("not due")
			}
			if got := s.NextTx().Sub(t0); got.Round(time.Millisecond) != tc.wantMin {
				t.Errorf("next packet after %v, want %v", got, tc.wantMin)
			}
			if s.Due(t0.Add(time.Millisecond)) {
				t.Error("due again at once")
			}
		})
	}
	// A neighbour that asks for no packets gets none.
	s := NewSession(fast, 42, t0, nil)
	p := neighbour(Down, DiagNone, 0)
	p.RequiredMinRxInterval = 0
	s.Receive(t0, p)
	s.nextTx = t0
	s.Due(t0)
	if !s.NextTx().IsZero() {
		t.Errorf("periodic packets to a neighbour with required min rx 0")
	}
}

func TestSessionForeignPacket(t *testing.T) {
	s := up(t)
	if _, changed, _, ok := s.Receive(t0, neighbour(Down, DiagNone, 99)); ok || changed || s.State() != Up {
		t.Errorf("a packet for discriminator 99 was taken: ok %v changed %v state %s", ok, changed, StateName(s.State()))
	}
}

func TestSessionAdminDown(t *testing.T) {
	s := up(t)
	tr, ok := s.SetAdminDown(t0, true)
	if !ok || tr.From != Up || tr.Cause != CauseLocalAdminDown || tr.Failure() {
		t.Fatalf("admin down: %+v", tr)
	}
	if p := s.Packet(false); p.State != AdminDown || p.Diagnostic != DiagAdminDown {
		t.Errorf("packet %+v, want admin down with diagnostic 7", p)
	}
	if _, changed, _, _ := s.Receive(t0, neighbour(Down, DiagNone, 42)); changed || s.State() != AdminDown {
		t.Error("the neighbour moved an admin-down session")
	}
	s.SetAdminDown(t0, false)
	if s.State() != Down {
		t.Errorf("state %s after admin up", StateName(s.State()))
	}
}

func TestParse(t *testing.T) {
	good := func() []byte {
		p := neighbour(Down, DiagNone, 0)
		b, err := p.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if _, err := Parse(good()); err != nil {
		t.Fatalf("good packet: %v", err)
	}
	for _, tc := range []struct {
		name string
		mod  func([]byte) []byte
	}{
		{"short", func(b []byte) []byte { return b[:20] }},
		{"version 0", func(b []byte) []byte { b[0] &= 0x1f; return b }},
		{"length field too big", func(b []byte) []byte { b[3] = 48; return b }},
		{"authenticated", func(b []byte) []byte { b[1] |= 0x04; return b }},
		{"multipoint", func(b []byte) []byte { b[1] |= 0x01; return b }},
		{"poll and final", func(b []byte) []byte { b[1] |= 0x30; return b }},
		{"multiplier 0", func(b []byte) []byte { b[2] = 0; return b }},
		{"my discriminator 0", func(b []byte) []byte { copy(b[4:8], []byte{0, 0, 0, 0}); return b }},
		{"up without your discriminator", func(b []byte) []byte { b[1] = byte(Up) << 6; return b }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Parse(tc.mod(good())); err == nil {
				t.Error("accepted")
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	p := neighbour(Up, DiagNone, 42)
	b, _ := p.MarshalBinary()
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil {
			return
		}
		out, err := p.MarshalBinary()
		if err != nil {
			t.Fatalf("a parsed packet does not encode: %v", err)
		}
		back, err := Parse(out)
		if err != nil || back != p {
			t.Fatalf("round trip: %+v -> %+v %v", p, back, err)
		}
	})
}
