// Package bfd is the BGP speaker's bidirectional forwarding detection:
// single-hop BFD in asynchronous mode (RFC 5880, RFC 5881) without
// authentication or demand mode, as routers run it towards their BGP
// neighbours.
//
// It is anycastd's own because the client side matters: GoBGP's BFD (v4.8.0)
// resets the BGP session whenever the neighbour's packets say Down or
// AdminDown, so a router that shuts its BFD sessions down administratively,
// or that replaces a BFD session as FRR does when its BGP session comes up,
// takes every director's session (and route) down with it. Here the
// session reports every transition with its cause, and the speaker decides
// (Transition.Failure) which of them are a failed path.
//
// Session is the pure state machine (time passed in, no I/O); Server runs
// sessions over UDP.
package bfd

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/osrg/gobgp/v4/pkg/packet/bfd"
)

// State is a session state (RFC 5880 §4.1).
type State = bfd.StateType

// The session states.
const (
	AdminDown = bfd.StateAdminDown
	Down      = bfd.StateDown
	Init      = bfd.StateInit
	Up        = bfd.StateUp
)

// Diag is a diagnostic code (RFC 5880 §4.1): why a session last changed.
type Diag = bfd.DiagnosticType

// The diagnostics this package sets or tells apart.
const (
	DiagNone         = bfd.DiagnosticNoDiagnostic
	DiagExpired      = bfd.DiagnosticControlDetectionTimeExpired
	DiagNeighborDown = bfd.DiagnosticNeighborSignaledSessionDown
	DiagAdminDown    = bfd.DiagnosticAdministrativelyDown
)

// StateName is the lower-case name of a state as anyctl shows it.
func StateName(s State) string {
	switch s {
	case AdminDown:
		return "admin down"
	case Down:
		return "down"
	case Init:
		return "init"
	case Up:
		return "up"
	}
	return fmt.Sprintf("state %d", s)
}

// Config is a session's local parameters.
type Config struct {
	// MinTx is the desired minimum transmit interval once Up (below Up a
	// session sends at most once a second, RFC 5880 §6.8.3).
	MinTx time.Duration
	// MinRx is the required minimum receive interval.
	MinRx time.Duration
	// Multiplier is the detect multiplier the neighbour uses with our
	// transmit interval.
	Multiplier uint8
}

// slowTx is the transmit interval below Up (RFC 5880 §6.8.3: at least 1 s).
const slowTx = time.Second

// Packet is a BFD control packet as this package sends and accepts it.
type Packet = bfd.BFDHeader

// Parse decodes and validates a received control packet (RFC 5880
// §6.8.6's checks that need no session): version 1, a length that fits,
// a nonzero detect multiplier and My Discriminator, no multipoint bit,
// and no authentication (this package has none, so an authenticated
// packet is discarded).
func Parse(b []byte) (Packet, error) {
	var p Packet
	if len(b) < 24 {
		return p, fmt.Errorf("%d bytes: shorter than a control packet (24)", len(b))
	}
	if v := b[0] >> 5; v != 1 {
		return p, fmt.Errorf("version %d, want 1", v)
	}
	if int(b[3]) != len(b) {
		return p, fmt.Errorf("length field %d, packet %d bytes", b[3], len(b))
	}
	if b[1]&0x04 != 0 {
		return p, errors.New("authenticated packet (authentication is not configured)")
	}
	if b[1]&0x01 != 0 {
		return p, errors.New("multipoint bit set")
	}
	if b[1]&0x30 == 0x30 {
		return p, errors.New("poll and final both set")
	}
	if err := p.UnmarshalBinary(b); err != nil {
		return p, err
	}
	if p.DetectTimeMultiplier == 0 {
		return p, errors.New("detect multiplier 0")
	}
	if p.MyDiscriminator == 0 {
		return p, errors.New("my discriminator 0")
	}
	if p.YourDiscriminator == 0 && p.State != Down && p.State != AdminDown {
		return p, fmt.Errorf("your discriminator 0 in state %s", StateName(p.State))
	}
	return p, nil
}

