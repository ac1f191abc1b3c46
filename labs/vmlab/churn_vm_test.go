package vmlab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/ipvs"
	"github.com/anycastd/anycastd/labs/labtest"
)

// The churn table (issue 20): what each kind of routine change costs the
// established flows that ECMP spreads over a tier of four IPVS directors
// running mh, with and without the kernel's connection synchronisation.
// Each row holds its own set of long flows from many client addresses
// (mh hashes the source address), makes one change (or one of the
// combinations that break flows with mh alone), and counts the flows
// whose own real server stayed up that no longer echo. The directors'
// tables are changed by an ipvs.Reconciler each, as the daemon changes
// them (a removed backend drains at weight 0 while it has connections;
// mh's fallback flag set), one director after the other within
// milliseconds, as a config reaches them.

// churnServers are the real servers of the base table; rs4 is the spare a
// row may add.
var churnServers = []string{"10.1.0.11", "10.1.0.12", "10.1.0.13"}

const churnSpare = "10.1.0.14"

// churnService is the mh service with the given destinations (address,
// weight), as the daemon builds it.
func churnService(dests ...churnDest) ipvs.Service {
	s := service("mh")
	s.Flags = ipvs.Fallback("mh")
	s.DrainTimeout = time.Minute
	for _, d := range dests {
		s.Destinations = append(s.Destinations, ipvs.Destination{
			DestKey: ipvs.DestKey{Addr: netip.MustParseAddr(d.addr), Port: 80}, Weight: d.weight, Forward: ipvs.DR})
	}
	return s
}

type churnDest struct {
	addr   string
	weight int
}

func churnBase() []churnDest {
	var ds []churnDest
	for _, a := range churnServers {
		ds = append(ds, churnDest{a, 100})
	}
	return ds
}

// with returns ds with the destination addr set to weight (appended if
// it is not there; removed if weight < 0).
func with(ds []churnDest, addr string, weight int) []churnDest {
	var out []churnDest
	found := false
	for _, d := range ds {
		if d.addr == addr {
			found = true
			if weight >= 0 {
				out = append(out, churnDest{addr, weight})
			}
			continue
		}
		out = append(out, d)
	}
	if !found && weight >= 0 {
		out = append(out, churnDest{addr, weight})
	}
	return out
}

// churnLab is the flow lab with a spare real server, many client
// addresses and a Reconciler per director.
type churnLab struct {
	*flowLab
	srcs []string
	recs map[string]*ipvs.Reconciler
}

func newChurnLab(t *testing.T) *churnLab {
	l := &churnLab{flowLab: newFlowLab(t)}
	// rs4: up and serving, in no table until a row adds it.
	l.addServer("rs4", churnSpare)
	// The client's TCP picks a new hash for a connection after a
	// retransmission timeout, and the router's multipath takes a
	// packet's hash from its sender when it has one: under the emulated
	// VM's load, flows moved between directors with no change at all
	// (the single-change rows lost up to 153 of 3,000 flows without
	// sync, in no consistent row). A router hashes the headers, which a
	// retransmission does not change: so does the lab's, with the
	// client keeping its hash.
	l.ns["cl"].Run("sysctl", "-qw", "net.core.txrehash=0")
	for i := 2; i <= 251; i++ {
		a := fmt.Sprintf("10.0.0.%d", i)
		l.ns["cl"].Run("ip", "addr", "add", a+"/24", "dev", "c0")
		l.srcs = append(l.srcs, a)
	}
	return l
}

