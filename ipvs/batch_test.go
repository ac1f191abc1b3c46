package ipvs

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// nlRequest builds op's message the way moby/ipvs does (fillService,
// fillDestination over vishvananda/netlink's nl): the reference
// appendRequest must match byte for byte.
func nlRequest(family uint16, op Op, seq uint32) []byte {
	ms := toMobyService(&op.Service)
	cmd := map[OpKind]uint8{AddService: ipvsCmdNewService, UpdateService: ipvsCmdSetService, DelService: ipvsCmdDelService,
		AddDest: ipvsCmdNewDest, UpdateDest: ipvsCmdSetDest, DelDest: ipvsCmdDelDest}[op.Kind]
	req := nl.NewNetlinkRequest(int(family), unix.NLM_F_ACK)
	req.Seq = seq
	req.Pid = 0
	req.AddData(genlHdr(cmd))
	a := nl.NewRtAttr(ipvsCmdAttrService, nil)
	a.AddRtAttr(ipvsSvcAttrAF, nl.Uint16Attr(ms.AddressFamily))
	if ms.FWMark != 0 {
		a.AddRtAttr(ipvsSvcAttrFWMark, nl.Uint32Attr(ms.FWMark))
	} else {
		a.AddRtAttr(ipvsSvcAttrProtocol, nl.Uint16Attr(ms.Protocol))
		a.AddRtAttr(ipvsSvcAttrAddr, rawIP(ms.Address))
		a.AddRtAttr(ipvsSvcAttrPort, []byte{byte(ms.Port >> 8), byte(ms.Port)})
	}
	a.AddRtAttr(ipvsSvcAttrSchedName, nl.ZeroTerminated(ms.SchedName))
	flags := make([]byte, 8)
	nl.NativeEndian().PutUint32(flags[0:4], ms.Flags)
	nl.NativeEndian().PutUint32(flags[4:8], 0xFFFFFFFF)
	a.AddRtAttr(ipvsSvcAttrFlags, flags)
	a.AddRtAttr(ipvsSvcAttrTimeout, nl.Uint32Attr(ms.Timeout))
	a.AddRtAttr(ipvsSvcAttrNetmask, nl.Uint32Attr(ms.Netmask))
	req.AddData(a)
	if op.Kind == AddDest || op.Kind == UpdateDest || op.Kind == DelDest {
		md := toMobyDest(&op.Dest)
		d := nl.NewRtAttr(ipvsCmdAttrDest, nil)
		d.AddRtAttr(ipvsDestAttrAddr, rawIP(md.Address))
		d.AddRtAttr(ipvsDestAttrPort, []byte{byte(md.Port >> 8), byte(md.Port)})
		d.AddRtAttr(ipvsDestAttrFwd, nl.Uint32Attr(md.ConnectionFlags&mobyipvs.ConnectionFlagFwdMask))
		d.AddRtAttr(ipvsDestAttrWeight, nl.Uint32Attr(uint32(md.Weight)))
		d.AddRtAttr(ipvsDestAttrUThresh, nl.Uint32Attr(md.UpperThreshold))
		d.AddRtAttr(ipvsDestAttrLThresh, nl.Uint32Attr(md.LowerThreshold))
		req.AddData(d)
	}
	b := req.Serialize()
	// nl fills in the socket's port id; the kernel takes 0 as well.
	copy(b[12:16], []byte{0, 0, 0, 0})
	return b
}

type genlHdr uint8

func (h genlHdr) Len() int          { return 4 }
func (h genlHdr) Serialize() []byte { return []byte{byte(h), 1, 0, 0} }

