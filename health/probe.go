// Package health turns probes of real servers and of the director itself
// into statuses with rise/fall damping. It knows nothing of IPVS or
// routing: the director reads its statuses and decides weights and
// announcements.
//
// A Probe checks one target once. The Monitor runs many probes on their
// intervals with a bounded number in flight and publishes status changes.
// Self aggregates the director's own checks into "may announce or not",
// with a reason for each failing check.
package health

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/anycastd/anycastd/configs"
)

// Result is what one probe found.
type Result struct {
	OK      bool
	Latency time.Duration
	// Err says why the probe failed (nil when OK).
	Err error
	// Detail is a short description of what was seen ("HTTP 200",
	// "NOERROR, 1 answer"), for people.
	Detail string
	// Output is an exec probe's combined output (truncated), kept for
	// anyctl.
	Output string
}

// Probe checks one target once. Check honours ctx (its deadline is the
// probe's timeout) and never blocks past it. Implementations are safe for
// concurrent use.
type Probe interface {
	Check(ctx context.Context) Result
}

// Target is what a probe checks.
type Target struct {
	// Addr is the real server's address and the port to probe.
	Addr netip.AddrPort
	// VIP is the service's virtual IP, used by through-VIP checks (HTTP
	// Host header and TLS server name default to it).
	VIP netip.Addr
}

// CheckTarget is where service s's check probes backend b: the backend's
// address, on the check's port if it has one.
func CheckTarget(s configs.Service, b configs.Backend) Target {
	port := b.Port
	if s.Health.Port != 0 {
		port = s.Health.Port
	}
	return Target{Addr: netip.AddrPortFrom(b.Address, uint16(port)), VIP: s.VIP}
}

// Once runs check c once against t, with the check's timeout, as the
// Monitor does (anyctl probe).
func Once(ctx context.Context, c configs.Check, t Target) (Result, error) {
	p, err := New(c, t)
	if err != nil {
		return Result{}, err
	}
	return Run(ctx, p, c.Timeout), nil
}

// New builds the probe a check describes, for a target. The check is
// assumed valid (configs validated it); New still refuses what it cannot
// build (a body regex that does not compile, an unreadable certificate).
func New(c configs.Check, t Target) (Probe, error) {
	switch c.Type {
	case configs.CheckTCP:
		return newTCP(c, t), nil
	case configs.CheckHTTP, configs.CheckHTTPS:
		return newHTTP(c, t)
	case configs.CheckUDP:
		return newUDP(c, t), nil
	case configs.CheckDNS:
		return newDNS(c, t)
	case configs.CheckExec:
		return newExec(c, t)
	case configs.CheckNone:
		return always{}, nil
	}
	return nil, fmt.Errorf("unknown check type %q", c.Type)
}

// always is the probe of check type none: the backend is always up.
type always struct{}

func (always) Check(context.Context) Result { return Result{OK: true, Detail: "no check"} }

// Run runs p once with the check's timeout and measures it.
func Run(ctx context.Context, p Probe, timeout time.Duration) Result {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	r := p.Check(ctx)
	r.Latency = time.Since(start)
	if !r.OK && r.Err == nil {
		r.Err = errors.New("failed")
	}
	if r.Err != nil && ctx.Err() == context.DeadlineExceeded && !errors.Is(r.Err, context.DeadlineExceeded) {
		r.Err = fmt.Errorf("timed out after %s: %w", timeout, r.Err)
	}
	return r
}

func fail(format string, args ...any) Result {
	return Result{Err: fmt.Errorf(format, args...)}
}
