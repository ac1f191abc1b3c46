package ipvs

import (
	"net/netip"
	"testing"

	"github.com/anycastd/anycastd/internal/golden"
)

// The plan Diff makes for a change of every kind, as the daemon logs it
// and `anyctl` shows it: services and destinations added, edited and
// removed, a scheduler changed, mh's destinations put back in order, IPv6
// and fwmark services, NAT and TUN beside DR.
func TestGoldenPlan(t *testing.T) {
	d := func(addr string, weight int, fwd Forward) Destination {
		return Destination{DestKey: DestKey{Addr: netip.MustParseAddr(addr), Port: 80}, Weight: weight, Forward: fwd}
	}
	web := svc("192.0.2.1", 80, "wlc", d("10.0.0.1", 100, DR), d("10.0.0.2", 100, DR), d("10.0.0.3", 100, DR))
	mh := svc("192.0.2.2", 443, "mh", d("10.0.0.1", 1, DR), d("10.0.0.2", 1, DR), d("10.0.0.3", 1, DR))
	mh.Flags = SchedFlag1 | SchedFlag2
	gone := svc("192.0.2.3", 25, "rr", d("10.0.0.9", 1, TUN))
	have := tbl(web, mh, gone)

	web2 := svc("192.0.2.1", 80, "wlc", d("10.0.0.1", 100, DR), d("10.0.0.2", 0, DR), d("10.0.0.4", 100, DR))
	web2.Timeout = 300
	web2.Flags = FlagPersistent
	// mh: 10.0.0.2 removed and 10.0.0.5 added before 10.0.0.3, which is
	// then out of place in the kernel's order: deleted and added again.
	mh2 := svc("192.0.2.2", 443, "mh", d("10.0.0.1", 1, DR), d("10.0.0.5", 1, DR), d("10.0.0.3", 1, DR))
	mh2.Flags = SchedFlag1 | SchedFlag2
	sched := svc("192.0.2.4", 53, "rr", d("10.0.1.1", 1, NAT))
	v6 := svc("2001:db8::1", 80, "wrr", Destination{DestKey: DestKey{Addr: netip.MustParseAddr("2001:db8:1::1"), Port: 8080}, Weight: 5, Forward: DR})
	fw := Service{ServiceKey: ServiceKey{Family: IPv4, FWMark: 7}, Scheduler: "sh", Destinations: []Destination{d("10.0.0.7", 1, DR)}}
	want := tbl(web2, mh2, sched, v6, fw)
	have.Services = append(have.Services, svc("192.0.2.4", 53, "wrr", d("10.0.1.1", 1, NAT)))

	golden.Check(t, "plan", []byte(Diff(have, want).String()))
}
