package health

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// A probe's timeout is measured by this process's clock and scheduler: if
// the process does not run for a while (a loaded host, a VM's vCPU taken
// away), a deadline fires when it runs again, before the answer that came
// meanwhile is read (Go's runtime runs due timers before it polls the
// network), and the backend is blamed for our own stall. The soak lab saw
// one director's HTTP checks of several real servers time out at once
// (while its connect-only checks of the same servers, whose epoll loop
// reads ready sockets before deadlines, did not), so that its table
// differed from the others'.
//
// stallWatch notices such stalls: a ticker every stallTick records each
// time it ran more than stallLate late. A probe that timed out while one
// overlapped its run is not counted (see Monitor.finish): it runs again at
// once, at most maxDiscounted times in a row, so that a daemon starved for
// good still finds a backend down, a little later.
const (
	stallTick     = 50 * time.Millisecond
	stallLate     = 100 * time.Millisecond
	maxDiscounted = 2
	stallsKept    = 32
)

// stallWatch keeps the recent stalls of this process. Safe for concurrent
// use.
type stallWatch struct {
	mu     sync.Mutex
	stalls [stallsKept]stall // a ring
	next   int
	count  uint64
}

// stall is a span in which this process did not run.
type stall struct{ from, to time.Time }

// run ticks until ctx ends, noting the late ticks.
func (w *stallWatch) run(ctx context.Context) {
	t := time.NewTicker(stallTick)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			now = time.Now() // when we run, not when the tick was due
			if late := now.Sub(last) - stallTick; late > stallLate {
				w.note(last.Add(stallTick), now)
			}
			last = now
		}
	}
}

// note records that the process did not run from from to to.
func (w *stallWatch) note(from, to time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stalls[w.next] = stall{from, to}
	w.next = (w.next + 1) % stallsKept
	w.count++
}

// during tells whether a stall overlapped [from, to].
func (w *stallWatch) during(from, to time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range w.stalls {
		if !s.to.IsZero() && s.from.Before(to) && s.to.After(from) {
			return true
		}
	}
	return false
}

// total is how many stalls were seen.
func (w *stallWatch) total() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.count
}

// timedOut tells whether a probe failed by its deadline (rather than by
// an answer: refused, a wrong status, a wrong DNS answer).
func timedOut(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
