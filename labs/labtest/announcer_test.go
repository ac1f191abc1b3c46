package labtest

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/anycastd/anycastd/routing"
)

type fakeAnnouncer struct {
	mu      sync.Mutex
	set     []routing.Announcement
	stopped bool
}

func (f *fakeAnnouncer) Run(ctx context.Context) error {
	<-ctx.Done()
	f.mu.Lock()
	f.set, f.stopped = nil, true
	f.mu.Unlock()
	return nil
}

func (f *fakeAnnouncer) Set(_ context.Context, anns []routing.Announcement) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.set = anns
	return nil
}

func (f *fakeAnnouncer) Changed() <-chan struct{} { return nil }

func (f *fakeAnnouncer) Status() routing.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return routing.Status{Mode: "fake", Announced: f.set}
}

func TestAnnouncerHelper(t *testing.T) {
	f := &fakeAnnouncer{}
	var drained int
	h := AnnouncerHelper{
		Announcer: f,
		Decorate:  func(a *routing.Announcement) { a.GracefulShutdown = true },
		Initial:   []routing.Announcement{{}},
		Extra: map[string]func(context.Context, string, []routing.Announcement) error{
			"drain": func(_ context.Context, arg string, cur []routing.Announcement) error {
				if arg == "bad" {
					return errors.New("bad drain")
				}
				drained = len(cur)
				return nil
			},
		},
	}
	in := strings.Join([]string{"set 192.0.2.1/32,192.0.2.2/32", "status", "drain x", "set nonsense", "drain bad", "none", "status", "what"}, "\n") + "\n"
	var out bytes.Buffer
	if err := h.serve(strings.NewReader(in), &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	want := []string{"ok", `"Prefix":"192.0.2.1/32"`, "ok", "error: ", "error: bad drain", "ok", `"Announced":null`, `error: unknown command "what"`}
	if len(lines) != len(want) {
		t.Fatalf("answers %q", lines)
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) {
			t.Errorf("answer %d %q, want it to contain %q", i, lines[i], w)
		}
	}
	if !strings.Contains(lines[1], `"GracefulShutdown":true`) {
		t.Errorf("not decorated: %s", lines[1])
	}
	if drained != 2 {
		t.Errorf("drain saw %d announcements, want the 2 last set", drained)
	}
	if !f.stopped {
		t.Error("the announcer was not stopped at stdin's end")
	}
}
