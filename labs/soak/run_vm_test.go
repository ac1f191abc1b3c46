package soak

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/anycastd/anycastd/api"
	"github.com/anycastd/anycastd/ipvs"
)

// Fault kinds. Director faults impair one director each; at most two
// directors are impaired at once (the tier keeps max_active 4 of 5 but
// must survive losing one of its active ones while the standby covers).
var faultKinds = []string{"kill9", "sigterm", "drain", "uplink", "blackhole", "rs_stop", "weight", "check", "bird_restart", "keys", "sighup",
	"backend", "partition"}

// parseKinds reads SOAK_KINDS: empty is every kind; else the
// comma-separated kinds, each one of faultKinds.
func parseKinds(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return faultKinds, nil
	}
	var out []string
	for _, k := range strings.Split(s, ",") {
		k = strings.TrimSpace(k)
		if !slices.Contains(faultKinds, k) {
			return nil, fmt.Errorf("SOAK_KINDS: %q is no fault kind (%s)", k, strings.Join(faultKinds, ", "))
		}
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out, nil
}

func directorFault(kind string) bool {
	switch kind {
	case "kill9", "sigterm", "drain", "uplink", "blackhole":
		return true
	}
	return false
}

// fault is one entry of the schedule.
type fault struct {
	At     time.Duration // after the start
	Kind   string
	Target string // a director, a real server, "cluster" or "router"
	Hold   time.Duration
	Arg    int // the backend (weight, backend), 0..nRS-1
	// Side is a partition's smaller side: the directors cut off from
	// the others' gossip (one or two).
	Side []string

	start, restored time.Time
}

func (f *fault) String() string {
	if f.Kind == "partition" {
		return fmt.Sprintf("partition %s | others", strings.Join(f.Side, ","))
	}
	if f.Kind == "backend" || f.Kind == "weight" {
		return fmt.Sprintf("%s %s", f.Kind, rsAddr(rsNames[f.Arg]))
	}
	return fmt.Sprintf("%s %s", f.Kind, f.Target)
}

// schedule is the faults a seed plays over duration: the same seed, the
// same schedule.
//
// kinds are the fault kinds it draws from (faultKinds, or the ones
// SOAK_KINDS names to replay one kind alone).
func schedule(seed uint64, duration time.Duration, kinds []string) []*fault {
	rnd := rand.New(rand.NewPCG(seed, 0x50a4))
	busy := map[string]time.Duration{}
	var out []*fault
	for at := 10 * time.Second; at < duration-15*time.Second; at += time.Duration(1500+rnd.IntN(4000)) * time.Millisecond {
		kind := kinds[rnd.IntN(len(kinds))]
		hold := time.Duration(3000+rnd.IntN(6000)) * time.Millisecond
		var cands []string
		switch {
		case directorFault(kind):
			impaired := 0
			for _, d := range dirNames {
				if busy[d] > at {
					impaired++
				}
			}
			if impaired >= 2 {
				continue
			}
			cands = dirNames
		case kind == "rs_stop":
			cands = rsNames
		case kind == "bird_restart":
			cands = []string{"router"}
		case kind == "sighup":
			cands = dirNames
		case kind == "partition":
			// Its own target: services changes may meet it.
			cands = []string{"gossip"}
		default:
			cands = []string{"cluster"}
		}
		var free []string
		for _, c := range cands {
			if busy[c] <= at {
				free = append(free, c)
			}
		}
		if len(free) == 0 {
			continue
		}
		f := &fault{At: at, Kind: kind, Target: free[rnd.IntN(len(free))], Hold: hold, Arg: rnd.IntN(nRS)}
		if kind == "partition" {
			side := slices.Clone(dirNames)
			rnd.Shuffle(len(side), func(i, j int) { side[i], side[j] = side[j], side[i] })
			f.Side = side[:1+rnd.IntN(2)]
			slices.Sort(f.Side)
		}
		// A target settles for a few seconds after its restore.
		busy[f.Target] = at + hold + 5*time.Second
		out = append(out, f)
	}
	return out
}

// snapshot is the tier as one check sees it.
type snapshot struct {
	at     time.Time
	status map[string]*api.StatusResponse // running daemons that answered
	down   map[string]bool                // daemons not running
	hops   []string
	tables map[string]ipvs.Table
	// Kernel mode: the directors whose kernel holds the VIP for their
	// OSPF daemon, and those the router has a full adjacency with.
	kernel bool
	held   map[string]bool
	full   map[string]bool
}

