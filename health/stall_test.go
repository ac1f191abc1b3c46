package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"
)

func TestStallWatchDuring(t *testing.T) {
	var w stallWatch
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	w.note(t0.Add(time.Second), t0.Add(1500*time.Millisecond))
	for _, tc := range []struct {
		from, to time.Duration
		want     bool
	}{
		{0, 900 * time.Millisecond, false},
		{800 * time.Millisecond, 1200 * time.Millisecond, true},  // the stall began inside
		{1100 * time.Millisecond, 1300 * time.Millisecond, true}, // inside the stall
		{1400 * time.Millisecond, 2 * time.Second, true},         // the stall ended inside
		{1600 * time.Millisecond, 2 * time.Second, false},
	} {
		if got := w.during(t0.Add(tc.from), t0.Add(tc.to)); got != tc.want {
			t.Errorf("during(%s, %s) = %v, want %v", tc.from, tc.to, got, tc.want)
		}
	}
	// The ring keeps the newest stallsKept.
	for i := range stallsKept {
		w.note(t0.Add(time.Hour+time.Duration(i)*time.Second), t0.Add(time.Hour+time.Duration(i)*time.Second+time.Millisecond))
	}
	if w.during(t0.Add(time.Second), t0.Add(1500*time.Millisecond)) || w.total() != stallsKept+1 {
		t.Errorf("the oldest stall is still there, or the count is wrong (%d)", w.total())
	}
}

func TestTimedOut(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errors.New("connection refused"), false},
		{fmt.Errorf("timed out after 400ms: dial tcp 10.0.0.1:80: %w", os.ErrDeadlineExceeded), true},
		{fmt.Errorf("read the answer: %w", context.DeadlineExceeded), true},
		{&net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}, true},
		{fmt.Errorf("HTTP 503"), false},
	} {
		if got := timedOut(tc.err); got != tc.want {
			t.Errorf("timedOut(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
