package director

import (
	"context"
	"net/netip"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/health"
)

// ProbeTarget is what a check probes: the address and port, and the
// service's VIP for through-VIP checks.
type ProbeTarget = health.Target

// ProbeResult is one probe's outcome.
type ProbeResult = health.Result

// CheckTarget is where service s's check probes backend b: the backend's
// address, on the check's port if it has one.
func CheckTarget(s configs.Service, b configs.Backend) ProbeTarget {
	port := b.Port
	if s.Health.Port != 0 {
		port = s.Health.Port
	}
	return ProbeTarget{Addr: netip.AddrPortFrom(b.Address, uint16(port)), VIP: s.VIP}
}

// Probe runs check c once against t, with the check's timeout, as the
// daemon's health monitor does (anyctl probe).
func Probe(ctx context.Context, c configs.Check, t ProbeTarget) (ProbeResult, error) {
	p, err := health.New(c, t)
	if err != nil {
		return ProbeResult{}, err
	}
	return health.Run(ctx, p, c.Timeout), nil
}
