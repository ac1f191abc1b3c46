package routing

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// recorder is an Announcer that keeps every Set.
type recorder struct {
	mu   sync.Mutex
	sets [][]Announcement
	err  error
}

func (r *recorder) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (r *recorder) Status() Status                { return Status{} }
func (r *recorder) Set(ctx context.Context, anns []Announcement) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	r.sets = append(r.sets, anns)
	return r.err
}

func TestDrain(t *testing.T) {
	anns := []Announcement{
		{Prefix: netip.MustParsePrefix("192.0.2.1/32"), Communities: []string{"65000:1"}},
		{Prefix: netip.MustParsePrefix("2001:db8::1/128")},
	}
	t.Run("graceful shutdown for hold, then withdraw", func(t *testing.T) {
		r := &recorder{}
		start := time.Now()
		if err := Drain(context.Background(), r, anns, 20*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		if time.Since(start) < 20*time.Millisecond {
			t.Error("Drain returned before the hold time")
		}
		if len(r.sets) != 2 {
			t.Fatalf("want 2 sets, got %d", len(r.sets))
		}
		for i, a := range r.sets[0] {
			if !a.GracefulShutdown || a.Prefix != anns[i].Prefix || len(a.Communities) != len(anns[i].Communities) {
				t.Errorf("first set[%d] = %+v, want %v with GracefulShutdown", i, a, anns[i])
			}
		}
		if anns[0].GracefulShutdown {
			t.Error("Drain changed the caller's announcements")
		}
		if len(r.sets[1]) != 0 {
			t.Errorf("second set must withdraw all, got %v", r.sets[1])
		}
	})
	t.Run("no hold withdraws at once", func(t *testing.T) {
		r := &recorder{}
		if err := Drain(context.Background(), r, anns, 0); err != nil {
			t.Fatal(err)
		}
		if len(r.sets) != 1 || len(r.sets[0]) != 0 {
			t.Errorf("sets = %v", r.sets)
		}
	})
	t.Run("cancel cuts the hold short but still withdraws", func(t *testing.T) {
		r := &recorder{}
		ctx, cancel := context.WithCancel(context.Background())
		go func() { time.Sleep(5 * time.Millisecond); cancel() }()
		start := time.Now()
		if err := Drain(ctx, r, anns, time.Hour); err != nil {
			t.Fatal(err)
		}
		if time.Since(start) > time.Minute {
			t.Error("Drain waited out the hold after cancel")
		}
		if len(r.sets) != 2 || len(r.sets[1]) != 0 {
			t.Errorf("sets = %v", r.sets)
		}
	})
}

func TestAnnouncementEqual(t *testing.T) {
	a := Announcement{Prefix: netip.MustParsePrefix("192.0.2.1/32"), Communities: []string{"65000:1"}, MED: 5}
	for _, tc := range []struct {
		name string
		b    Announcement
		want bool
	}{
		{"same", a, true},
		{"prefix", Announcement{Prefix: netip.MustParsePrefix("192.0.2.2/32"), Communities: []string{"65000:1"}, MED: 5}, false},
		{"communities", Announcement{Prefix: a.Prefix, MED: 5}, false},
		{"med", Announcement{Prefix: a.Prefix, Communities: []string{"65000:1"}}, false},
		{"gshut", Announcement{Prefix: a.Prefix, Communities: []string{"65000:1"}, MED: 5, GracefulShutdown: true}, false},
	} {
		if got := a.Equal(tc.b); got != tc.want {
			t.Errorf("%s: Equal = %v", tc.name, got)
		}
	}
}