func (l *lab) snap() *snapshot {
	s := &snapshot{at: time.Now(), status: map[string]*api.StatusResponse{}, down: map[string]bool{}, tables: map[string]ipvs.Table{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	if l.mode != modeBGP {
		s.kernel, s.held, s.full = true, map[string]bool{}, l.ospfFull()
	}
	for _, name := range dirNames {
		wg.Go(func() {
			st, err := l.status(name)
			// Right after the status: the two are compared (1b).
			held := s.kernel && l.heldInKernel(name)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && err.Error() == "not running" {
				s.down[name] = true
			} else if err == nil {
				s.status[name] = st
			}
			if s.kernel {
				s.held[name] = held
			}
		})
	}
	wg.Wait()
	s.hops = l.nextHops()
	for _, name := range dirNames {
		if tb, err := l.kern[name].Table(contextBG); err == nil {
			s.tables[name] = tb.Sorted()
		}
	}
	return s
}

// announcers are the directors that announce the VIP, without and with
// GRACEFUL_SHUTDOWN: that say so and have their BGP session up (an
// announcement without a session reaches no router: a director cut off
// from the network cannot know at once that it is, and claims it).
func (s *snapshot) announcers() (plain, gshut []string) {
	if s.kernel {
		// Kernel mode: a director announces what its status says, over
		// an adjacency that is up; a daemon that is down leaves its
		// announcement in the kernel (on purpose, like IPVS: traffic
		// goes on), so its kernel says.
		for _, name := range dirNames {
			if !s.full[name] {
				continue
			}
			st, ok := s.status[name]
			switch {
			case s.down[name] && s.held[name]:
				plain = append(plain, name)
			case ok && slices.ContainsFunc(st.VIPs, func(v api.VIPView) bool { return v.VIP.String() == vip && v.Announced }):
				plain = append(plain, name)
			}
		}
		return plain, nil
	}
	for name, st := range s.status {
		if !slices.ContainsFunc(st.Peers, func(p api.Peer) bool { return p.Established() }) {
			continue
		}
		for _, v := range st.VIPs {
			if v.VIP.String() == vip && v.Announced {
				if v.GracefulShutdown {
					gshut = append(gshut, name)
				} else {
					plain = append(plain, name)
				}
			}
		}
	}
	slices.Sort(plain)
	slices.Sort(gshut)
	return
}

// expectedHops is what the router should use: the plain announcers, or
// the GRACEFUL_SHUTDOWN ones when there is no other (local pref 0).
func (s *snapshot) expectedHops() []string {
	plain, gshut := s.announcers()
	if len(plain) > 0 {
		return plain
	}
	return gshut
}

// run plays the schedule with traffic and checks, and returns the report.
func (l *lab) run() *report {
	faults := schedule(l.seed, l.duration, l.kinds)
	l.rep.scheduled = len(faults)
	start := time.Now()
	l.rep.start = start
	traffic := l.helperCmd("cl", "traffic", vip, "10", strconv.Itoa(l.rep.flows), strings.Join(clientSources(), ","))
	out, _ := traffic.StdoutPipe()
	if err := traffic.Start(); err != nil {
		l.t.Fatal(err)
	}
	defer func() { traffic.Process.Kill(); traffic.Wait() }()
	go l.readTraffic(out)

	stop := make(chan struct{})
	go l.rep.watchStalls(stop)
	go l.rep.kstats.run(stop)
	checked := make(chan struct{})
	go func() {
		defer close(checked)
		c := newChecker(l)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		growth := time.NewTicker(5 * time.Second)
		defer growth.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				c.check(l.snap())
			case <-growth.C:
				c.growth()
			}
		}
	}()

	var wg sync.WaitGroup
	for _, f := range faults {
		if d := time.Until(start.Add(f.At)); d > 0 {
			time.Sleep(d)
		}
		wg.Go(func() { l.play(f) })
	}
	wg.Wait()
	// Let the last restores settle, then the last checks.
	if d := time.Until(start.Add(l.duration)); d > 0 {
		time.Sleep(d)
	}
	close(stop)
	<-checked
	l.rep.end = time.Now()
	l.rep.routing, l.rep.logs = l.routingSummary()
	return l.rep
}

var contextBG = backgroundContext()

func clientSources() []string {
	var out []string
	for i := 1; i <= 40; i++ {
		out = append(out, fmt.Sprintf("10.0.0.%d", i))
	}
	return out
}