// demand tells whether a raw packet has the Demand bit: this package
// does not run demand mode, and a neighbour that asks for it is logged.
func demand(b []byte) bool { return len(b) > 1 && b[1]&0x02 != 0 }

// Cause is what made a session change state.
type Cause uint8

// The causes of a transition.
const (
	// CauseHandshake: the three-way handshake moved the session on
	// (Down to Init or Up, Init to Up).
	CauseHandshake Cause = iota
	// CauseExpired: no valid packet from the neighbour within the
	// detection time: our receive path failed.
	CauseExpired
	// CauseRemoteDown: the neighbour's packet says Down (its diagnostic
	// says why).
	CauseRemoteDown
	// CauseRemoteAdminDown: the neighbour took its session down
	// administratively (RFC 5882 §3.2: not a failure of the path).
	CauseRemoteAdminDown
	// CauseLocalAdminDown: we stopped the session.
	CauseLocalAdminDown
)

func (c Cause) String() string {
	switch c {
	case CauseHandshake:
		return "handshake"
	case CauseExpired:
		return "detection time expired"
	case CauseRemoteDown:
		return "neighbour signalled down"
	case CauseRemoteAdminDown:
		return "neighbour admin down"
	case CauseLocalAdminDown:
		return "admin down"
	}
	return fmt.Sprintf("cause %d", c)
}

// Transition is one change of a session's state.
type Transition struct {
	From, To State
	Cause    Cause
	// RemoteDiag is the neighbour's diagnostic in the packet that caused
	// the transition (CauseRemoteDown, CauseRemoteAdminDown).
	RemoteDiag Diag
	// UpFor is how long the session had been Up when it left Up.
	UpFor time.Duration
}

// Failure tells whether a transition out of Up is evidence that the
// forwarding path failed, which is when the client (the BGP session) should
// go down too:
//   - our detection time expired (our receive path lost the neighbour's
//     packets);
//   - the neighbour says Down because its own detection expired or its path
//     or forwarding plane failed (diagnostics 1, 2, 4, 5, 6, 8).
//
// Not a failure: AdminDown from either side (RFC 5882 §3.2); a Down whose
// diagnostic is "neighbour signalled down" (3) while we were Up and never
// said otherwise, or none (0), or administratively down (7): that is the
// neighbour tearing its session down or replacing it (FRR sends Down with
// diagnostic 3 when its bgpd restarts and again when it rebuilds the BFD
// session as the BGP session comes up), and its packets arriving prove the
// path. The neighbour's BGP acts on its own BFD; a director learns no
// routes, so nothing is lost by leaving the decision to the router.
func (t Transition) Failure() bool {
	if t.From != Up || t.To != Down {
		return false
	}
	switch t.Cause {
	case CauseExpired:
		return true
	case CauseRemoteDown:
		switch t.RemoteDiag {
		case DiagNone, DiagNeighborDown, DiagAdminDown:
			return false
		}
		return true
	}
	return false
}

// Session is one BFD session's state machine (RFC 5880 §6.8) in
// asynchronous mode, the active role. It does no I/O and reads no clock:
// the caller passes the time, sends what Packet returns when Due says so,
// and calls Expire at Deadline. Not safe for concurrent use.
type Session struct {
	cfg   Config
	local uint32
	rand  func() float64 // [0, 1), for the transmit jitter

	state       State
	diag        Diag
	remote      uint32 // bfd.RemoteDiscr
	remoteState State
	remoteMinRx time.Duration // bfd.RemoteMinRxInterval
	remoteTx    time.Duration // the neighbour's Desired Min TX
	remoteMult  uint8
	polling     bool // our Poll Sequence is in progress
	lastRx      time.Time
	nextTx      time.Time
	upSince     time.Time
	adminDown   bool
}

