package health

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// connector runs a Monitor's TCP checks and plain HTTP checks (the bulk of
// a director's checks) on one epoll instance: a non-blocking connect per
// check, its outcome read with SO_ERROR when the socket turns writable,
// then, for a check that talks (a conversation), its request written and
// the answer read as the socket allows, all on the one goroutine, then a
// close, as keepalived's checkers do. Go's dialer, a goroutine and a
// context per check cost twice keepalived's CPU for 10,000 targets at 1 s
// (issue 18); this is what remains of a check. Safe for concurrent use.
type connector struct {
	epfd, evfd int
	// ep is the epoll instance in Go's own poller (an epoll fd is
	// itself pollable): run waits there, parked like any goroutine on a
	// socket, instead of in a blocking epoll_wait that costs a thread
	// hand-off each time. Nil where the runtime would not take it: run
	// then blocks in epoll_wait.
	ep *os.File
	rc syscall.RawConn

	mu sync.Mutex
	// pending are the checks start queued for run's goroutine to open;
	// reqs (by socket) and byTime (by deadline) those it has opened.
	pending []*connReq
	reqs    map[int]*connReq
	byTime  connHeap
	closed  bool
}

type connReq struct {
	fd       int
	addr     netip.AddrPort
	start    time.Time
	deadline time.Time
	timeout  time.Duration
	// conv is what is said once connected (nil: nothing); sent counts
	// what of it is written, got is what has been read.
	conv               *conversation
	connected, reading bool
	sent               int
	got                []byte
	// done gets the result; undo is called instead when the connector
	// stops with the check unfinished.
	done func(Result)
	undo func()
	idx  int
}

func newConnector() (*connector, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, fmt.Errorf("epoll: %w", err)
	}
	c := &connector{epfd: epfd, evfd: evfd, reqs: map[int]*connReq{}}
	if unix.SetNonblock(epfd, true) == nil {
		ep := os.NewFile(uintptr(epfd), "epoll")
		if rc, err := ep.SyscallConn(); err == nil && ep.SetReadDeadline(time.Time{}) == nil {
			// SetReadDeadline fails on a file the poller did not take.
			c.ep, c.rc = ep, rc
		} else {
			// Not in the poller: run blocks in epoll_wait. ep owns the
			// fd all the same (it closes it in shutdown, and would when
			// collected): keep it.
			c.ep = ep
		}
	}
	return c, nil
}

// wait returns the ready events, waiting at most until deadline (zero:
// no deadline). Through the poller it parks the goroutine; the events
// ready when the deadline passes are still read, so that an answer that
// came is not taken for a timeout.
func (c *connector) wait(events []unix.EpollEvent, deadline time.Time) int {
	if c.rc == nil {
		ms := -1
		if !deadline.IsZero() {
			ms = int(max(time.Until(deadline), 0)/time.Millisecond) + 1
		}
		n, err := unix.EpollWait(c.epfd, events, ms)
		if err != nil {
			return 0
		}
		return n
	}
	c.ep.SetReadDeadline(deadline)
	n := 0
	err := c.rc.Read(func(fd uintptr) bool {
		var err error
		n, err = unix.EpollWait(int(fd), events, 0)
		if err != nil {
			n = 0
			return !errors.Is(err, unix.EINTR)
		}
		return n > 0
	})
	if err != nil && n == 0 {
		// The deadline (or an error): what is ready now.
		if m, err := unix.EpollWait(c.epfd, events, 0); err == nil {
			n = m
		}
	}
	return n
}

// conversation is what a check says and expects once connected: send is
// written, then the answer is read until judge decides. judge is given
// everything read so far and end, nil while the answer may go on, else
// why it ended (io.EOF when the peer closed, the read's error, or a
// timeout wrapping os.ErrDeadlineExceeded); with end set it must decide.
// At most maxAnswer bytes are read.
type conversation struct {
	send  []byte
	judge func(got []byte, end error) (Result, bool)
}

const maxAnswer = 64 << 10

var errAnswerTooLong = fmt.Errorf("no decision in the first %d KiB", maxAnswer>>10)

