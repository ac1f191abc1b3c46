package ipvs

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func svc(vip string, port uint16, sched string, dests ...Destination) Service {
	a := netip.MustParseAddr(vip)
	return Service{
		ServiceKey:   ServiceKey{Family: FamilyOf(a), Protocol: TCP, Addr: a, Port: port},
		Scheduler:    sched,
		Destinations: dests,
	}
}

func dst(addr string, weight int) Destination {
	return Destination{DestKey: DestKey{Addr: netip.MustParseAddr(addr), Port: 80}, Weight: weight, Forward: DR}
}

func tbl(ss ...Service) Table { return Table{Services: ss} }

// ops renders a plan as compact lines for comparison.
func ops(p Plan) []string {
	var out []string
	for _, o := range p {
		s := o.Kind.String() + " " + o.Service.ServiceKey.String()
		if o.Kind == AddDest || o.Kind == UpdateDest || o.Kind == DelDest {
			s += " " + o.Dest.Addr.String()
			if o.Kind != DelDest {
				s += fmt.Sprintf(" w%d", o.Dest.Weight)
			}
		}
		if o.Reorder {
			s += " reorder"
		}
		out = append(out, s)
	}
	return out
}

func TestDiff(t *testing.T) {
	a, b, c, x := "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.9"
	withFlags := func(s Service, f Flags, timeout uint32) Service { s.Flags, s.Timeout = f, timeout; return s }
	withFwd := func(d Destination, f Forward) Destination { d.Forward = f; return d }
	withConns := func(d Destination, n int) Destination { d.ActiveConns, d.InactiveConns = n, n; return d }
	cases := []struct {
		name       string
		have, want Table
		plan       []string
	}{
		{"empty", tbl(), tbl(), nil},
		{"identical", tbl(svc("198.51.100.1", 80, "mh", dst(a, 1), dst(b, 1))), tbl(svc("198.51.100.1", 80, "mh", dst(a, 1), dst(b, 1))), nil},
		{"connection counters are not settings",
			tbl(svc("198.51.100.1", 80, "mh", withConns(dst(a, 1), 5))), tbl(svc("198.51.100.1", 80, "mh", dst(a, 1))), nil},
		{"kernel's hashed flag ignored",
			tbl(withFlags(svc("198.51.100.1", 80, "mh"), FlagHashed|SchedFlag2, 0)), tbl(withFlags(svc("198.51.100.1", 80, "mh"), SchedFlag2, 0)), nil},
		{"new service", tbl(), tbl(svc("198.51.100.1", 80, "mh", dst(a, 1), dst(b, 1))), []string{
			"add-service tcp 198.51.100.1:80",
			"add-dest tcp 198.51.100.1:80 10.0.0.1 w1",
			"add-dest tcp 198.51.100.1:80 10.0.0.2 w1",
		}},
		{"weight change is an edit",
			tbl(svc("198.51.100.1", 80, "mh", dst(a, 1), dst(b, 1))), tbl(svc("198.51.100.1", 80, "mh", dst(a, 1), dst(b, 0))),
			[]string{"update-dest tcp 198.51.100.1:80 10.0.0.2 w0"}},
		{"forwarding change is an edit",
			tbl(svc("198.51.100.1", 80, "rr", dst(a, 1))), tbl(svc("198.51.100.1", 80, "rr", withFwd(dst(a, 1), TUN))),
			[]string{"update-dest tcp 198.51.100.1:80 10.0.0.1 w1"}},
		{"scheduler change is an edit",
			tbl(svc("198.51.100.1", 80, "rr", dst(a, 1))), tbl(svc("198.51.100.1", 80, "wlc", dst(a, 1))),
			[]string{"update-service tcp 198.51.100.1:80"}},
		{"persistence change is an edit",
			tbl(svc("198.51.100.1", 80, "rr")), tbl(withFlags(svc("198.51.100.1", 80, "rr"), 0, 300)),
			[]string{"update-service tcp 198.51.100.1:80"}},
		{"removed destination",
			tbl(svc("198.51.100.1", 80, "mh", dst(a, 1), dst(b, 1), dst(c, 1))), tbl(svc("198.51.100.1", 80, "mh", dst(a, 1), dst(c, 1))),
			[]string{"del-dest tcp 198.51.100.1:80 10.0.0.2"}},
		{"removed service takes its destinations",
			tbl(svc("198.51.100.1", 80, "mh", dst(a, 1), dst(b, 1))), tbl(),
			[]string{"del-service tcp 198.51.100.1:80"}},
		{"mh append keeps the others",
			tbl(svc("198.51.100.1", 80, "mh", dst(a, 1), dst(b, 1))), tbl(svc("198.51.100.1", 80, "mh", dst(a, 1), dst(b, 1), dst(x, 1))),
			[]string{"add-dest tcp 198.51.100.1:80 10.0.0.9 w1"}},
		// Each destination out of place is deleted and added again right
		// after (a pair the batcher sends in one message: its connections
		// find it missing for microseconds, not for the rest of the plan).
		{"mh insert in the middle re-adds what follows",
			tbl(svc("198.51.100.1", 80, "mh", dst(a, 1), dst(b, 1), dst(c, 1))),
			tbl(svc("198.51.100.1", 80, "mh", dst(a, 1), dst(x, 1), dst(b, 1), dst(c, 1))),
			[]string{
				"add-dest tcp 198.51.100.1:80 10.0.0.9 w1",
				"del-dest tcp 198.51.100.1:80 10.0.0.2 reorder",
				"add-dest tcp 198.51.100.1:80 10.0.0.2 w1 reorder",
				"del-dest tcp 198.51.100.1:80 10.0.0.3 reorder",
				"add-dest tcp 198.51.100.1:80 10.0.0.3 w1 reorder",
			}},
		{"mh re-added at the front moves every other one",
			tbl(svc("198.51.100.1", 80, "mh", dst(b, 1), dst(c, 1))),
			tbl(svc("198.51.100.1", 80, "mh", dst(a, 1), dst(b, 1), dst(c, 1))),
			[]string{
				"add-dest tcp 198.51.100.1:80 10.0.0.1 w1",
				"del-dest tcp 198.51.100.1:80 10.0.0.2 reorder",
				"add-dest tcp 198.51.100.1:80 10.0.0.2 w1 reorder",
				"del-dest tcp 198.51.100.1:80 10.0.0.3 reorder",
				"add-dest tcp 198.51.100.1:80 10.0.0.3 w1 reorder",
			}},
		{"mh reorder carries the new weight",
			tbl(svc("198.51.100.1", 80, "mh", dst(b, 1), dst(a, 1))), tbl(svc("198.51.100.1", 80, "mh", dst(a, 1), dst(b, 5))),
			[]string{
				"del-dest tcp 198.51.100.1:80 10.0.0.1 reorder",
				"add-dest tcp 198.51.100.1:80 10.0.0.1 w1 reorder",
				"del-dest tcp 198.51.100.1:80 10.0.0.2 reorder",
				"add-dest tcp 198.51.100.1:80 10.0.0.2 w5 reorder",
			}},
		{"rr insert in the middle only adds",
			tbl(svc("198.51.100.1", 80, "rr", dst(a, 1), dst(b, 1))), tbl(svc("198.51.100.1", 80, "rr", dst(a, 1), dst(x, 1), dst(b, 1))),
			[]string{"add-dest tcp 198.51.100.1:80 10.0.0.9 w1"}},
		{"phases across services",
			tbl(svc("198.51.100.1", 80, "rr", dst(a, 1), dst(b, 1)), svc("198.51.100.2", 80, "rr", dst(a, 1))),
			tbl(svc("198.51.100.1", 80, "wrr", dst(a, 3)), svc("198.51.100.3", 443, "rr", dst(c, 1))),
			[]string{
				"add-service tcp 198.51.100.3:443",
				"add-dest tcp 198.51.100.3:443 10.0.0.3 w1",
				"update-service tcp 198.51.100.1:80",
				"update-dest tcp 198.51.100.1:80 10.0.0.1 w3",
				"del-dest tcp 198.51.100.1:80 10.0.0.2",
				"del-service tcp 198.51.100.2:80",
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := ops(Diff(tc.have, tc.want))
			if !slices.Equal(got, tc.plan) {
				t.Errorf("plan:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.plan, "\n  "))
			}
		})
	}
}

// randomTable builds a table of up to n services over a small address
// space, so that two random tables overlap.
func randomTable(r *rand.Rand, n int) Table {
	scheds := []string{"mh", "rr", "wlc", "sh"}
	var t Table
	seen := map[ServiceKey]bool{}
	for range r.IntN(n + 1) {
		s := svc(fmt.Sprintf("198.51.100.%d", 1+r.IntN(4)), uint16(80+r.IntN(2)), scheds[r.IntN(len(scheds))])
		if r.IntN(5) == 0 {
			s.Flags = SchedFlag2
		}
		if r.IntN(5) == 0 {
			s.Timeout = 300
		}
		if seen[s.ServiceKey] {
			continue
		}
		seen[s.ServiceKey] = true
		// Some services are large: destIndex and repeatedDest switch
		// from scanning to a map beyond destScanMax destinations.
		pool := 8
		if r.IntN(4) == 0 {
			pool = destScanMax + 16
		}
		perm := r.Perm(pool)
		for _, i := range perm[:r.IntN(len(perm))] {
			d := dst(fmt.Sprintf("10.0.0.%d", i+1), r.IntN(3))
			if r.IntN(6) == 0 {
				d.Forward = TUN
			}
			s.Destinations = append(s.Destinations, d)
		}
		t.Services = append(t.Services, s)
	}
	return t
}

// equalTables compares tables as the kernel would behave: destination order
// matters for order-sensitive schedulers only.
func equalTables(a, b Table) error {
	a, b = a.Sorted(), b.Sorted()
	if len(a.Services) != len(b.Services) {
		return fmt.Errorf("%d services, want %d", len(a.Services), len(b.Services))
	}
	for i := range a.Services {
		x, y := a.Services[i], b.Services[i]
		if x.ServiceKey != y.ServiceKey || !x.sameSettings(&y) {
			return fmt.Errorf("service %d: %+v, want %+v", i, x, y)
		}
		xd, yd := slices.Clone(x.Destinations), slices.Clone(y.Destinations)
		if !OrderSensitive(y.Scheduler) {
			byKey := func(p, q Destination) int { return strings.Compare(p.DestKey.String(), q.DestKey.String()) }
			slices.SortFunc(xd, byKey)
			slices.SortFunc(yd, byKey)
		}
		if len(xd) != len(yd) {
			return fmt.Errorf("service %s: %d destinations, want %d", x.ServiceKey, len(xd), len(yd))
		}
		for j := range xd {
			if xd[j].DestKey != yd[j].DestKey || !xd[j].sameSettings(&yd[j]) {
				return fmt.Errorf("service %s destination %d: %+v, want %+v", x.ServiceKey, j, xd[j], yd[j])
			}
		}
	}
	return nil
}

// TestDiffApplyConverges: for random pairs of tables, applying Diff(have,
// want) to a dataplane holding have yields want, and a second Diff is empty.
func TestDiffApplyConverges(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		have, want := randomTable(r, 5), randomTable(r, 5)
		m := NewMemory()
		if err := m.Apply(ctx, Diff(Table{}, have)); err != nil {
			t.Fatalf("case %d: load have: %v", i, err)
		}
		p := Diff(have, want)
		if err := m.Apply(ctx, p); err != nil {
			t.Fatalf("case %d: apply:\n%v\nplan:\n%s", i, err, p)
		}
		got, _ := m.Table(ctx)
		if err := equalTables(got, want); err != nil {
			t.Fatalf("case %d: after apply: %v\nplan:\n%s", i, err, p)
		}
		if again := Diff(got, want); len(again) != 0 {
			t.Fatalf("case %d: second diff not empty:\n%s", i, again)
		}
	}
}

