// Package leaktest is for tests only: the goleak options the packages that
// run memberlist share.
package leaktest

import "go.uber.org/goleak"

// MemberlistInternals are goleak options for memberlist's own goroutines,
// which its Shutdown does not wait for (a probe or a push/pull in flight, a
// stream being read): they end by themselves at their timeouts, and they
// are memberlist's, not anycastd's. Goroutines anycastd starts, even ones
// blocked inside memberlist, are still checked.
func MemberlistInternals() []goleak.Option {
	var out []goleak.Option
	for _, f := range []string{"triggerFunc", "pushPullTrigger", "streamListen", "packetListen", "packetHandler", "handleConn", "probeNode", "pushPullNode", "gossip"} {
		out = append(out, goleak.IgnoreAnyFunction("github.com/hashicorp/memberlist.(*Memberlist)."+f))
	}
	return out
}
