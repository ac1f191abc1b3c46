package cluster

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Limits of the gossip port's TCP streams. Anyone who reaches the port can
// open streams before anyone knows who they are, and memberlist reads a
// whole (encrypted) message, up to 20 MiB, before it can check it: eight
// streams of 20 MiB of zeros took a daemon to ~600 MiB. What a cluster
// needs is far less: a push/pull carries the services document (about
// 0.8 MB for 1,000 services of 10 backends) and the members' states.
const (
	// MaxStreamBytes is the most one stream may send; a services
	// document must leave room for the rest of a push/pull (see
	// MaxDocumentBytes).
	MaxStreamBytes = 8 << 20
	// MaxDocumentBytes is the largest services document a director
	// proposes (five times 1,000 services of 10 backends): half a
	// stream, the rest for the members' states.
	MaxDocumentBytes = MaxStreamBytes / 2
	// maxStreams is how many streams may be open at once; more are
	// closed as they arrive (their senders retry, or push/pull repairs).
	maxStreams = 32
	// streamBudget is how many bytes all open streams together may have
	// read: the bound on what they make memberlist hold.
	streamBudget = 24 << 20
)

// streamLimits are the bounds a transport enforces: the constants above
// in the daemon; tests scale them down to tell bounded from unbounded
// memory apart without sending hundreds of MiB.
type streamLimits struct {
	perStream, budget int64
	streams           int
}

var defaultStreamLimits = streamLimits{perStream: MaxStreamBytes, budget: streamBudget, streams: maxStreams}

// boundedTransport is memberlist's NetTransport with its TCP streams
// bounded: in number, in the bytes each may send, and in the bytes all of
// them together may send.
type boundedTransport struct {
	*memberlist.NetTransport
	limits  streamLimits
	streams chan net.Conn
	open    chan struct{}
	budget  atomic.Int64
	log     *rateLog
	done    chan struct{}
	once    sync.Once
}

// newBoundedTransport binds the gossip port (a free one for port 0, with
// memberlist's retries for a TCP and UDP port that are both free) and
// returns the transport and the port it is on.
func newBoundedTransport(bind string, port int, limits streamLimits, logger *log.Logger, rl *rateLog) (*boundedTransport, int, error) {
	tries := 1
	if port == 0 {
		tries = 10
	}
	var nt *memberlist.NetTransport
	var err error
	for range tries {
		nt, err = memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{bind}, BindPort: port, Logger: logger})
		if err == nil || !strings.Contains(err.Error(), "address already in use") || port != 0 {
			break
		}
	}
	if err != nil {
		return nil, 0, err
	}
	if port == 0 {
		port = nt.GetAutoBindPort()
	}
	t := &boundedTransport{NetTransport: nt, limits: limits, streams: make(chan net.Conn), open: make(chan struct{}, limits.streams),
		log: rl, done: make(chan struct{})}
	t.budget.Store(limits.budget)
	go t.admit()
	return t, port, nil
}

// StreamCh implements memberlist.Transport: the streams admitted.
func (t *boundedTransport) StreamCh() <-chan net.Conn { return t.streams }

// Shutdown implements memberlist.Transport.
// The inner transport first, while admit still hands its streams on:
// its listener blocks until the stream it accepted last is taken, and
// memberlist shuts the transport down before its own stream handler
// (closing done first deadlocked a member's leave, seen under -race).
func (t *boundedTransport) Shutdown() error {
	err := t.NetTransport.Shutdown()
	t.once.Do(func() { close(t.done) })
	return err
}

func (t *boundedTransport) admit() {
	in := t.NetTransport.StreamCh()
	for {
		var c net.Conn
		select {
		case c = <-in:
		case <-t.done:
			return
		}
		select {
		case t.open <- struct{}{}:
		default:
			t.log.print(slog.LevelWarn, "gossip: too many streams open at once, refusing", "from", c.RemoteAddr())
			c.Close()
			continue
		}
		bc := &boundedConn{Conn: c, t: t}
		select {
		case t.streams <- bc:
		case <-t.done:
			bc.Close()
			return
		}
	}
}

// errStreamTooLarge ends a stream that sent more than it may.
var errStreamTooLarge = errors.New("gossip stream larger than allowed")

// boundedConn counts what a stream reads against its own limit and the
// transport's budget, and gives both back when it is closed.
type boundedConn struct {
	net.Conn
	t      *boundedTransport
	read   int64
	closed atomic.Bool
}

func (c *boundedConn) Read(p []byte) (int, error) {
	limit := c.t.limits.perStream
	if c.read >= limit {
		return 0, c.refuse(fmt.Errorf("%w (%d KiB)", errStreamTooLarge, limit>>10))
	}
	p = p[:min(int64(len(p)), limit-c.read)]
	if c.t.budget.Load() <= 0 {
		return 0, c.refuse(errors.New("gossip streams hold too much at once"))
	}
	n, err := c.Conn.Read(p)
	c.read += int64(n)
	c.t.budget.Add(-int64(n))
	return n, err
}

func (c *boundedConn) refuse(err error) error {
	c.t.log.print(slog.LevelWarn, "gossip: stream refused", "from", c.RemoteAddr(), "err", err)
	c.Close()
	return err
}

func (c *boundedConn) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	c.t.budget.Add(c.read)
	<-c.t.open
	return c.Conn.Close()
}

// rateLog logs each kind of line at most once per interval, with how many
// were left out: an untrusted sender must not fill the disk through the
// log.
type rateLog struct {
	log      *slog.Logger
	interval time.Duration
	mu       sync.Mutex
	last     map[string]time.Time
	dropped  map[string]int
}

func newRateLog(log *slog.Logger, interval time.Duration) *rateLog {
	return &rateLog{log: log, interval: interval, last: map[string]time.Time{}, dropped: map[string]int{}}
}

// print logs msg with args at level unless a line of the same kind (msg)
// was logged within the interval.
func (r *rateLog) print(level slog.Level, msg string, args ...any) {
	r.mu.Lock()
	now := time.Now()
	if now.Sub(r.last[msg]) < r.interval {
		r.dropped[msg]++
		r.mu.Unlock()
		return
	}
	n := r.dropped[msg]
	r.last[msg], r.dropped[msg] = now, 0
	r.mu.Unlock()
	if n > 0 {
		args = append(args, "similar_lines_left_out", n)
	}
	r.log.Log(context.Background(), level, msg, args...)
}