// reset gives every director an empty table and then the base one
// through a new Reconciler, sync daemons as asked, every director in the
// route and every link up.
func (l *churnLab) reset(sync bool) {
	t := l.t
	t.Helper()
	ctx := context.Background()
	l.recs = map[string]*ipvs.Reconciler{}
	for i := 1; i <= flowDirectors; i++ {
		name := fmt.Sprintf("d%d", i)
		up(l.ns[name])
		l.ns[name].Run("sysctl", "-qw", "net.ipv4.vs.sloppy_tcp=1")
		k := l.dr.kernels[name]
		have, err := k.Table(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := k.Apply(ctx, ipvs.Diff(have, ipvs.Table{})); err != nil {
			t.Fatal(err)
		}
		var want []ipvs.SyncDaemon
		if sync {
			want = []ipvs.SyncDaemon{{State: ipvs.SyncMaster, Interface: "eth0", SyncID: 20},
				{State: ipvs.SyncBackup, Interface: "eth0", SyncID: 20}}
		}
		if _, _, err := ipvs.SyncTo(ctx, k, want); err != nil {
			t.Fatal(err)
		}
		r, err := ipvs.NewReconciler(k, "")
		if err != nil {
			t.Fatal(err)
		}
		l.recs[name] = r
	}
	for _, rs := range []string{"rs1", "rs2", "rs3", "rs4"} {
		up(l.ns[rs])
	}
	l.set(churnBase(), 1, 2, 3, 4)
	l.route(1, 2, 3, 4)
}

// up brings a host's LAN link back (after a row took it down) with the
// default route the link's going down removed.
func up(n *labtest.Netns) {
	n.Run("ip", "link", "set", "eth0", "up")
	n.Run("ip", "route", "replace", "default", "via", "10.1.0.254")
}

// set makes the given directors' tables hold ds, one after the other.
func (l *churnLab) set(ds []churnDest, directors ...int) {
	l.t.Helper()
	want := ipvs.Table{Services: []ipvs.Service{churnService(ds...)}}
	for _, i := range directors {
		name := fmt.Sprintf("d%d", i)
		if _, err := l.recs[name].Reconcile(context.Background(), want, time.Now()); err != nil {
			l.t.Fatalf("%s: %v", name, err)
		}
	}
}

// churnRow is one kind of change.
type churnRow struct {
	name string
	// initial is the route before the flows start (nil: all four).
	initial []int
	// change makes it; down names the real server whose failure it is
	// (its flows are not counted).
	change func(l *churnLab)
	down   string
	// combo: a combination that breaks flows with mh alone (a backend
	// change, then flows moved between directors whose tables changed).
	combo bool
}

var all4 = []int{1, 2, 3, 4}

var churnRows = []churnRow{
	{name: "a backend fails (its link goes down, every director sets it to weight 0)", down: "rs3",
		change: func(l *churnLab) {
			l.ns["rs3"].Run("ip", "link", "set", "eth0", "down")
			l.set(with(churnBase(), "10.1.0.13", 0), all4...)
		}},
	{name: "a backend is added", change: func(l *churnLab) { l.set(with(churnBase(), churnSpare, 100), all4...) }},
	{name: "a backend is removed by config (drains at weight 0)", change: func(l *churnLab) { l.set(with(churnBase(), "10.1.0.13", -1), all4...) }},
	{name: "a backend is drained to weight 0", change: func(l *churnLab) { l.set(with(churnBase(), "10.1.0.13", 0), all4...) }},
	{name: "a backend's weight changes (100 to 90)", change: func(l *churnLab) { l.set(with(churnBase(), "10.1.0.11", 90), all4...) }},
	{name: "a director is removed from the route", change: func(l *churnLab) { l.route(1, 2, 3) }},
	{name: "a director is added to the route", initial: []int{1, 2, 3}, change: func(l *churnLab) { l.route(1, 2, 3, 4) }},
	{name: "a director dies (its link goes down, its route goes)", change: func(l *churnLab) {
		l.ns["d4"].Run("ip", "link", "set", "eth0", "down")
		l.route(1, 2, 3)
	}},
	{name: "a backend is added, then a director is removed", combo: true, change: func(l *churnLab) {
		l.set(with(churnBase(), churnSpare, 100), all4...)
		l.route(1, 2, 3)
	}},
	{name: "a backend is removed by config, then a director is removed", combo: true, change: func(l *churnLab) {
		l.set(with(churnBase(), "10.1.0.13", -1), all4...)
		l.route(1, 2, 3)
	}},
	{name: "a backend's weight changes, then a director is removed", combo: true, change: func(l *churnLab) {
		l.set(with(churnBase(), "10.1.0.11", 90), all4...)
		l.route(1, 2, 3)
	}},
	{name: "a director is removed while a backend is being added (three directors have it)", combo: true, change: func(l *churnLab) {
		l.set(with(churnBase(), churnSpare, 100), 1, 2, 3)
		l.route(1, 2, 3)
	}},
}

// churnFlows is how many flows each row holds: ANYCASTD_CHURN_FLOWS
// (make bench runs the table once with 3,000, and sets 0 to skip it in
// the runs of the other VM measurements), 500 by default.
func churnFlows() int {
	if n, err := strconv.Atoi(os.Getenv("ANYCASTD_CHURN_FLOWS")); err == nil && n >= 0 {
		return n
	}
	return 500
}

// measure runs one row and returns the flows counted (their real server
// stayed up) and how many of them broke.
func (l *churnLab) measure(row churnRow, sync bool, n int) (counted, broke int) {
	t := l.t
	t.Helper()
	l.reset(sync)
	if row.initial != nil {
		l.route(row.initial...)
	}
	h := l.dr.hold(t, "cl", vip+":80", strconv.Itoa(n), strings.Join(l.srcs, ","))
	defer h.Stop()
	// Every flow echoes before the change (a flow whose answer took
	// longer than the helper's 3 s under the emulated VM's load is asked
	// again: one that never answers would count as broken).
	for try := 1; ; try++ {
		ok, failed := parseCheck(h.Check())
		if ok == n {
			break
		}
		if try == 5 {
			t.Fatalf("%s: before the change only %d of %d flows echo (the others' servers: %v)", row.name, ok, n, failed)
		}
		t.Logf("%s: %d of %d flows echo before the change; asking again", row.name, ok, n)
		time.Sleep(time.Second)
	}
	h.Check() // past the sync threshold (3 packets)
	if sync {
		l.waitSynced(n)
	}
	row.change(l)
	time.Sleep(300 * time.Millisecond)
	// A broken flow (reset, or sent to a server that never saw it) fails
	// every check from now on; one that was only slow to answer under
	// the VM's load answers the next: the last of three checks counts.
	var ok int
	var failed []string
	for try := 1; try <= 3; try++ {
		if ok, failed = parseCheck(h.Check()); len(failed) == 0 || slices.Equal(slices.Compact(slices.Sorted(slices.Values(failed))), []string{row.down}) {
			break
		}
		time.Sleep(time.Second)
	}
	servers := strings.Split(h.Ready[1], ",")
	lost := 0
	for _, s := range servers {
		if s == row.down {
			lost++
		}
	}
	counted = n - lost
	for _, s := range failed {
		if s != row.down {
			broke++
		}
	}
	if ok+len(failed) != n {
		t.Fatalf("%s: %d flows echo and %d failed of %d", row.name, ok, len(failed), n)
	}
	return counted, broke
}

// waitSynced waits until every director holds the n flows' connections
// (its own and the others' through the sync daemons), 20 s at most.
func (l *churnLab) waitSynced(n int) {
	deadline := time.Now().Add(20 * time.Second)
	for i := 1; i <= flowDirectors; i++ {
		name := fmt.Sprintf("d%d", i)
		for {
			out, _ := l.ns[name].Try("cat", "/proc/net/ip_vs_conn")
			got := strings.Count(out, "ESTABLISHED")
			if got >= n {
				break
			}
			if time.Now().After(deadline) {
				l.t.Logf("%s holds %d of the %d flows' connections after 20 s", name, got, n)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// parseCheck reads "ok K/N [failed:S,S,...]".
func parseCheck(line string) (ok int, failed []string) {
	var total int
	fmt.Sscanf(line, "ok %d/%d", &ok, &total)
	if _, f, found := strings.Cut(line, "failed:"); found {
		failed = strings.Split(strings.TrimSpace(f), ",")
	}
	return ok, failed
}

// TestVMChurnTable measures the churn table. Each row runs without and
// with connection sync; the report gets one measure line per row. Every
// single change, and every change with sync, must keep 99 % of the
// counted flows here (the goal is 99.9 %, shown on 3,000 flows per row by
// make bench); the combinations that break flows with mh alone are what
// sync is for, and are only reported without it.
func TestVMChurnTable(t *testing.T) {
	n := churnFlows()
	if n == 0 {
		t.Skip("ANYCASTD_CHURN_FLOWS=0: the churn table is measured in a run of its own")
	}
	l := newChurnLab(t)
	// Every row without sync first, then every row with it: the entries
	// a backup daemon added for another director's flows outlive those
	// flows (the sync does not carry every close), and a flow of a later
	// row that reuses such an entry's addresses and ports would be taken
	// for one sync kept.
	res := make([][2]struct{ counted, broke int }, len(churnRows))
	for i, sync := range []bool{false, true} {
		for r, row := range churnRows {
			start := time.Now()
			res[r][i].counted, res[r][i].broke = l.measure(row, sync, n)
			t.Logf("%s, sync %v: %d of %d counted flows broke (%s)", row.name, sync, res[r][i].broke, res[r][i].counted, time.Since(start).Round(time.Second))
		}
	}
	for r, row := range churnRows {
		res := res[r]
		pct := func(i int) float64 {
			return 100 * float64(res[i].counted-res[i].broke) / float64(max(res[i].counted, 1))
		}
		t.Logf("measure: churn, %s: %.2f %% of %d flows survive without connection sync, %.2f %% of %d with it",
			row.name, pct(0), res[0].counted, pct(1), res[1].counted)
		if pct(1) < 99 {
			t.Errorf("%s: with connection sync only %.2f %% survived", row.name, pct(1))
		}
		if !row.combo && pct(0) < 99 {
			t.Errorf("%s: only %.2f %% survived without sync (mh alone should keep them)", row.name, pct(0))
		}
	}
}