func (l *lab) readTraffic(out interface{ Read([]byte) (int, error) }) {
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		l.rep.traffic(e)
	}
}

// play carries out one fault and its restore.
func (l *lab) play(f *fault) {
	if directorFault(f.Kind) {
		mu, _ := l.busy.LoadOrStore(f.Target, &sync.Mutex{})
		mu.(*sync.Mutex).Lock()
		defer mu.(*sync.Mutex).Unlock()
	}
	if directorFault(f.Kind) {
		n, _ := l.flowConns(f.Target)
		l.rep.note(f, fmt.Sprintf("it holds %d connections of the long flows' service", n))
	}
	f.start = time.Now()
	l.rep.begin(f)
	switch f.Kind {
	case "kill9":
		l.signal(f.Target, syscall.SIGKILL, 10*time.Second)
	case "sigterm":
		l.signal(f.Target, syscall.SIGTERM, 30*time.Second)
	case "drain":
		if out, err := l.anyctl(f.Target, "drain", "--reason", "soak"); err != nil {
			l.rep.note(f, "drain: "+strings.TrimSpace(out))
		}
	case "uplink":
		l.nsExec(f, "ip", "link", "set", "eth0", "down")
	case "blackhole":
		// Every packet in or out of eth0 dropped: the director is up,
		// its link is up, and nothing reaches it.
		l.nsExec(f, "/usr/sbin/nft", "add table inet soak; "+
			"add chain inet soak cut_in { type filter hook input priority 0; policy accept; }; "+
			"add chain inet soak cut_out { type filter hook output priority 0; policy accept; }; "+
			"add rule inet soak cut_in iifname eth0 ip daddr "+vip+" tcp dport 9000 counter; "+
			"add rule inet soak cut_in iifname eth0 drop; add rule inet soak cut_out oifname eth0 drop")
	case "rs_stop":
		l.stopServer(f.Target)
	case "weight":
		l.apply(f, func() { l.svcWeights[fmt.Sprintf("10.1.0.%d", 11+f.Arg)] = 2 })
	case "check":
		l.apply(f, func() { l.checkTimeout = checkTimeoutFault })
	case "backend":
		l.apply(f, func() { l.removed[rsAddr(rsNames[f.Arg])] = true })
	case "partition":
		l.partition(f, true)
	case "bird_restart":
		l.stopBird()
	case "keys":
		l.rotateKeys(f)
	case "sighup":
		l.editFile(f, "600ms")
	}
	time.Sleep(f.Hold)
	// A fault is lifted when what undoes it has run: a daemon or server
	// starts at once (its start-up is part of the convergence), a
	// config change is made when anyctl sends it (it then waits for the
	// others), but nft and ip under a saturated emulated VM take up to
	// seconds a call, and the fault is in force until they return (a
	// partition healed on one director and still cut on the other for
	// 3-7 s was taken for healed, and the tables the two held then for
	// the product's fault).
	restored := time.Now()
	switch f.Kind {
	case "kill9", "sigterm":
		l.startDaemon(f.Target)
	case "drain":
		if out, err := l.anyctl(f.Target, "undrain"); err != nil {
			l.rep.note(f, "undrain: "+strings.TrimSpace(out))
		}
	case "blackhole":
		// What the cut kept from the long flows, for the report: the
		// data path is cut too, not only BFD.
		out, _ := exec.Command("ip", "netns", "exec", l.ns[f.Target].Name, "/usr/sbin/nft", "list", "table", "inet", "soak").CombinedOutput()
		if m := regexp.MustCompile(`counter packets (\d+)`).FindSubmatch(out); m != nil {
			l.rep.note(f, fmt.Sprintf("the cut dropped %s packets of the long flows", m[1]))
		}
		l.nsExec(f, "/usr/sbin/nft", "delete table inet soak")
	case "uplink":
		l.nsExec(f, "ip", "link", "set", "eth0", "up")
		l.nsExec(f, "ip", "route", "replace", "default", "via", "10.1.0.254")
	case "rs_stop":
		l.startServer(f.Target)
	case "weight":
		l.apply(f, func() { delete(l.svcWeights, fmt.Sprintf("10.1.0.%d", 11+f.Arg)) })
	case "check":
		l.apply(f, func() { l.checkTimeout = checkTimeout })
	case "backend":
		l.apply(f, func() { delete(l.removed, rsAddr(rsNames[f.Arg])) })
	case "partition":
		l.partition(f, false)
	case "bird_restart":
		l.startBird()
	case "sighup":
		l.editFile(f, "500ms")
	}
	switch f.Kind {
	case "blackhole", "uplink", "partition":
		restored = time.Now()
	}
	l.rep.restore(f, restored)
}