// start queues a connect to addr, and the conversation after it if conv
// is not nil, that ends within timeout; done (or, if the connector stops
// first, undo) is called exactly once, from start itself or from run's
// goroutine. The connect itself is made by run's goroutine: every system
// call on the checks' sockets is made by one goroutine, as keepalived's
// checker does them on its one thread (a connect and a close on two
// threads at once contend for the same kernel locks: under the VM lab's
// emulation that cost more than the checks themselves).
func (c *connector) start(addr netip.AddrPort, timeout time.Duration, conv *conversation, done func(Result), undo func()) {
	r := &connReq{addr: addr, timeout: timeout, conv: conv, done: done, undo: undo}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		undo()
		return
	}
	first := len(c.pending) == 0
	c.pending = append(c.pending, r)
	c.mu.Unlock()
	if first {
		c.poke()
	}
}

// openLocked makes r's socket and starts its connect; it reports whether
// r is finished already (Latency set), as when the connect failed at once.
func (c *connector) openLocked(r *connReq, now time.Time) (Result, bool) {
	r.start, r.deadline = now, now.Add(r.timeout)
	fail := func(err error) (Result, bool) {
		return Result{Err: fmt.Errorf("dial tcp %s: %w", r.addr, err), Latency: time.Since(now)}, true
	}
	family, sa := unix.AF_INET, unix.Sockaddr(nil)
	if a := r.addr.Addr(); a.Is4() || a.Is4In6() {
		sa = &unix.SockaddrInet4{Port: int(r.addr.Port()), Addr: a.Unmap().As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(r.addr.Port()), Addr: a.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fail(fmt.Errorf("socket: %w", err))
	}
	// The connection ends with a reset, as HAProxy's checks do: no FIN
	// exchange and no TIME_WAIT socket per check (10,000 checks a second
	// would keep 600,000 of them, past the kernel's tcp_max_tw_buckets).
	unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	switch err := unix.Connect(fd, sa); {
	case err == nil && r.conv == nil:
		unix.Close(fd)
		return Result{OK: true, Detail: "connected", Latency: time.Since(now)}, true
	case err == nil:
		// Connected at once; the conversation goes on when the socket
		// turns writable.
	case !errors.Is(err, unix.EINPROGRESS):
		unix.Close(fd)
		return fail(fmt.Errorf("connect: %w", err))
	}
	if err := unix.EpollCtl(c.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLOUT, Fd: int32(fd)}); err != nil {
		unix.Close(fd)
		return fail(fmt.Errorf("epoll: %w", err))
	}
	r.fd = fd
	c.reqs[fd] = r
	heap.Push(&c.byTime, r)
	return Result{}, false
}

func (c *connector) poke() {
	var one = [8]byte{1}
	unix.Write(c.evfd, one[:])
}

// finishLocked takes r out of the connector and closes its socket.
func (c *connector) finishLocked(r *connReq) {
	delete(c.reqs, r.fd)
	heap.Remove(&c.byTime, r.idx)
	unix.Close(r.fd) // leaves the epoll set with it
}

// run waits for the checks' outcomes and deadlines until ctx is done;
// then it closes the unfinished checks (undo) and the epoll instance.
func (c *connector) run(ctx context.Context) {
	stop := context.AfterFunc(ctx, c.poke)
	defer stop()
	events := make([]unix.EpollEvent, 256)
	var results []func()
	var pending []*connReq
	for {
		if ctx.Err() != nil {
			c.shutdown()
			return
		}
		results = results[:0]
		c.mu.Lock()
		// The queued checks start; their slice is kept for the next.
		pending, c.pending = c.pending, pending[:0]
		now := time.Now()
		for i, r := range pending {
			if res, fin := c.openLocked(r, now); fin {
				done := r.done
				results = append(results, func() { done(res) })
			}
			pending[i] = nil
		}
		var wakeAt time.Time
		if len(c.byTime) > 0 {
			wakeAt = c.byTime[0].deadline
		}
		c.mu.Unlock()
		for _, f := range results {
			f()
		}
		n := c.wait(events, wakeAt)
		now = time.Now()
		results = results[:0]
		c.mu.Lock()
		for _, ev := range events[:max(n, 0)] {
			fd := int(ev.Fd)
			if fd == c.evfd {
				var buf [8]byte
				unix.Read(c.evfd, buf[:])
				continue
			}
			r, ok := c.reqs[fd]
			if !ok {
				continue
			}
			res, fin := c.step(r)
			if !fin {
				continue
			}
			res.Latency = now.Sub(r.start)
			c.finishLocked(r)
			done := r.done
			results = append(results, func() { done(res) })
		}
		for len(c.byTime) > 0 && !c.byTime[0].deadline.After(now) {
			r := c.byTime[0]
			c.finishLocked(r)
			// The words of Go's dialer: "i/o timeout".
			res := Result{Err: fmt.Errorf("timed out after %s: dial tcp %s: %w", r.timeout, r.addr, os.ErrDeadlineExceeded)}
			if r.connected {
				// As Run words a probe's timeout.
				res, _ = r.conv.judge(r.got, fmt.Errorf("read tcp %s: %w", r.addr, os.ErrDeadlineExceeded))
				if !res.OK {
					res.Err = fmt.Errorf("timed out after %s: %w", r.timeout, res.Err)
				}
			}
			res.Latency = now.Sub(r.start)
			done := r.done
			results = append(results, func() { done(res) })
		}
		c.mu.Unlock()
		for _, f := range results {
			f()
		}
	}
}

