package ipvs

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The kernel's IPVS connection synchronisation (ip_vs_sync.c): a master
// daemon sends the connections this host handles to a multicast group, a
// backup daemon creates the connections it hears in this host's table.
// Both may run at once, which is what a tier of active directors wants:
// each one's connections are on every other, so a flow ECMP moves keeps
// its real server.

// SyncState is a sync daemon's role.
type SyncState uint32

// Sync daemon roles (IP_VS_STATE_MASTER and IP_VS_STATE_BACKUP).
const (
	SyncMaster SyncState = 1
	SyncBackup SyncState = 2
)

func (s SyncState) String() string {
	switch s {
	case SyncMaster:
		return "master"
	case SyncBackup:
		return "backup"
	}
	return fmt.Sprintf("state %d", uint32(s))
}

// SyncDaemon is one of the kernel's sync daemons and its settings. Zero
// settings are the kernel's defaults when starting one (group
// 224.0.0.81, port 8848, TTL 1, the length from the interface's MTU);
// the kernel reports them filled in.
type SyncDaemon struct {
	State     SyncState
	Interface string
	SyncID    uint8
	Group     netip.Addr
	Port      uint16
	TTL       uint8
	MaxLen    uint16
}

func (d SyncDaemon) String() string {
	return fmt.Sprintf("%s on %s sync id %d group %s port %d ttl %d maxlen %d", d.State, d.Interface, d.SyncID, d.Group, d.Port, d.TTL, d.MaxLen)
}

// Satisfies reports whether a running daemon d is what want asks for
// (want's zero settings: any value).
func (d SyncDaemon) Satisfies(want SyncDaemon) bool {
	return d.State == want.State && d.Interface == want.Interface && d.SyncID == want.SyncID &&
		(!want.Group.IsValid() || d.Group == want.Group) && (want.Port == 0 || d.Port == want.Port) &&
		(want.TTL == 0 || d.TTL == want.TTL) && (want.MaxLen == 0 || d.MaxLen == want.MaxLen)
}

// Syncer is a Dataplane that runs sync daemons (the kernel; memory, for
// tests of the callers).
type Syncer interface {
	// SyncDaemons lists the running daemons.
	SyncDaemons(ctx context.Context) ([]SyncDaemon, error)
	// StartSyncDaemon starts d (an error if one of its state runs).
	StartSyncDaemon(ctx context.Context, d SyncDaemon) error
	// StopSyncDaemon stops the daemon of state s (an error if none runs).
	StopSyncDaemon(ctx context.Context, s SyncState) error
}

// SyncPlan is what turns the running daemons have into want: the states
// to stop (absent from want, or running with other settings) and the
// daemons to start, stops first. Pure.
func SyncPlan(have, want []SyncDaemon) (stop []SyncState, start []SyncDaemon) {
	running := map[SyncState]SyncDaemon{}
	for _, d := range have {
		running[d.State] = d
	}
	wanted := map[SyncState]bool{}
	for _, w := range want {
		wanted[w.State] = true
		d, ok := running[w.State]
		switch {
		case !ok:
			start = append(start, w)
		case !d.Satisfies(w):
			stop = append(stop, w.State)
			start = append(start, w)
		}
	}
	for _, d := range have {
		if !wanted[d.State] {
			stop = append(stop, d.State)
		}
	}
	return stop, start
}

