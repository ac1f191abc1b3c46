package clab

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Process is a long-running program in a node, killed with the lab.
type Process struct {
	Node  string
	Stdin io.WriteCloser
	cmd   *exec.Cmd
	mu    sync.Mutex
	out   bytes.Buffer // stdout and stderr as they came
	lines bytes.Buffer // stdout not yet read by Ask
	done  chan struct{}
	err   error
}

// Start runs a program inside a node. Its stdout and stderr are kept
// (Output); its stdin is Stdin.
func (l *Lab) Start(node, name string, args ...string) (*Process, error) {
	p := &Process{Node: node, done: make(chan struct{})}
	p.cmd = l.Command(node, name, args...)
	p.cmd.Stdout, p.cmd.Stderr = &lockedWriter{p: p, stdout: true}, &lockedWriter{p: p}
	in, err := p.cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	p.Stdin = in
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", name, node, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	l.procs = append(l.procs, p)
	return p, nil
}

// Output is what the process has written so far.
func (p *Process) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Signal sends sig to the process (nsenter passes it on to its child).
func (p *Process) Signal(sig syscall.Signal) error {
	return p.cmd.Process.Signal(sig)
}

// Kill kills the process and waits for it.
func (p *Process) Kill() {
	p.cmd.Process.Kill()
	<-p.done
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits for the process and returns how it ended.
func (p *Process) Wait() error {
	<-p.done
	return p.err
}

// Ask writes one command line to the process's stdin and returns the next
// line it writes to stdout (without the newline), for helpers that answer
// each command with one line.
func (p *Process) Ask(cmd string, timeout time.Duration) (string, error) {
	if err := p.Send(cmd); err != nil {
		return "", err
	}
	return p.ReadLine(timeout)
}

// Send writes one command line to the process's stdin.
func (p *Process) Send(cmd string) error {
	if _, err := fmt.Fprintln(p.Stdin, cmd); err != nil {
		return fmt.Errorf("%s in %s: %s: %w", p.cmd.Args[0], p.Node, cmd, err)
	}
	return nil
}

// ReadLine returns the next line the process writes to stdout.
func (p *Process) ReadLine(timeout time.Duration) (string, error) {
	deadline := time.After(timeout)
	for {
		p.mu.Lock()
		line, err := p.lines.ReadString('\n')
		if err != nil { // incomplete: put it back
			p.lines.Reset()
			p.lines.WriteString(line)
		}
		p.mu.Unlock()
		if err == nil {
			return strings.TrimSuffix(line, "\n"), nil
		}
		select {
		case <-p.done:
			return "", fmt.Errorf("%s in %s exited: %v", p.cmd.Args[0], p.Node, p.err)
		case <-deadline:
			return "", fmt.Errorf("%s in %s: no line in %v", p.cmd.Args[0], p.Node, timeout)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

type lockedWriter struct {
	p      *Process
	stdout bool
}

func (w *lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	if w.stdout {
		w.p.lines.Write(b)
	}
	return w.p.out.Write(b)
}

// NextHops returns the next hops of node's kernel route for prefix in its
// main table (several for an ECMP route), read over netlink; none when
// there is no such route.
func (l *Lab) NextHops(node string, prefix netip.Prefix) ([]netip.Addr, error) {
	h, err := netns.GetFromName(l.Topo.Netns(node))
	if err != nil {
		return nil, err
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, err
	}
	defer nh.Close()
	fam := netlink.FAMILY_V4
	if prefix.Addr().Is6() {
		fam = netlink.FAMILY_V6
	}
	routes, err := nh.RouteListFiltered(fam, &netlink.Route{Dst: &net.IPNet{IP: prefix.Addr().AsSlice(),
		Mask: net.CIDRMask(prefix.Bits(), prefix.Addr().BitLen())}}, netlink.RT_FILTER_DST)
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, r := range routes {
		if r.Gw != nil {
			a, _ := netip.AddrFromSlice(r.Gw)
			out = append(out, a.Unmap())
		}
		for _, m := range r.MultiPath {
			if a, ok := netip.AddrFromSlice(m.Gw); ok {
				out = append(out, a.Unmap())
			}
		}
	}
	return out, nil
}

// HopChange is a change of a route's next hops as a RouteWatch saw it:
// when the kernel's notification arrived, and the hops after it.
type HopChange struct {
	At   time.Time
	Hops []netip.Addr
}

// RouteWatch records every change of node's route for one prefix as the
// kernel announces it (RTM_NEWROUTE/DELROUTE), timed on arrival: what a
// measurement of "next hop gone from the FIB" needs, where polling would
// add its own interval.
type RouteWatch struct {
	done chan struct{}
	mu   sync.Mutex
	seen []HopChange
	err  error
}

// WatchRoute starts a RouteWatch; Stop ends it.
func (l *Lab) WatchRoute(node string, prefix netip.Prefix) (*RouteWatch, error) {
	h, err := netns.GetFromName(l.Topo.Netns(node))
	if err != nil {
		return nil, err
	}
	updates := make(chan netlink.RouteUpdate, 256)
	w := &RouteWatch{done: make(chan struct{})}
	err = netlink.RouteSubscribeWithOptions(updates, w.done, netlink.RouteSubscribeOptions{Namespace: &h,
		ErrorCallback: func(err error) { w.mu.Lock(); w.err = err; w.mu.Unlock() }})
	h.Close()
	if err != nil {
		return nil, fmt.Errorf("watch %s's routes: %w", node, err)
	}
	go func() {
		for u := range updates {
			at := time.Now()
			if u.Dst == nil || u.Dst.String() != prefix.String() {
				continue
			}
			hops, err := l.NextHops(node, prefix)
			w.mu.Lock()
			if err != nil {
				w.err = err
			}
			w.seen = append(w.seen, HopChange{At: at, Hops: hops})
			w.mu.Unlock()
		}
	}()
	return w, nil
}

// FirstWithout is the first change after t whose hops lack hop.
func (w *RouteWatch) FirstWithout(t time.Time, hop netip.Addr) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.seen {
		if c.At.After(t) && !slices.Contains(c.Hops, hop) {
			return c.At, true
		}
	}
	return time.Time{}, false
}

// Err is the first error the watch met (its record may miss changes).
func (w *RouteWatch) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Stop ends the watch.
func (w *RouteWatch) Stop() { close(w.done) }
