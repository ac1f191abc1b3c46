package health

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// connector runs a Monitor's plain TCP checks (tcp without send or expect:
// the bulk of a director's checks) on one epoll instance: a non-blocking
// connect per check, its outcome read with SO_ERROR when the socket turns
// writable, then a close, as keepalived's TCP_CHECK does. Go's dialer,
// a goroutine and a context per check cost twice keepalived's CPU for
// 10,000 targets at 1 s (issue 18); this is what remains of a check.
// Safe for concurrent use.
type connector struct {
	epfd, evfd int

	mu     sync.Mutex
	reqs   map[int]*connReq // by socket
	byTime connHeap
	// wakeAt is the latest the loop sleeps until (zero: no deadline
	// pending); a request due earlier wakes it through evfd.
	wakeAt time.Time
	closed bool
}

type connReq struct {
	fd       int
	addr     netip.AddrPort
	start    time.Time
	deadline time.Time
	timeout  time.Duration
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
	return &connector{epfd: epfd, evfd: evfd, reqs: map[int]*connReq{}}, nil
}

// start begins a connect to addr that ends within timeout; done (or, if
// the connector stops first, undo) is called exactly once, from start
// itself or from run's goroutine.
func (c *connector) start(addr netip.AddrPort, timeout time.Duration, done func(Result), undo func()) {
	now := time.Now()
	fail := func(err error) {
		done(Result{Err: fmt.Errorf("dial tcp %s: %w", addr, err), Latency: time.Since(now)})
	}
	family, sa := unix.AF_INET, unix.Sockaddr(nil)
	if a := addr.Addr(); a.Is4() || a.Is4In6() {
		sa = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: a.Unmap().As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(addr.Port()), Addr: a.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fail(fmt.Errorf("socket: %w", err))
		return
	}
	// The connection ends with a reset, as HAProxy's checks do: no FIN
	// exchange and no TIME_WAIT socket per check (10,000 checks a second
	// would keep 600,000 of them, past the kernel's tcp_max_tw_buckets).
	unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	switch err := unix.Connect(fd, sa); {
	case err == nil:
		unix.Close(fd)
		done(Result{OK: true, Detail: "connected", Latency: time.Since(now)})
		return
	case !errors.Is(err, unix.EINPROGRESS):
		unix.Close(fd)
		fail(fmt.Errorf("connect: %w", err))
		return
	}
	r := &connReq{fd: fd, addr: addr, start: now, deadline: now.Add(timeout), timeout: timeout, done: done, undo: undo}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		unix.Close(fd)
		undo()
		return
	}
	if err := unix.EpollCtl(c.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLOUT, Fd: int32(fd)}); err != nil {
		c.mu.Unlock()
		unix.Close(fd)
		fail(fmt.Errorf("epoll: %w", err))
		return
	}
	c.reqs[fd] = r
	heap.Push(&c.byTime, r)
	wake := c.wakeAt.IsZero() || r.deadline.Before(c.wakeAt)
	c.mu.Unlock()
	if wake {
		c.poke()
	}
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
	for {
		c.mu.Lock()
		wait := -1
		c.wakeAt = time.Time{}
		if len(c.byTime) > 0 {
			c.wakeAt = c.byTime[0].deadline
			wait = int(max(time.Until(c.wakeAt), 0)/time.Millisecond) + 1
		}
		c.mu.Unlock()
		if ctx.Err() != nil {
			c.shutdown()
			return
		}
		n, err := unix.EpollWait(c.epfd, events, wait)
		if err != nil && !errors.Is(err, unix.EINTR) {
			n = 0
		}
		now := time.Now()
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
			res := Result{OK: true, Detail: "connected", Latency: now.Sub(r.start)}
			if soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || soErr != 0 {
				if err == nil {
					err = syscall.Errno(soErr)
				}
				res = Result{Err: fmt.Errorf("dial tcp %s: connect: %w", r.addr, err), Latency: now.Sub(r.start)}
			}
			c.finishLocked(r)
			done := r.done
			results = append(results, func() { done(res) })
		}
		for len(c.byTime) > 0 && !c.byTime[0].deadline.After(now) {
			r := c.byTime[0]
			c.finishLocked(r)
			// The words of Go's dialer: "i/o timeout".
			res := Result{Err: fmt.Errorf("timed out after %s: dial tcp %s: %w", r.timeout, r.addr, os.ErrDeadlineExceeded), Latency: now.Sub(r.start)}
			done := r.done
			results = append(results, func() { done(res) })
		}
		c.mu.Unlock()
		for _, f := range results {
			f()
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
	c.reqs, c.byTime = nil, nil
	c.mu.Unlock()
	unix.Close(c.epfd)
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