func manyDests(n int) []Destination {
	var ds []Destination
	for i := range n {
		ds = append(ds, dst(fmt.Sprintf("10.0.%d.%d", i/250, i%250+1), 1))
	}
	return ds
}

func TestTableCheck(t *testing.T) {
	good := []Table{
		tbl(svc("198.51.100.1", 80, "mh", manyDests(3)...)),
		tbl(svc("198.51.100.1", 80, "mh", manyDests(destScanMax)...)),
		tbl(svc("198.51.100.1", 80, "mh", manyDests(destScanMax+8)...)),
	}
	for i, g := range good {
		if err := g.Check(); err != nil {
			t.Errorf("table %d: %v", i, err)
		}
	}
	bad := []Table{
		tbl(svc("198.51.100.1", 80, "mh"), svc("198.51.100.1", 80, "rr")),
		tbl(svc("198.51.100.1", 80, "")),
		tbl(svc("198.51.100.1", 80, "mh", dst("10.0.0.1", 1), dst("10.0.0.1", 2))),
		tbl(svc("198.51.100.1", 80, "mh", append(manyDests(destScanMax+8), dst("10.0.0.7", 2))...)),
		tbl(svc("198.51.100.1", 80, "mh", dst("2001:db8::1", 1))),
	}
	for i, b := range bad {
		if err := b.Check(); err == nil {
			t.Errorf("table %d should be refused", i)
		}
	}
}

func BenchmarkDiff1000x10(b *testing.B) {
	mk := func(weight int) Table {
		var t Table
		for i := range 1000 {
			s := svc(fmt.Sprintf("198.51.%d.%d", 100+i/250, i%250+1), 80, "mh")
			for j := range 10 {
				s.Destinations = append(s.Destinations, dst(fmt.Sprintf("10.%d.%d.%d", i/250, i%250, j+1), weight))
			}
			t.Services = append(t.Services, s)
		}
		return t
	}
	have := mk(1)
	b.Run("identical", func(b *testing.B) {
		want := mk(1)
		b.ReportAllocs()
		for b.Loop() {
			if p := Diff(have, want); len(p) != 0 {
				b.Fatal("plan not empty")
			}
		}
	})
	b.Run("one-weight-change", func(b *testing.B) {
		want := mk(1)
		want.Services[500].Destinations[5].Weight = 0
		b.ReportAllocs()
		for b.Loop() {
			if p := Diff(have, want); len(p) != 1 {
				b.Fatalf("plan has %d ops, want 1", len(p))
			}
		}
	})
	b.Run("from-empty", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if p := Diff(Table{}, have); len(p) != 11000 {
				b.Fatalf("plan has %d ops", len(p))
			}
		}
	})
}