// NewSession returns a session in Down with local discriminator local
// (nonzero, unique on this system) whose first packet is due at now.
// rnd gives the transmit jitter (nil: math/rand/v2).
func NewSession(cfg Config, local uint32, now time.Time, rnd func() float64) *Session {
	if rnd == nil {
		rnd = rand.Float64
	}
	return &Session{cfg: cfg, local: local, rand: rnd, state: Down, remoteState: Down,
		remoteMinRx: time.Microsecond, nextTx: now}
}

// State is the session's state.
func (s *Session) State() State { return s.state }

// Local is the session's own discriminator.
func (s *Session) Local() uint32 { return s.local }

// Remote is the neighbour's discriminator (0 before it is known).
func (s *Session) Remote() uint32 { return s.remote }

// Diag is the local diagnostic: why the session last went down.
func (s *Session) Diag() Diag { return s.diag }

// desiredTx is bfd.DesiredMinTxInterval: the configured interval when Up,
// at least a second otherwise.
func (s *Session) desiredTx() time.Duration {
	if s.state != Up {
		return max(s.cfg.MinTx, slowTx)
	}
	return s.cfg.MinTx
}

// txInterval is the interval between periodic packets before jitter
// (RFC 5880 §6.8.7), 0 if the neighbour wants none.
func (s *Session) txInterval() time.Duration {
	if s.remoteMinRx == 0 {
		return 0
	}
	return max(s.desiredTx(), s.remoteMinRx)
}

// DetectionTime is how long the session waits for the neighbour's next
// packet (RFC 5880 §6.8.4).
func (s *Session) DetectionTime() time.Duration {
	mult := s.remoteMult
	if mult == 0 {
		mult = s.cfg.Multiplier
	}
	return time.Duration(mult) * max(s.cfg.MinRx, s.remoteTx)
}

// Deadline is when Expire must next be called: the end of the detection
// time after the last packet received, or zero when no packet was
// received since the session last went down.
func (s *Session) Deadline() time.Time {
	if s.lastRx.IsZero() {
		return time.Time{}
	}
	return s.lastRx.Add(s.DetectionTime())
}

// NextTx is when the next periodic packet is due (zero: none, the
// neighbour asked for no packets).
func (s *Session) NextTx() time.Time { return s.nextTx }

// Due tells whether a periodic packet is due at now; if so it schedules
// the next one (with RFC 5880 §6.8.7's jitter: 75-100 % of the interval,
// 75-90 % with a detect multiplier of 1) and the caller sends Packet(false).
func (s *Session) Due(now time.Time) bool {
	if s.nextTx.IsZero() || now.Before(s.nextTx) {
		return false
	}
	s.schedule(now)
	return true
}

func (s *Session) schedule(now time.Time) {
	iv := s.txInterval()
	if iv == 0 {
		s.nextTx = time.Time{}
		return
	}
	j := 0.25
	if s.cfg.Multiplier == 1 {
		j = 0.15
	}
	s.nextTx = now.Add(time.Duration(float64(iv) * (0.75 + j*s.rand())))
}

// Packet is the control packet to send now: final answers a Poll.
func (s *Session) Packet(final bool) Packet {
	st := s.state
	if s.adminDown {
		st = AdminDown
	}
	return Packet{
		Version:               1,
		Diagnostic:            s.diag,
		State:                 st,
		Poll:                  s.polling && !final,
		Final:                 final,
		DetectTimeMultiplier:  s.cfg.Multiplier,
		MyDiscriminator:       s.local,
		YourDiscriminator:     s.remote,
		DesiredMinTxInterval:  uint32(s.desiredTx() / time.Microsecond),
		RequiredMinRxInterval: uint32(s.cfg.MinRx / time.Microsecond),
	}
}