// flowConns is how many connections (active and inactive) a director's
// kernel holds for the long flows' service (port 9000), and how many
// packets that service has taken in.
func (l *lab) flowConns(name string) (conns int, pkts uint64) {
	tb, err := l.kern[name].Table(contextBG)
	if err != nil {
		return -1, 0
	}
	for _, s := range tb.Services {
		if s.Port == 9000 {
			pkts = s.Stats.InPkts
			for _, d := range s.Destinations {
				conns += d.ActiveConns + d.InactiveConns
			}
		}
	}
	return conns, pkts
}

// apply changes the services with anyctl apply on a director that runs,
// chosen by the fault's own random draw.
func (l *lab) apply(f *fault, change func()) {
	l.mu.Lock()
	change()
	svc := l.services()
	l.mu.Unlock()
	file := filepath.Join(l.t.TempDir(), "services.yaml")
	os.WriteFile(file, []byte(svc), 0o644)
	order := slices.Clone(dirNames)
	rnd := rand.New(rand.NewPCG(l.seed, uint64(f.At)))
	rnd.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	for _, name := range order {
		if _, err := l.status(name); err != nil {
			continue
		}
		// A staged rollout, as an operator's apply is: anyctl follows its
		// stages to the end (rolled out, or rolled back by the cluster
		// when a stage made something worse). A change made while
		// another one's rollout runs waits for it.
		var out string
		var err error
		for deadline := time.Now().Add(2 * time.Minute); ; {
			out, err = l.anyctl(name, "apply", "-f", file, "--yes")
			if err == nil || !strings.Contains(out, "is in progress") || time.Now().After(deadline) {
				break
			}
			time.Sleep(2 * time.Second)
		}
		switch {
		case err == nil:
			if i := strings.LastIndex(out, "rolled out:"); i >= 0 {
				l.rep.note(f, fmt.Sprintf("anyctl apply on %s: %s", name, strings.TrimSpace(out[i:])))
			}
		case strings.Contains(out, "ROLLED BACK"):
			l.rep.note(f, fmt.Sprintf("anyctl apply on %s was rolled back: %s", name, strings.TrimSpace(out[strings.Index(out, "ROLLED BACK"):])))
		default:
			l.rep.note(f, fmt.Sprintf("anyctl apply on %s: %s", name, strings.TrimSpace(out)))
			if strings.Contains(out, "cannot reach anycastd") {
				continue // it went down meanwhile: the next one
			}
		}
		return
	}
	l.rep.note(f, "no director answered for anyctl apply")
}

// partition cuts (or heals) the gossip between f.Side and the other
// directors: nft in each of Side's namespaces drops TCP and UDP to and
// from the others' gossip port, and nothing else (BGP, health checks and
// traffic go on).
func (l *lab) partition(f *fault, cut bool) {
	var others []string
	for i, name := range dirNames {
		if !slices.Contains(f.Side, name) {
			others = append(others, fmt.Sprintf("10.1.0.%d", i+1))
		}
	}
	set := "{ " + strings.Join(others, ", ") + " }"
	// Every side's director at once: one after the other, under the
	// emulation, the second was cut and healed seconds after the first.
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, name := range f.Side {
		g := &fault{Kind: f.Kind, Target: name, Side: f.Side}
		if !cut {
			wg.Go(func() { l.nsExec(g, "/usr/sbin/nft", "delete table inet soakgossip") })
			continue
		}
		wg.Go(func() {
			l.nsExec(g, "/usr/sbin/nft", "add table inet soakgossip; "+
				"add chain inet soakgossip in { type filter hook input priority 0; policy accept; }; "+
				"add chain inet soakgossip out { type filter hook output priority 0; policy accept; }; "+
				"add rule inet soakgossip in ip saddr "+set+" meta l4proto { tcp, udp } th dport 7946 drop; "+
				"add rule inet soakgossip in ip saddr "+set+" meta l4proto { tcp, udp } th sport 7946 drop; "+
				"add rule inet soakgossip out ip daddr "+set+" meta l4proto { tcp, udp } th dport 7946 drop; "+
				"add rule inet soakgossip out ip daddr "+set+" meta l4proto { tcp, udp } th sport 7946 drop")
		})
	}
}

