package ipvs

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anycastd/anycastd/labs/labtest"
	mobyipvs "github.com/moby/ipvs"
)

// vmKernel opens IPVS in a new namespace whose interfaces make the test
// destinations routable (the kernel refuses a destination it cannot route).
func vmKernel(t *testing.T, hint string) (*Kernel, *labtest.Netns) {
	t.Helper()
	labtest.RequireVM(t)
	ns := labtest.NewNetns(t, hint)
	ns.Run("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
	ns.Run("ip", "addr", "add", "10.0.0.1/16", "dev", "v0")
	ns.Run("ip", "-6", "addr", "add", "2001:db8::1/64", "dev", "v0", "nodad")
	ns.Run("ip", "link", "set", "v0", "up")
	ns.Run("ip", "link", "set", "v1", "up")
	k, err := OpenKernel("/run/netns/" + ns.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	return k, ns
}

func withPort(d Destination, port uint16) Destination { d.Port = port; return d }
func fwd(d Destination, f Forward) Destination        { d.Forward = f; return d }

func vmTable() Table {
	dr := svc("198.51.100.1", 80, "mh", dst("10.0.1.1", 1), dst("10.0.1.2", 2), dst("10.0.1.3", 1))
	dr.Flags = SchedFlag2 // mh-port
	nat := svc("198.51.100.2", 443, "wlc", withPort(fwd(dst("10.0.2.1", 100), NAT), 8443), withPort(fwd(dst("10.0.2.2", 50), NAT), 8443))
	nat.Timeout, nat.PersistBits = 300, 24
	nat.Destinations[0].UpperThreshold, nat.Destinations[0].LowerThreshold = 1000, 800
	tun := svc("198.51.100.3", 80, "rr", fwd(dst("10.0.3.1", 1), TUN), fwd(dst("10.0.3.2", 1), TUN))
	udp := svc("198.51.100.1", 53, "sh", dst("10.0.1.1", 1), dst("10.0.1.2", 1))
	udp.Protocol = UDP
	udp.Flags = SchedFlag1 | SchedFlag2 // sh-fallback, sh-port
	mark := Service{ServiceKey: ServiceKey{Family: IPv4, FWMark: 100}, Scheduler: "mh", Flags: SchedFlag1,
		Destinations: []Destination{withPort(dst("10.0.4.1", 1), 0), withPort(dst("10.0.4.2", 1), 0)}}
	mark6 := Service{ServiceKey: ServiceKey{Family: IPv6, FWMark: 100}, Scheduler: "rr",
		Destinations: []Destination{withPort(dst("2001:db8::41", 1), 0)}}
	v6 := svc("2001:db8:100::1", 80, "mh", dst("2001:db8::11", 1), dst("2001:db8::12", 1))
	v6.Timeout, v6.PersistBits = 60, 64
	return tbl(dr, nat, tun, udp, mark, mark6, v6)
}

func TestVMKernelCRUD(t *testing.T) {
	k, _ := vmKernel(t, "crud")
	ctx := context.Background()
	want := vmTable()
	if err := k.Apply(ctx, Diff(Table{}, want)); err != nil {
		t.Fatalf("create: %v", err)
	}
	got, err := k.Table(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := equalTables(got, want); err != nil {
		t.Fatalf("read back: %v", err)
	}
	if p := Diff(got, want); len(p) != 0 {
		t.Fatalf("diff after apply is not empty:\n%s", p)
	}

	// Edits in place: weight, forwarding, scheduler, flags, persistence;
	// a destination and a service removed.
	want2 := vmTable()
	idx := want2.Index()
	dr := idx[svc("198.51.100.1", 80, "").ServiceKey]
	dr.Destinations[1].Weight = 0
	dr.Destinations = slices.Delete(dr.Destinations, 2, 3)
	tun := idx[svc("198.51.100.3", 80, "").ServiceKey]
	tun.Scheduler = "wrr"
	tun.Destinations[0].Forward = DR
	nat := idx[svc("198.51.100.2", 443, "").ServiceKey]
	nat.Timeout, nat.PersistBits = 0, 0
	want2.Services = slices.DeleteFunc(want2.Services, func(s Service) bool { return s.Protocol == UDP })
	p := Diff(got, want2)
	kinds := map[OpKind]int{}
	for _, o := range p {
		kinds[o.Kind]++
	}
	if kinds[AddService]+kinds[AddDest] != 0 || kinds[UpdateDest] != 2 || kinds[UpdateService] != 2 || kinds[DelDest] != 1 || kinds[DelService] != 1 {
		t.Fatalf("edit plan is not minimal:\n%s", p)
	}
	if err := k.Apply(ctx, p); err != nil {
		t.Fatalf("edit: %v", err)
	}
	got, _ = k.Table(ctx)
	if err := equalTables(got, want2); err != nil {
		t.Fatalf("after edits: %v", err)
	}
	if p := Diff(got, want2); len(p) != 0 {
		t.Fatalf("diff after edits is not empty:\n%s", p)
	}

	// A one-destination change is exactly one netlink operation.
	want3 := Table{Services: slices.Clone(want2.Services)}
	i := slices.IndexFunc(want3.Services, func(s Service) bool { return s.Scheduler == "mh" && s.FWMark == 0 && s.Family == IPv4 })
	want3.Services[i].Destinations = slices.Clone(want3.Services[i].Destinations)
	want3.Services[i].Destinations[0].Weight = 7
	before := k.Ops()
	if err := k.Apply(ctx, Diff(got, want3)); err != nil {
		t.Fatal(err)
	}
	if n := k.Ops() - before; n != 1 {
		t.Errorf("one weight change took %d netlink operations, want 1", n)
	}
}

// TestVMKernelDestinationOrder checks the kernel behaviour Diff relies on:
// the kernel lists a service's destinations newest first, and mh's choice
// depends on that list.
func TestVMKernelDestinationOrder(t *testing.T) {
	k, ns := vmKernel(t, "order")
	ctx := context.Background()
	s := svc("198.51.100.9", 80, "mh")
	if err := k.Apply(ctx, Diff(Table{}, tbl(s))); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"10.0.1.1", "10.0.1.2", "10.0.1.3"} {
		s.Destinations = append(s.Destinations, dst(a, 1))
		have, _ := k.Table(ctx)
		if err := k.Apply(ctx, Diff(have, tbl(s))); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := mobyipvs.New("/run/netns/" + ns.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	rs := toMobyService(&s)
	ds, err := raw.GetDestinations(rs)
	if err != nil {
		t.Fatal(err)
	}
	var rawOrder []string
	for _, d := range ds {
		rawOrder = append(rawOrder, d.Address.String())
	}
	if !slices.Equal(rawOrder, []string{"10.0.1.3", "10.0.1.2", "10.0.1.1"}) {
		t.Fatalf("kernel list order %v: the model's assumption (newest first) is wrong", rawOrder)
	}
	// Insert in the middle: Diff re-adds what follows, and the kernel ends
	// up in the wanted order.
	want := svc("198.51.100.9", 80, "mh", dst("10.0.1.1", 1), dst("10.0.1.9", 1), dst("10.0.1.2", 1), dst("10.0.1.3", 1))
	have, _ := k.Table(ctx)
	if err := k.Apply(ctx, Diff(have, tbl(want))); err != nil {
		t.Fatal(err)
	}
	got, _ := k.Table(ctx)
	var order []string
	for _, d := range got.Services[0].Destinations {
		order = append(order, d.Addr.String())
	}
	if !slices.Equal(order, []string{"10.0.1.1", "10.0.1.9", "10.0.1.2", "10.0.1.3"}) {
		t.Fatalf("order after insert: %v", order)
	}
}

// TestVMKernelFingerprint: two kernels given the same mh destinations in
// another order read back with different fingerprints (a director that
// adopted a table another tool built), and a Reconciler adopting the
// second one puts its list in the wanted order: the fingerprints, read
// from the kernels, agree.
func TestVMKernelFingerprint(t *testing.T) {
	k1, _ := vmKernel(t, "fp1")
	k2, _ := vmKernel(t, "fp2")
	ctx := context.Background()
	var dests []Destination
	for i := 1; i <= 8; i++ {
		dests = append(dests, dst(fmt.Sprintf("10.0.2.%d", i), 1))
	}
	want := svc("198.51.100.10", 80, "mh", dests...)
	r1 := mustReconciler(t, k1, "")
	if _, err := r1.Reconcile(ctx, tbl(want), time.Now()); err != nil {
		t.Fatal(err)
	}
	reversed := slices.Clone(dests)
	slices.Reverse(reversed)
	other := svc("198.51.100.10", 80, "mh", reversed...)
	if err := k2.Apply(ctx, Diff(Table{}, tbl(other))); err != nil {
		t.Fatal(err)
	}
	read := func(k *Kernel) string {
		t.Helper()
		got, err := k.Table(ctx)
		if err != nil || len(got.Services) != 1 {
			t.Fatalf("read: %+v %v", got, err)
		}
		return Fingerprint(&got.Services[0])
	}
	fp1, fp2 := read(k1), read(k2)
	if fp1 != Fingerprint(&want) || r1.Fingerprints()[want.ServiceKey] != fp1 {
		t.Fatalf("the first kernel reads %s, its Reconciler says %s; want %s", fp1, r1.Fingerprints()[want.ServiceKey], Fingerprint(&want))
	}
	if fp2 == fp1 {
		t.Fatalf("the same destinations in another order read back with the same fingerprint %s", fp1)
	}
	r2 := mustReconciler(t, k2, "")
	res, err := r2.Reconcile(ctx, tbl(want), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got := read(k2); got != fp1 || r2.Fingerprints()[want.ServiceKey] != fp1 {
		t.Fatalf("after adopting (plan %v): the kernel reads %s, the Reconciler says %s; want %s", ops(res.Plan), got, r2.Fingerprints()[want.ServiceKey], fp1)
	}
}

func TestVMKernelRefusedService(t *testing.T) {
	k, _ := vmKernel(t, "refuse")
	ctx := context.Background()
	good := svc("198.51.100.1", 80, "rr", dst("10.0.1.1", 1))
	bad := svc("198.51.100.2", 80, "nosuch", dst("10.0.1.1", 1))
	err := k.Apply(ctx, Diff(Table{}, tbl(good, bad)))
	var oe *OpError
	if !errors.As(err, &oe) || oe.Op.Service.Scheduler != "nosuch" || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("want the kernel's ENOENT for the unknown scheduler, got %v", err)
	}
	t.Logf("kernel refused as expected: %v", err)
	got, _ := k.Table(ctx)
	if len(got.Services) != 1 || got.Services[0].ServiceKey != good.ServiceKey || len(got.Services[0].Destinations) != 1 {
		t.Fatalf("the good service was not applied: %+v", got.Services)
	}
}

func TestVMKernelAdoptAfterRestart(t *testing.T) {
	k, ns := vmKernel(t, "adopt")
	ctx := context.Background()
	state := filepath.Join(t.TempDir(), "owned.json")
	r, err := NewReconciler(k, state)
	if err != nil {
		t.Fatal(err)
	}
	want := vmTable()
	if _, err := r.Reconcile(ctx, want, time.Now()); err != nil {
		t.Fatal(err)
	}
	// Someone adds a service by hand (ipvsadm); it is foreign.
	foreign := svc("192.0.2.77", 22, "rr", dst("10.0.9.9", 1))
	if err := k.Apply(ctx, Diff(Table{}, tbl(foreign))); err != nil {
		t.Fatal(err)
	}
	k.Close()

	// The daemon restarts: a new handle and reconciler adopt the table.
	k2, err := OpenKernel("/run/netns/" + ns.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer k2.Close()
	r2, err := NewReconciler(k2, state)
	if err != nil {
		t.Fatal(err)
	}
	before := k2.Ops()
	res, err := r2.Reconcile(ctx, want, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Plan) != 0 || k2.Ops() != before {
		t.Fatalf("restart changed the kernel table:\n%s", res.Plan)
	}
	if !slices.Equal(res.Foreign, []ServiceKey{foreign.ServiceKey}) {
		t.Errorf("foreign services reported: %v", res.Foreign)
	}
	got, _ := k2.Table(ctx)
	if len(got.Services) != len(want.Services)+1 {
		t.Errorf("after restart %d services, want %d", len(got.Services), len(want.Services)+1)
	}
}

// TestVMHostDirectorSettings sets the director's sysctls and VIP in the
// VM's own namespace (the VM is thrown away) and restores them.
func TestVMHostDirectorSettings(t *testing.T) {
	labtest.RequireVM(t)
	h, err := OpenHost(filepath.Join(t.TempDir(), "host.json"))
	if err != nil {
		t.Fatal(err)
	}
	before, _ := h.ReadSysctl("net.ipv4.vs.sloppy_tcp")
	msgs, err := h.SetupDirector(DirectorSettings{VIPs: []netip.Addr{addr("198.51.100.50")}, NAT: true})
	if err != nil {
		t.Fatalf("setup: %v\n%s", err, strings.Join(msgs, "\n"))
	}
	for name, want := range map[string]string{
		"net.ipv4.vs.sloppy_tcp": "1", "net.ipv4.vs.sloppy_sctp": "1", "net.ipv4.vs.expire_nodest_conn": "1",
		"net.ipv4.vs.expire_quiescent_template": "1", "net.ipv4.vs.conntrack": "1", "net.ipv4.ip_forward": "1",
	} {
		if got, _ := h.ReadSysctl(name); got != want {
			t.Errorf("%s = %q, want %s", name, got, want)
		}
	}
	if again, _ := h.SetupDirector(DirectorSettings{VIPs: []netip.Addr{addr("198.51.100.50")}, NAT: true}); strings.Contains(strings.Join(again, "\n"), "set ") {
		t.Errorf("second setup changed something: %v", again)
	}
	// The service with .50 goes, one with .51 comes: .50 is unbound.
	msgs, err = h.SetupDirector(DirectorSettings{VIPs: []netip.Addr{addr("198.51.100.51")}, NAT: true})
	if err != nil {
		t.Fatalf("setup with another VIP: %v\n%s", err, strings.Join(msgs, "\n"))
	}
	if out, _ := exec.Command("ip", "route", "show", "table", "local", "proto", "251").CombinedOutput(); strings.Contains(string(out), "198.51.100.50 ") ||
		!strings.Contains(string(out), "local 198.51.100.51 dev lo") {
		t.Errorf("local routes after the VIP changed (want .51, not .50):\n%s", out)
	}
	if out, _ := exec.Command("ip", "-o", "addr", "show", "dev", "lo").CombinedOutput(); strings.Contains(string(out), "198.51.100.5") {
		t.Errorf("a VIP is an address on lo (the routing daemon's in kernel mode):\n%s", out)
	}
	if _, err := h.ReadSysctl("net.ipv4.vs.no_such_knob"); err == nil || !strings.Contains(err.Error(), "net.ipv4.vs.no_such_knob") {
		t.Errorf("a missing sysctl must be an error naming it, got %v", err)
	}
	if _, err := h.Restore(); err != nil {
		t.Fatal(err)
	}
	if got, _ := h.ReadSysctl("net.ipv4.vs.sloppy_tcp"); got != before {
		t.Errorf("sloppy_tcp %s after restore, was %s", got, before)
	}
}

// measureTable is the measurements' table: 1,000 mh services with 10 DR
// destinations each (10,000 destinations), routable through v0 once
// 10.128.0.1/9 is on it.
func measureTable() Table {
	var want Table
	for i := range 1000 {
		s := svc(fmt.Sprintf("198.18.%d.%d", i/250, i%250+1), 80, "mh")
		for j := range 10 {
			s.Destinations = append(s.Destinations, dst(fmt.Sprintf("10.%d.%d.%d", 128+i/250, i%250, j+1), 1))
		}
		want.Services = append(want.Services, s)
	}
	return want
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// TestVMMeasureApply measures, inside the VM, applying a table of 1,000
// services with 10 destinations each (10,000 destinations) from empty, and
// a one-destination change, each beside the peer doing the same in the
// same boot: ipvsadm -R and keepalived's start for the table, ipvsadm -e
// for the change. Measurements are logged ("measure:") for the README,
// never asserted: the VM runs under software emulation.
func TestVMMeasureApply(t *testing.T) {
	k, ns := vmKernel(t, "measure")
	ns.Run("ip", "addr", "add", "10.128.0.1/9", "dev", "v0")
	ctx := context.Background()
	want := measureTable()
	p := Diff(Table{}, want)
	start, ops := time.Now(), k.Ops()
	if err := k.Apply(ctx, p); err != nil {
		t.Fatal(err)
	}
	applyTime := time.Since(start)
	t.Logf("measure: apply-10k-from-empty %d ops %.0f ms (%.0f ops/s)", k.Ops()-ops, ms(applyTime), float64(k.Ops()-ops)/applyTime.Seconds())

	start = time.Now()
	have, err := k.Table(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("measure: read-10k-table %.0f ms", ms(time.Since(start)))
	// Batched and staged, the kernel holds exactly the wanted table:
	// schedulers, weights, destination order.
	if d := Diff(have, want); len(d) != 0 {
		t.Fatalf("after the batched apply the kernel differs from the wanted table by %d operations, first %s", len(d), d[0])
	}

	want.Services[500].Destinations[5].Weight = 0
	start, ops = time.Now(), k.Ops()
	if err := k.Apply(ctx, Diff(have, want)); err != nil {
		t.Fatal(err)
	}
	n := k.Ops() - ops
	t.Logf("measure: one-destination-change %d ops %.2f ms (diff and apply, table already read)", n, ms(time.Since(start)))
	if n != 1 {
		t.Errorf("a one-destination change took %d netlink operations, want 1", n)
	}

	// The daemon's path for an event (a backend's health flips): one
	// Reconcile. Between full reads it works from what it applied; with
	// a full read on every turn (the old behaviour) it reads 10,000
	// destinations first. Beside it, ipvsadm -e for the same change, as
	// an operator (or keepalived's checker) makes it.
	svc5 := want.Services[500]
	d5 := svc5.Destinations[5]
	ipvsadmE := func(weight int) time.Duration {
		start := time.Now()
		ns.Run("ipvsadm", "-e", "-t", fmt.Sprintf("%s:80", svc5.Addr), "-r", fmt.Sprintf("%s:80", d5.Addr), "-g", "-w", fmt.Sprint(weight))
		return time.Since(start)
	}
	cached, _ := NewReconciler(k, "")
	cached.SetFullRead(time.Hour)
	every, _ := NewReconciler(k, "")
	now := time.Now()
	if _, err := cached.Reconcile(ctx, want, now); err != nil {
		t.Fatal(err)
	}
	var tCached, tEvery, tAdm []time.Duration
	for i := range 5 {
		w := 3 + i
		want.Services[500].Destinations[5].Weight = w
		start := time.Now()
		res, err := cached.Reconcile(ctx, want, now.Add(time.Duration(i+1)*time.Second))
		tCached = append(tCached, time.Since(start))
		if err != nil || len(res.Plan) != 1 || res.FullRead {
			t.Fatalf("cached reconcile: %v, plan %v, full read %v", err, res.Plan, res.FullRead)
		}
		// The old path sets it back (a change for it too).
		want.Services[500].Destinations[5].Weight = 1
		start = time.Now()
		if res, err := every.Reconcile(ctx, want, now); err != nil || len(res.Plan) != 1 {
			t.Fatalf("reconcile with a full read: %v, plan %v", err, res.Plan)
		}
		tEvery = append(tEvery, time.Since(start))
		tAdm = append(tAdm, ipvsadmE(w))
		ipvsadmE(1)
		// The kernel now differs from what the cached reconciler
		// believes (3+i); its next change (4+i) is one operation all
		// the same.
	}
	t.Logf("measure: event-to-kernel-10k (one weight, Reconcile between full reads) median %.2f ms %v", ms(median(tCached)), tCached)
	t.Logf("measure: event-to-kernel-10k-full-read (one weight, Reconcile reading the table) median %.0f ms %v", ms(median(tEvery)), tEvery)
	t.Logf("measure: ipvsadm-e-10k (one weight, ipvsadm -e, process start included) median %.2f ms %v", ms(median(tAdm)), tAdm)
	t.Logf("measure: event-to-kernel-10k-ratio-to-ipvsadm %.2f", float64(median(tCached))/float64(median(tAdm)))

	measureBulkPeers(t, ctx, "mh")
	measureBulkPeers(t, ctx, "wlc")
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// measureBulkPeers programs the same 1,000 x 10 table with scheduler
// sched from empty with anycastd's Kernel.Apply, ipvsadm -R and keepalived
// (its checker process, start to the last destination in the kernel),
// each in a fresh namespace of the same boot.
func measureBulkPeers(t *testing.T, ctx context.Context, sched string) {
	want := measureTable()
	for i := range want.Services {
		want.Services[i].Scheduler = sched
	}
	var ours time.Duration
	{
		k, ns := vmKernel(t, "measure-ours-"+sched)
		ns.Run("ip", "addr", "add", "10.128.0.1/9", "dev", "v0")
		p := Diff(Table{}, want)
		start := time.Now()
		if err := k.Apply(ctx, p); err != nil {
			t.Fatal(err)
		}
		ours = time.Since(start)
		t.Logf("measure: bulk-10k-%s anycastd %.0f ms", sched, ms(ours))
	}
	if _, err := exec.LookPath("ipvsadm"); err == nil {
		_, ns := vmKernel(t, "measure-ipvsadm-"+sched)
		ns.Run("ip", "addr", "add", "10.128.0.1/9", "dev", "v0")
		var rules strings.Builder
		for _, s := range want.Services {
			fmt.Fprintf(&rules, "-A -t %s:80 -s %s\n", s.Addr, sched)
			for _, d := range s.Destinations {
				fmt.Fprintf(&rules, "-a -t %s:80 -r %s:80 -g -w %d\n", s.Addr, d.Addr, d.Weight)
			}
		}
		cmd := exec.Command("ip", "netns", "exec", ns.Name, "ipvsadm", "-R")
		cmd.Stdin = strings.NewReader(rules.String())
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("ipvsadm -R: %v %s", err, out)
		} else {
			t.Logf("measure: bulk-10k-%s ipvsadm-R %.0f ms", sched, ms(time.Since(start)))
		}
	} else {
		t.Logf("no ipvsadm in the VM: no comparison")
	}
	if _, err := exec.LookPath("keepalived"); err != nil {
		t.Logf("no keepalived in the VM: no comparison")
		return
	}
	k, ns := vmKernel(t, "measure-keepalived-"+sched)
	ns.Run("ip", "addr", "add", "10.128.0.1/9", "dev", "v0")
	dir := t.TempDir()
	var conf strings.Builder
	for _, s := range want.Services {
		fmt.Fprintf(&conf, "virtual_server %s 80 {\n  lb_algo %s\n  lb_kind DR\n  protocol TCP\n", s.Addr, sched)
		for _, d := range s.Destinations {
			fmt.Fprintf(&conf, "  real_server %s 80 {\n    weight %d\n  }\n", d.Addr, d.Weight)
		}
		conf.WriteString("}\n")
	}
	path := filepath.Join(dir, "keepalived.conf")
	if err := os.WriteFile(path, []byte(conf.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	last := want.Services[len(want.Services)-1]
	cmd := exec.Command("ip", "netns", "exec", ns.Name, "keepalived", "-n", "-C", "-f", path,
		"-p", filepath.Join(dir, "ka.pid"), "-c", filepath.Join(dir, "chk.pid"), "-r", filepath.Join(dir, "vrrp.pid"))
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Errorf("keepalived: %v", err)
		return
	}
	defer func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() }()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		// keepalived adds the services in the file's order: the last
		// one's tenth destination means the table is complete.
		if ds, err := k.Destinations(ctx, last.ServiceKey); err == nil && len(ds) == len(last.Destinations) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("keepalived did not program the table in 2 minutes:\n%s", out.String())
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	el := time.Since(start)
	have, err := k.Table(ctx)
	n := 0
	for _, s := range have.Services {
		n += len(s.Destinations)
	}
	if err != nil || n != 10000 {
		t.Errorf("keepalived's table: %d destinations, %v", n, err)
		return
	}
	t.Logf("measure: bulk-10k-%s keepalived %.0f ms", sched, ms(el))
	t.Logf("measure: bulk-10k-%s ratio-to-keepalived %.2f", sched, float64(ours)/float64(el))
}

// TestVMKernelBatchSeqWrap: a batch whose sequence numbers would wrap past
// 2^32 is renumbered from 1, so every acknowledgement is matched (without
// it the apply waited for acknowledgements it could not recognise).
func TestVMKernelBatchSeqWrap(t *testing.T) {
	k, ns := vmKernel(t, "seqwrap")
	ns.Run("ip", "addr", "add", "10.128.0.1/9", "dev", "v0")
	// Ten services: each wave of the batch holds ten requests, and the
	// first one straddles 2^32.
	var want Table
	for i := range 10 {
		s := svc(fmt.Sprintf("198.18.0.%d", i+1), 80, "wlc", dst(fmt.Sprintf("10.128.0.%d", i+2), 1))
		want.Services = append(want.Services, s)
	}
	k.b.seq = math.MaxUint32 - 3
	done := make(chan error, 1)
	go func() { done <- k.Apply(context.Background(), Diff(Table{}, want)) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the apply is stuck: acknowledgements across the wrap not matched")
	}
	have, err := k.Table(context.Background())
	if err != nil || len(have.Services) != 10 || len(have.Services[9].Destinations) != 1 {
		t.Fatalf("after the wrap: %+v %v", have, err)
	}
}