// Receive applies a parsed packet from the neighbour (RFC 5880 §6.8.6).
// It returns the transition it caused, if any, and whether a packet with
// the Final bit must be sent at once (the neighbour polled). A packet that
// is not for this session (its Your Discriminator is not ours) changes
// nothing and returns ok false.
func (s *Session) Receive(now time.Time, p Packet) (t Transition, changed, final, ok bool) {
	if p.YourDiscriminator != 0 && p.YourDiscriminator != s.local {
		return t, false, false, false
	}
	s.remote = p.MyDiscriminator
	s.remoteState = p.State
	s.remoteMult = p.DetectTimeMultiplier
	s.remoteTx = time.Duration(p.DesiredMinTxInterval) * time.Microsecond
	oldMinRx := s.remoteMinRx
	s.remoteMinRx = time.Duration(p.RequiredMinRxInterval) * time.Microsecond
	if p.Final && s.polling {
		s.polling = false
	}
	s.lastRx = now
	final = p.Poll
	if s.adminDown {
		return t, false, final, true
	}
	from := s.state
	switch {
	case p.State == AdminDown:
		if s.state != Down {
			t, changed = s.down(now, DiagNeighborDown, CauseRemoteAdminDown, p.Diagnostic), true
		}
	case s.state == Down && p.State == Down:
		s.state, changed = Init, true
	case s.state == Down && p.State == Init, s.state == Init && (p.State == Init || p.State == Up):
		s.up(now)
		changed = true
	case s.state == Up && p.State == Down:
		t, changed = s.down(now, DiagNeighborDown, CauseRemoteDown, p.Diagnostic), true
	}
	if changed && t.Cause == CauseHandshake {
		t = Transition{From: from, To: s.state, Cause: CauseHandshake}
	}
	// A neighbour that lowered its required receive interval (or a
	// session that changed speed) gets its next packet on the new
	// schedule rather than after the old, longer interval.
	if changed || s.remoteMinRx < oldMinRx || s.nextTx.IsZero() {
		s.schedule(now)
		if changed && s.state != Down {
			// Tell the neighbour at once: the handshake's next step
			// should not wait a slow (1 s) interval.
			s.nextTx = now
		}
	}
	return t, changed, final, true
}

func (s *Session) up(now time.Time) {
	s.state, s.diag, s.upSince = Up, DiagNone, now
	// Our Desired Min TX drops from the slow rate to the configured one:
	// a Poll Sequence tells the neighbour (RFC 5880 §6.8.3).
	s.polling = s.cfg.MinTx != slowTx
}

func (s *Session) down(now time.Time, diag Diag, cause Cause, remoteDiag Diag) Transition {
	t := Transition{From: s.state, To: Down, Cause: cause, RemoteDiag: remoteDiag}
	if s.state == Up {
		t.UpFor = now.Sub(s.upSince)
	}
	s.state, s.diag, s.polling = Down, diag, false
	return t
}

// Expire checks the detection time at now: an Init or Up session that
// heard nothing within it goes Down (diagnostic 1); in any state the
// neighbour's discriminator is forgotten (RFC 5880 §6.8.1).
func (s *Session) Expire(now time.Time) (Transition, bool) {
	d := s.Deadline()
	if d.IsZero() || now.Before(d) {
		return Transition{}, false
	}
	s.lastRx = time.Time{}
	s.remote = 0
	s.remoteState = Down
	s.remoteMult, s.remoteTx = 0, 0
	if s.state != Init && s.state != Up {
		return Transition{}, false
	}
	t := s.down(now, DiagExpired, CauseExpired, DiagNone)
	s.schedule(now)
	return t, true
}

// SetAdminDown takes the session down administratively (the packets say
// AdminDown with diagnostic 7, and nothing the neighbour sends moves it)
// or, with false, back to Down to start again.
func (s *Session) SetAdminDown(now time.Time, down bool) (Transition, bool) {
	if down == s.adminDown {
		return Transition{}, false
	}
	s.adminDown = down
	s.nextTx = now
	if down {
		t := s.down(now, DiagAdminDown, CauseLocalAdminDown, DiagNone)
		t.To, s.state = AdminDown, AdminDown
		return t, true
	}
	s.state, s.diag = Down, DiagNone
	return Transition{From: AdminDown, To: Down, Cause: CauseLocalAdminDown}, true
}
