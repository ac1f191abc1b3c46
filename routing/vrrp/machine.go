package vrrp

import (
	"fmt"
	"net/netip"
	"time"
)

// State is a virtual router's state (RFC 5798 6.4).
type State int

// States.
const (
	Initialize State = iota
	Backup
	Master
)

func (s State) String() string {
	switch s {
	case Initialize:
		return "initialize"
	case Backup:
		return "backup"
	case Master:
		return "master"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// Config is one virtual router as this director runs it.
type Config struct {
	// Version is Version3 (0 means 3) or Version2, whose timers differ:
	// its skew time is in seconds whatever the interval, and a backup
	// does not learn the master's interval (a different one is a
	// misconfiguration whose packets the driver drops, RFC 3768 7.1).
	Version  uint8
	VRID     uint8
	Priority uint8
	// Interval is this router's advertisement interval.
	Interval time.Duration
	// Preempt lets a higher-priority backup take over from a
	// lower-priority master; PreemptDelay holds that off after start
	// (keepalived's preempt_delay), so a rebooted director does not take
	// its VIP back before it is ready.
	Preempt      bool
	PreemptDelay time.Duration
	// Self is this router's primary address on the interface: it breaks
	// ties between equal priorities (the higher address wins).
	Self netip.Addr
}

// ActionKind is what the machine asks its driver to do.
type ActionKind int

// Actions, in the order a driver must carry them out.
const (
	// Send an advertisement with Priority.
	Send ActionKind = iota
	// TakeOver: add the virtual addresses and announce them (gratuitous
	// ARP, unsolicited neighbour advertisements).
	TakeOver
	// Release: remove the virtual addresses.
	Release
)

// Action is one thing to do.
type Action struct {
	Kind     ActionKind
	Priority uint8
}

// Machine is the VRRP state machine of one virtual router, without I/O:
// events come in with the time they happened, actions go out. Time never
// passes inside it, so it is tested without sleeping. Not safe for
// concurrent use.
type Machine struct {
	cfg      Config
	state    State
	started  time.Time
	masterIv time.Duration // Master_Adver_Interval
	deadline time.Time     // Adver_Timer (master) or Master_Down_Timer (backup)
	// Master is the current master's address as last heard (backup).
	master netip.Addr
	// heard is the highest priority heard from another router; standIn
	// is set when this router became master below it (that router failed
	// or left): it holds the addresses for it.
	heard   uint8
	standIn bool
}

// StandIn reports whether this master holds the addresses in place of a
// higher-priority router that failed or left (it will give them back when
// that one returns and preempts).
func (m *Machine) StandIn() bool { return m.state == Master && m.standIn }

// NewMachine returns a machine in Initialize.
func NewMachine(cfg Config) *Machine { return &Machine{cfg: cfg, masterIv: cfg.Interval} }

// State returns the current state.
func (m *Machine) State() State { return m.state }

// Deadline is when Tick must next be called (zero in Initialize).
func (m *Machine) Deadline() time.Time { return m.deadline }

// Master is the master's address as this backup last heard it.
func (m *Machine) Master() netip.Addr { return m.master }

// Priority is the priority this router advertises now.
func (m *Machine) Priority() uint8 { return m.cfg.Priority }

// skew is Skew_Time: ((256 - Priority) * Master_Adver_Interval) / 256
// (v3), ((256 - Priority) / 256) seconds (v2).
func (m *Machine) skew() time.Duration {
	if m.cfg.Version == Version2 {
		return time.Duration(256-int(m.cfg.Priority)) * time.Second / 256
	}
	return time.Duration(256-int(m.cfg.Priority)) * m.masterIv / 256
}

// learn takes the master's advertisement interval (v3 only).
func (m *Machine) learn(a Advert) {
	if m.cfg.Version != Version2 {
		m.masterIv = a.Interval
	}
}

// MasterDownInterval is 3 * Master_Adver_Interval + Skew_Time: how long a
// backup waits without advertisements before it takes over.
func (m *Machine) MasterDownInterval() time.Duration { return 3*m.masterIv + m.skew() }

func (m *Machine) becomeMaster(now time.Time) []Action {
	m.standIn = m.heard > m.cfg.Priority
	m.state = Master
	m.master = m.cfg.Self
	m.deadline = now.Add(m.cfg.Interval)
	return []Action{{Kind: Send, Priority: m.cfg.Priority}, {Kind: TakeOver}}
}

func (m *Machine) becomeBackup(now time.Time, release bool) []Action {
	m.state = Backup
	m.deadline = now.Add(m.MasterDownInterval())
	if release {
		return []Action{{Kind: Release}}
	}
	return nil
}

// Start leaves Initialize (RFC 5798 6.4.1): the address owner becomes
// master at once, every other router a backup.
func (m *Machine) Start(now time.Time) []Action {
	if m.state != Initialize {
		return nil
	}
	m.started = now
	m.masterIv = m.cfg.Interval
	if m.cfg.Priority == PriorityOwner {
		return m.becomeMaster(now)
	}
	return m.becomeBackup(now, false)
}

// Stop returns to Initialize; a master first sends priority 0 so that a
// backup takes over after its skew time, not the master-down interval.
func (m *Machine) Stop(now time.Time) []Action {
	var out []Action
	if m.state == Master {
		out = []Action{{Kind: Send, Priority: PriorityStop}, {Kind: Release}}
	}
	m.state, m.deadline = Initialize, time.Time{}
	return out
}

// Tick fires the running timer if its deadline has passed.
func (m *Machine) Tick(now time.Time) []Action {
	if m.deadline.IsZero() || now.Before(m.deadline) {
		return nil
	}
	switch m.state {
	case Master:
		m.deadline = now.Add(m.cfg.Interval)
		return []Action{{Kind: Send, Priority: m.cfg.Priority}}
	case Backup:
		if m.cfg.Priority == PriorityStop {
			// Resigned (health tracking with priority 0): never take
			// over; keep listening.
			m.deadline = now.Add(m.MasterDownInterval())
			return nil
		}
		return m.becomeMaster(now)
	}
	return nil
}

// Receive handles an advertisement from src (already checked: right VRID,
// valid packet).
func (m *Machine) Receive(now time.Time, src netip.Addr, a Advert) []Action {
	// The highest priority heard from another router: while it is above
	// ours, holding the addresses is standing in for it (even if others
	// stood in between).
	m.heard = max(m.heard, a.Priority)
	switch m.state {
	case Backup:
		if a.Priority == PriorityStop {
			// The master is leaving: take over after the skew time.
			m.deadline = now.Add(m.skew())
			return nil
		}
		preempting := m.cfg.Preempt && now.Sub(m.started) >= m.cfg.PreemptDelay
		if !preempting || a.Priority >= m.cfg.Priority {
			m.learn(a)
			m.master = src
			m.deadline = now.Add(m.MasterDownInterval())
		}
		// Else: a lower-priority master and we preempt: let the
		// master-down timer run out and take over.
		return nil
	case Master:
		if a.Priority == PriorityStop {
			// Another master left: assert ourselves at once.
			m.deadline = now.Add(m.cfg.Interval)
			return []Action{{Kind: Send, Priority: m.cfg.Priority}}
		}
		if a.Priority > m.cfg.Priority || (a.Priority == m.cfg.Priority && src.Compare(m.cfg.Self) > 0) {
			m.learn(a)
			m.master = src
			return m.becomeBackup(now, true)
		}
	}
	return nil
}

// SetPriority changes the priority this router advertises (health
// tracking). A master with a lower priority keeps the role until a
// higher-priority backup that preempts takes it; priority 0 resigns at
// once: a master sends priority 0 and releases, and a backup never takes
// over while it stays 0.
func (m *Machine) SetPriority(now time.Time, p uint8) []Action {
	if p == m.cfg.Priority {
		return nil
	}
	m.cfg.Priority = p
	if m.state == Master && p == PriorityStop {
		m.state = Backup
		m.deadline = now.Add(m.MasterDownInterval())
		return []Action{{Kind: Send, Priority: PriorityStop}, {Kind: Release}}
	}
	if m.state == Master {
		// Advertise the new priority now, not at the next interval.
		m.deadline = now.Add(m.cfg.Interval)
		return []Action{{Kind: Send, Priority: p}}
	}
	return nil
}