// step moves r on after its socket turned ready: connected (or not),
// then its conversation written and read as far as the socket allows.
// It reports whether r is finished, with its result (Latency unset).
// Called with c.mu held.
func (c *connector) step(r *connReq) (Result, bool) {
	if !r.connected {
		if soErr, err := unix.GetsockoptInt(r.fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || soErr != 0 {
			if err == nil {
				err = syscall.Errno(soErr)
			}
			return Result{Err: fmt.Errorf("dial tcp %s: connect: %w", r.addr, err)}, true
		}
		if r.conv == nil {
			return Result{OK: true, Detail: "connected"}, true
		}
		r.connected = true
	}
	if !r.reading {
		if r.sent < len(r.conv.send) {
			n, err := unix.Write(r.fd, r.conv.send[r.sent:])
			if errors.Is(err, unix.EAGAIN) {
				return Result{}, false
			}
			if err != nil {
				return Result{Err: fmt.Errorf("send: write tcp %s: %w", r.addr, err)}, true
			}
			if r.sent += n; r.sent < len(r.conv.send) {
				return Result{}, false
			}
		}
		r.reading = true
		if err := unix.EpollCtl(c.epfd, unix.EPOLL_CTL_MOD, r.fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(r.fd)}); err != nil {
			return Result{Err: fmt.Errorf("epoll: %w", err)}, true
		}
		// The answer is rarely there yet: wait for it.
		return Result{}, false
	}
	for {
		if len(r.got) == cap(r.got) {
			r.got = slices.Grow(r.got, min(max(2*cap(r.got), 512), maxAnswer)-len(r.got))
		}
		n, err := unix.Read(r.fd, r.got[len(r.got):cap(r.got)])
		switch {
		case errors.Is(err, unix.EAGAIN):
			return Result{}, false
		case err != nil:
			return r.conv.judge(r.got, fmt.Errorf("read tcp %s: %w", r.addr, err))
		case n == 0:
			return r.conv.judge(r.got, io.EOF)
		}
		r.got = r.got[:len(r.got)+n]
		if res, ok := r.conv.judge(r.got, nil); ok {
			return res, true
		}
		if len(r.got) >= maxAnswer {
			return r.conv.judge(r.got, errAnswerTooLong)
		}
	}
}

func (c *connector) shutdown() {
	c.mu.Lock()
	c.closed = true
	var undos []func()
	for _, r := range c.reqs {
		unix.Close(r.fd)
		undos = append(undos, r.undo)
	}
	for _, r := range c.pending {
		undos = append(undos, r.undo)
	}
	c.reqs, c.byTime, c.pending = nil, nil, nil
	c.mu.Unlock()
	if c.ep != nil {
		c.ep.Close()
	} else {
		unix.Close(c.epfd)
	}
	unix.Close(c.evfd)
	for _, u := range undos {
		u()
	}
}

// connHeap orders checks by deadline.
type connHeap []*connReq

func (h connHeap) Len() int           { return len(h) }
func (h connHeap) Less(i, j int) bool { return h[i].deadline.Before(h[j].deadline) }
func (h connHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *connHeap) Push(x any) {
	r := x.(*connReq)
	r.idx = len(*h)
	*h = append(*h, r)
}
func (h *connHeap) Pop() any {
	old := *h
	r := old[len(old)-1]
	*h = old[:len(old)-1]
	return r
}