// SyncTo makes the daemons running on s what want says (SyncPlan, stops
// first), and returns what runs afterwards, what it did (for the log) and
// every failure joined; it goes on past a failure, so that one daemon
// that cannot start does not keep the other from running.
func SyncTo(ctx context.Context, s Syncer, want []SyncDaemon) (running []SyncDaemon, did []string, err error) {
	have, err := s.SyncDaemons(ctx)
	if err != nil {
		return nil, nil, err
	}
	stop, start := SyncPlan(have, want)
	var errs []error
	for _, state := range stop {
		if err := s.StopSyncDaemon(ctx, state); err != nil {
			errs = append(errs, err)
			continue
		}
		did = append(did, "stopped "+state.String())
	}
	for _, d := range start {
		if err := s.StartSyncDaemon(ctx, d); err != nil {
			errs = append(errs, err)
			continue
		}
		did = append(did, "started "+d.String())
	}
	if len(stop)+len(start) > 0 {
		if have, err = s.SyncDaemons(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return have, did, errors.Join(errs...)
}

// Generic netlink of the sync daemons (linux/ip_vs.h).
const (
	ipvsCmdNewDaemon  = 9
	ipvsCmdDelDaemon  = 10
	ipvsCmdGetDaemon  = 11
	ipvsCmdAttrDaemon = 3

	ipvsDaemonAttrState      = 1
	ipvsDaemonAttrMcastIfn   = 2
	ipvsDaemonAttrSyncID     = 3
	ipvsDaemonAttrSyncMaxLen = 4
	ipvsDaemonAttrMcastGroup = 5
	ipvsDaemonAttrMcastGrp6  = 6
	ipvsDaemonAttrMcastPort  = 7
	ipvsDaemonAttrMcastTTL   = 8
)

// appendDaemonRequest appends one sync daemon request to b: NEW (d's
// settings), DEL (its state only) or GET (a dump, no attributes).
func appendDaemonRequest(b []byte, family uint16, cmd uint8, d SyncDaemon, seq uint32) []byte {
	ne := binary.NativeEndian
	flags := uint16(unix.NLM_F_REQUEST | unix.NLM_F_ACK)
	if cmd == ipvsCmdGetDaemon {
		flags = unix.NLM_F_REQUEST | unix.NLM_F_DUMP
	}
	start := len(b)
	b = ne.AppendUint32(b, 0) // length, set below
	b = ne.AppendUint16(b, family)
	b = ne.AppendUint16(b, flags)
	b = ne.AppendUint32(b, seq)
	b = ne.AppendUint32(b, 0)
	b = append(b, cmd, 1, 0, 0)
	if cmd != ipvsCmdGetDaemon {
		nest := len(b)
		b = appendAttr(b, ipvsCmdAttrDaemon, nil)
		b = appendAttr(b, ipvsDaemonAttrState, ne.AppendUint32(nil, uint32(d.State)))
		if cmd == ipvsCmdNewDaemon {
			b = appendAttr(b, ipvsDaemonAttrMcastIfn, append([]byte(d.Interface), 0))
			b = appendAttr(b, ipvsDaemonAttrSyncID, ne.AppendUint32(nil, uint32(d.SyncID)))
			if d.MaxLen != 0 {
				b = appendAttr(b, ipvsDaemonAttrSyncMaxLen, ne.AppendUint16(nil, d.MaxLen))
			}
			if d.Group.Is4() {
				g := d.Group.As4()
				b = appendAttr(b, ipvsDaemonAttrMcastGroup, g[:])
			} else if d.Group.IsValid() {
				g := d.Group.As16()
				b = appendAttr(b, ipvsDaemonAttrMcastGrp6, g[:])
			}
			if d.Port != 0 {
				// Host order, both ways (nla_get_u16 and nla_put_u16;
				// the kernel converts when it binds): big-endian here
				// read back byte-swapped from the VM's kernel.
				b = appendAttr(b, ipvsDaemonAttrMcastPort, ne.AppendUint16(nil, d.Port))
			}
			if d.TTL != 0 {
				b = appendAttr(b, ipvsDaemonAttrMcastTTL, []byte{d.TTL})
			}
		}
		ne.PutUint16(b[nest:], uint16(len(b)-nest))
	}
	ne.PutUint32(b[start:], uint32(len(b)-start))
	return b
}

// parseDaemon reads one GET_DAEMON answer (after the generic netlink
// header).
func parseDaemon(data []byte) (SyncDaemon, error) {
	attrs, err := nl.ParseRouteAttr(data)
	if err != nil {
		return SyncDaemon{}, err
	}
	var d SyncDaemon
	ne := binary.NativeEndian
	for _, a := range attrs {
		if a.Attr.Type&^unix.NLA_F_NESTED != ipvsCmdAttrDaemon {
			continue
		}
		inner, err := nl.ParseRouteAttr(a.Value)
		if err != nil {
			return SyncDaemon{}, err
		}
		for _, x := range inner {
			v := x.Value
			switch x.Attr.Type {
			case ipvsDaemonAttrState:
				if len(v) >= 4 {
					d.State = SyncState(ne.Uint32(v))
				}
			case ipvsDaemonAttrMcastIfn:
				d.Interface = strings.TrimRight(string(v), "\x00")
			case ipvsDaemonAttrSyncID:
				if len(v) >= 4 {
					d.SyncID = uint8(ne.Uint32(v))
				}
			case ipvsDaemonAttrSyncMaxLen:
				if len(v) >= 2 {
					d.MaxLen = ne.Uint16(v)
				}
			case ipvsDaemonAttrMcastGroup:
				if len(v) == 4 {
					d.Group = netip.AddrFrom4([4]byte(v))
				}
			case ipvsDaemonAttrMcastGrp6:
				if len(v) == 16 {
					d.Group = netip.AddrFrom16([16]byte(v))
				}
			case ipvsDaemonAttrMcastPort:
				if len(v) >= 2 {
					d.Port = ne.Uint16(v)
				}
			case ipvsDaemonAttrMcastTTL:
				if len(v) >= 1 {
					d.TTL = v[0]
				}
			}
		}
	}
	if d.State == 0 {
		return SyncDaemon{}, errors.New("sync daemon answer without a state")
	}
	return d, nil
}

// daemonRequest sends one sync daemon request and returns the answers'
// payloads (GET) or the kernel's error (NEW, DEL).
func (b *batcher) daemonRequest(cmd uint8, d SyncDaemon) ([]SyncDaemon, error) {
	b.seq++
	seq := b.seq
	b.buf = appendDaemonRequest(b.buf[:0], b.family, cmd, d, seq)
	if err := unix.Sendto(b.sock.GetFd(), b.buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	var out []SyncDaemon
	for {
		msgs, _, err := b.sock.Receive()
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if m.Header.Seq != seq {
				continue
			}
			switch m.Header.Type {
			case syscall.NLMSG_DONE:
				return out, nil
			case syscall.NLMSG_ERROR:
				if len(m.Data) < 4 {
					return nil, errors.New("short netlink error")
				}
				if code := int32(nl.NativeEndian().Uint32(m.Data[0:4])); code != 0 {
					return nil, syscall.Errno(-code)
				}
				return out, nil // the acknowledgement of NEW or DEL
			default:
				if len(m.Data) < 4 {
					continue
				}
				sd, err := parseDaemon(m.Data[4:]) // after the genl header
				if err != nil {
					return nil, err
				}
				out = append(out, sd)
			}
		}
	}
}

// SyncDaemons implements Syncer.
func (k *Kernel) SyncDaemons(ctx context.Context) ([]SyncDaemon, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	ds, err := k.b.daemonRequest(ipvsCmdGetDaemon, SyncDaemon{})
	if err != nil {
		return nil, fmt.Errorf("list IPVS sync daemons: %w", err)
	}
	return ds, nil
}

// StartSyncDaemon implements Syncer.
func (k *Kernel) StartSyncDaemon(ctx context.Context, d SyncDaemon) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, err := k.b.daemonRequest(ipvsCmdNewDaemon, d); err != nil {
		return fmt.Errorf("start IPVS sync daemon (%s): %w", d, err)
	}
	return nil
}

// StopSyncDaemon implements Syncer.
func (k *Kernel) StopSyncDaemon(ctx context.Context, s SyncState) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, err := k.b.daemonRequest(ipvsCmdDelDaemon, SyncDaemon{State: s}); err != nil {
		return fmt.Errorf("stop IPVS sync daemon (%s): %w", s, err)
	}
	return nil
}