// nsExec runs a command in the fault's target namespace; a failure is a
// note (this runs beside the test's goroutine, which alone may fail it).
func (l *lab) nsExec(f *fault, args ...string) {
	start := time.Now()
	out, err := exec.Command("ip", append([]string{"netns", "exec", l.ns[f.Target].Name}, args...)...).CombinedOutput()
	if err != nil {
		l.rep.note(f, fmt.Sprintf("%v: %v %s", args, err, strings.TrimSpace(string(out))))
	}
	if took := time.Since(start); took > time.Second {
		l.rep.note(f, fmt.Sprintf("%s took %s", args[0], took.Round(time.Millisecond)))
	}
}

// routingSummary says each director's BGP session at the end (state, BFD,
// flaps) and gathers the routing lines of the logs, for the report.
func (l *lab) routingSummary() (string, string) {
	var st, logs strings.Builder
	for _, name := range dirNames {
		s, err := l.status(name)
		if err != nil {
			fmt.Fprintf(&st, "%s: %v\n", name, err)
		} else {
			for _, p := range s.Peers {
				fmt.Fprintf(&st, "%s: %s, BFD %s, %d flaps (%d by BFD), last: %s\n", name, p.State, p.BFD, p.Flaps, p.BFDFlaps, p.Reason)
			}
		}
		b, _ := os.ReadFile(filepath.Join(l.dirs[name], "anycastd.log"))
		// Churn over the whole run (a restarted daemon appends to its
		// log): what the router and the other members saw change.
		count := func(msg string) int { return strings.Count(string(b), " msg="+msg+" ") }
		fmt.Fprintf(&st, "%s churn: %d routes announced, %d withdrawn, %d role changes, %d times a member declared dead, %d reconnected\n", name,
			count(`"route announced"`), count(`"route withdrawn"`), count("role"), count(`"member dead"`), count(`"reconnected to a member thought dead"`))
		var lines []string
		for _, line := range strings.Split(string(b), "\n") {
			low := strings.ToLower(line)
			if strings.Contains(low, "bfd") || strings.Contains(low, "peer") || strings.Contains(low, "session") {
				lines = append(lines, line)
			}
		}
		if len(lines) > 8 {
			lines = lines[len(lines)-8:]
		}
		fmt.Fprintf(&logs, "%s:\n%s\n", name, strings.Join(lines, "\n"))
	}
	b, _ := os.ReadFile(l.birdLog)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	fmt.Fprintf(&logs, "BIRD:\n%s\n", strings.Join(lines, "\n"))
	return st.String(), logs.String()
}

// rotateKeys rotates the gossip key as README's Production notes say: the
// new key second on every director, then first, then the old one gone,
// each step a file edit and a SIGHUP on every director (one that is down
// starts with the file as it is then).
func (l *lab) rotateKeys(f *fault) {
	l.mu.Lock()
	cur, next := l.keys[0], l.keys[1]
	l.keys[0], l.keys[1] = next, cur
	l.mu.Unlock()
	for _, keys := range [][]string{{cur, next}, {next, cur}, {next}} {
		for _, name := range dirNames {
			l.mu.Lock()
			fs := l.files[name]
			fs.keys = keys
			l.files[name] = fs
			l.mu.Unlock()
			if err := l.writeConfig(name, fs); err != nil {
				l.rep.note(f, err.Error())
			}
			l.hup(name)
		}
		time.Sleep(time.Second)
	}
}

// editFile changes a director's health interval in its file and sends it
// SIGHUP.
func (l *lab) editFile(f *fault, interval string) {
	l.mu.Lock()
	fs := l.files[f.Target]
	fs.interval = interval
	l.files[f.Target] = fs
	l.mu.Unlock()
	if err := l.writeConfig(f.Target, fs); err != nil {
		l.rep.note(f, err.Error())
	}
	l.hup(f.Target)
}

// hup sends SIGHUP to a daemon that is up: one whose API answers. A
// process signalled in its first instants, before any program could catch
// anything, dies of the kernel's default (systemd sends no reload to a
// unit still starting); a daemon not up reads its file when it starts.
func (l *lab) hup(name string) {
	l.mu.Lock()
	d := l.daemons[name]
	l.mu.Unlock()
	if _, err := l.status(name); err != nil {
		return
	}
	select {
	case <-d.done:
	default:
		d.cmd.Process.Signal(syscall.SIGHUP)
	}
}
