package labtest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/anycastd/anycastd/routing"
)

// AnnouncerHelper serves a routing.Announcer to a lab test as a helper
// process (see HelperMain) inside a namespace: one command per line on
// stdin, each answered on stdout by "ok", "error: ..." or, for status,
// one line of JSON:
//
//	set PREFIX,...   announce exactly these
//	none             withdraw everything
//	status           the announcer's Status
//	NAME ARG         one of Extra's commands
//
// At stdin's end or on SIGTERM it stops the announcer (which withdraws
// and releases what it holds) and returns Run's error.
type AnnouncerHelper struct {
	Announcer routing.Announcer
	// Decorate, if set, adds attributes to each announcement of a set
	// (BGP communities, for example).
	Decorate func(*routing.Announcement)
	// Initial is set before the announcer runs.
	Initial []routing.Announcement
	// Extra are more commands; current is the last set.
	Extra map[string]func(ctx context.Context, arg string, current []routing.Announcement) error
}

// Serve runs the helper on the process's stdin and stdout.
func (h AnnouncerHelper) Serve() error { return h.serve(os.Stdin, os.Stdout) }

func (h AnnouncerHelper) serve(stdin io.Reader, stdout io.Writer) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	current := h.Initial
	if len(h.Initial) > 0 {
		if err := h.Announcer.Set(ctx, h.Initial); err != nil {
			return err
		}
	}
	done := make(chan error, 1)
	go func() { done <- h.Announcer.Run(ctx) }()
	lines := make(chan string)
	go func() {
		in := bufio.NewScanner(stdin)
		for in.Scan() {
			lines <- in.Text()
		}
		close(lines)
	}()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, os.Interrupt)
	defer signal.Stop(sigs)
	for {
		var line string
		ok := true
		select {
		case line, ok = <-lines:
		case <-sigs:
			ok = false
		case err := <-done:
			return fmt.Errorf("the announcer stopped: %v", err)
		}
		if !ok {
			break
		}
		cmd, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
		var err error
		switch cmd {
		case "set":
			var anns []routing.Announcement
			anns, err = h.parse(arg)
			if err == nil {
				if err = h.Announcer.Set(ctx, anns); err == nil {
					current = anns
				}
			}
		case "none":
			if err = h.Announcer.Set(ctx, nil); err == nil {
				current = nil
			}
		case "status":
			b, _ := json.Marshal(h.Announcer.Status())
			fmt.Fprintln(stdout, string(b))
			continue
		default:
			if f, ok := h.Extra[cmd]; ok {
				err = f(ctx, arg, current)
			} else {
				err = fmt.Errorf("unknown command %q", cmd)
			}
		}
		if err != nil {
			fmt.Fprintln(stdout, "error:", err)
		} else {
			fmt.Fprintln(stdout, "ok")
		}
	}
	cancel()
	return <-done
}

func (h AnnouncerHelper) parse(arg string) ([]routing.Announcement, error) {
	var anns []routing.Announcement
	for p := range strings.SplitSeq(arg, ",") {
		pp, err := netip.ParsePrefix(strings.TrimSpace(p))
		if err != nil {
			return nil, err
		}
		a := routing.Announcement{Prefix: pp}
		if h.Decorate != nil {
			h.Decorate(&a)
		}
		anns = append(anns, a)
	}
	return anns, nil
}