// SyncDaemons implements Syncer for tests: the daemons started, with the
// kernel's defaults filled in.
func (m *Memory) SyncDaemons(ctx context.Context) ([]SyncDaemon, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]SyncDaemon(nil), m.daemons...), nil
}

// StartSyncDaemon implements Syncer.
func (m *Memory) StartSyncDaemon(ctx context.Context, d SyncDaemon) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, x := range m.daemons {
		if x.State == d.State {
			return fmt.Errorf("start IPVS sync daemon (%s): %w", d, syscall.EEXIST)
		}
	}
	if !d.Group.IsValid() {
		d.Group = netip.AddrFrom4([4]byte{224, 0, 0, 81})
	}
	if d.Port == 0 {
		d.Port = 8848
	}
	if d.TTL == 0 {
		d.TTL = 1
	}
	if d.MaxLen == 0 {
		d.MaxLen = 1472
	}
	m.daemons = append(m.daemons, d)
	return nil
}

// StopSyncDaemon implements Syncer.
func (m *Memory) StopSyncDaemon(ctx context.Context, s SyncState) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, x := range m.daemons {
		if x.State == s {
			m.daemons = append(m.daemons[:i], m.daemons[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("stop IPVS sync daemon (%s): %w", s, syscall.ESRCH)
}