func TestAppendRequestMatchesNL(t *testing.T) {
	v4 := svc("198.51.100.1", 80, "mh", dst("10.0.0.1", 3))
	v4.Timeout, v4.Flags = 300, FlagPersistent
	v6 := svc("2001:db8::1", 443, "wlc", dst("2001:db8:1::2", 7))
	fw := Service{ServiceKey: ServiceKey{Family: IPv4, FWMark: 42}, Scheduler: "sh"}
	nat := fwd(dst("10.0.0.9", 5), NAT)
	nat.UpperThreshold, nat.LowerThreshold = 100, 10
	var buf []byte
	for _, op := range []Op{
		{Kind: AddService, Service: v4},
		{Kind: UpdateService, Service: v6},
		{Kind: DelService, Service: fw},
		{Kind: AddDest, Service: v4, Dest: v4.Destinations[0]},
		{Kind: UpdateDest, Service: v6, Dest: v6.Destinations[0]},
		{Kind: DelDest, Service: fw, Dest: nat},
		{Kind: AddDest, Service: v4, Dest: nat},
	} {
		want := nlRequest(0x1c, op, 77)
		got, err := appendRequest(nil, 0x1c, op, 77)
		if err != nil {
			t.Fatalf("%s: %v", op, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s:\n got % x\nwant % x", op, got, want)
		}
		// Appended after another message, it is the same bytes.
		start := len(buf)
		buf, _ = appendRequest(buf, 0x1c, op, 77)
		if !bytes.Equal(buf[start:], want) {
			t.Errorf("%s appended: differs", op)
		}
	}
	bad := Op{Kind: AddDest, Service: v4, Dest: Destination{DestKey: DestKey{Addr: netip.MustParseAddr("2001:db8::9"), Port: 80}}}
	if _, err := appendRequest(nil, 0x1c, bad, 1); err == nil {
		t.Error("an IPv6 destination in an IPv4 service was encoded")
	}
}

// BenchmarkAppendRequest: the encoding of the 1,000 x 10 table's plan.
func BenchmarkAppendRequest(b *testing.B) {
	var want Table
	for i := range 1000 {
		s := svc("198.18.0.1", uint16(1000+i), "mh")
		for j := range 10 {
			s.Destinations = append(s.Destinations, dst("10.128.0.1", 1))
			s.Destinations[j].Port = uint16(j + 1)
		}
		want.Services = append(want.Services, s)
	}
	p := Diff(Table{}, want)
	buf := make([]byte, 0, 1<<20)
	b.ResetTimer()
	for range b.N {
		buf = buf[:0]
		for i, op := range p {
			buf, _ = appendRequest(buf, 0x1c, op, uint32(i))
		}
	}
}

// A large plan is split for the two sockets by service: every operation
// once, each service's in order and on one side, about half on each.
func TestSplitPlanKeepsServicesWholeAndInOrder(t *testing.T) {
	p := Diff(Table{}, measureTable())
	a, b := splitPlan(p, 512)
	if len(a)+len(b) != len(p) || len(b) < len(p)/3 || len(a) < len(p)/3 {
		t.Fatalf("split %d into %d + %d", len(p), len(a), len(b))
	}
	side := map[ServiceKey]string{}
	for name, half := range map[string]Plan{"a": a, "b": b} {
		for _, op := range half {
			if s, ok := side[op.Service.ServiceKey]; ok && s != name {
				t.Fatalf("service %s on both sides", op.Service.ServiceKey)
			}
			side[op.Service.ServiceKey] = name
		}
	}
	// Each service's operations in the plan's order.
	for _, half := range []Plan{a, b} {
		byService := map[ServiceKey][]Op{}
		for _, op := range half {
			byService[op.Service.ServiceKey] = append(byService[op.Service.ServiceKey], op)
		}
		for k, ops := range byService {
			var want []Op
			for _, op := range p {
				if op.Service.ServiceKey == k {
					want = append(want, op)
				}
			}
			if len(ops) != len(want) {
				t.Fatalf("service %s: %d operations, want %d", k, len(ops), len(want))
			}
			for i := range ops {
				if ops[i].Kind != want[i].Kind || ops[i].Dest.DestKey != want[i].Dest.DestKey {
					t.Fatalf("service %s: operation %d out of order", k, i)
				}
			}
		}
	}
	if a, b := splitPlan(p[:100], 512); len(a) != 100 || b != nil {
		t.Errorf("a small plan was split: %d + %d", len(a), len(b))
	}
}

// TestPlanWaves: wave n holds the n-th step of every service; a Reorder
// pair (a destination deleted and added again) is one step, so both go in
// one message, delete first. Two Reorder ops that are not one
// destination's pair, or a plain delete and add, stay a wave apart.
func TestPlanWaves(t *testing.T) {
	const a, b, x = "10.0.0.1", "10.0.0.2", "10.0.0.9"
	for _, tc := range []struct {
		name string
		have Table
		want Table
		// waves, each op written as kind and destination's last octet
		waves string
	}{
		{"re-added at the front: each pair in one wave",
			tbl(svc("198.51.100.1", 80, "mh", dst(a, 1), dst(b, 1))),
			tbl(svc("198.51.100.1", 80, "mh", dst(x, 1), dst(a, 1), dst(b, 1))),
			"[add.9] [del.1 add.1] [del.2 add.2]"},
		{"two services side by side",
			tbl(svc("198.51.100.1", 80, "mh", dst(a, 1), dst(b, 1)), svc("198.51.100.2", 80, "rr", dst(a, 1))),
			tbl(svc("198.51.100.1", 80, "mh", dst(b, 1), dst(a, 1)), svc("198.51.100.2", 80, "rr", dst(a, 1), dst(x, 1))),
			"[del.2 add.2 add.9] [del.1 add.1]"},
		{"no reorder: one op a wave",
			tbl(svc("198.51.100.2", 80, "rr", dst(a, 1), dst(b, 1))),
			tbl(svc("198.51.100.2", 80, "rr", dst(x, 1))),
			"[add.9] [del.1] [del.2]"},
	} {
		p := Diff(tc.have, tc.want)
		var got []string
		for _, w := range planWaves(p) {
			var ops []string
			for _, i := range w {
				ops = append(ops, fmt.Sprintf("%s.%d", strings.TrimSuffix(p[i].Kind.String(), "-dest"), p[i].Dest.Addr.As4()[3]))
			}
			got = append(got, "["+strings.Join(ops, " ")+"]")
		}
		if g := strings.Join(got, " "); g != tc.waves {
			t.Errorf("%s: waves %s, want %s\nplan:\n%s", tc.name, g, tc.waves, p)
		}
	}
	// Adjacent Reorder ops of two destinations are not a pair.
	s1 := svc("198.51.100.1", 80, "mh")
	p := Plan{{Kind: DelDest, Service: s1, Dest: dst(a, 1), Reorder: true}, {Kind: AddDest, Service: s1, Dest: dst(b, 1), Reorder: true}}
	if reorderPair(p, 0, 1) || len(planWaves(p)) != 2 {
		t.Errorf("a delete and an add of two destinations were paired")
	}
}
