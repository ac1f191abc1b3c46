package soak

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/anycastd/anycastd/labs/labtest"
)

// kstats samples the kernel's own counters of lost and late packets in
// every namespace of the lab (and the VM's, for softnet and CPU
// pressure), so that a violation's evidence says whether the network
// dropped or delayed packets in the seconds before: a health check that
// times out on time, on every director at once, is the network's (or the
// emulated CPU's softirq work), not the checker's.
type kstats struct {
	mu      sync.Mutex
	files   map[string]*os.File // "ns file" -> the open proc file, read again each sample
	samples []ksample
	// cpu is where the VM's CPU went.
	cpu cpuAcct
}

type ksample struct {
	at   time.Time
	vals map[string]uint64
}

// cpuSample is the VM's CPU time by kind (/proc/stat) and each process's
// (utime+stime, its threads' included, /proc/PID/stat), in clock ticks.
type cpuSample struct {
	at    time.Time
	kinds map[string]uint64
	procs map[string]procTicks // by PID
}

type procTicks struct {
	label string
	ticks uint64
}

// cpuAcct follows where the VM's CPU goes over the run: the kinds from the
// first sample to the last, and each process's ticks between consecutive
// samples (a process first seen is charged all its ticks: it started
// since the sample before), summed by label. A process that started and
// ended between two samples (a fault's command) is not seen: the gap
// between the busy total and the processes' sum.
type cpuAcct struct {
	first, last *cpuSample
	byLabel     map[string]uint64
}

func (c *cpuAcct) add(s *cpuSample) {
	if c.first == nil {
		c.first, c.last, c.byLabel = s, s, map[string]uint64{}
		return
	}
	for pid, p := range s.procs {
		if q, ok := c.last.procs[pid]; ok && q.label == p.label && q.ticks <= p.ticks {
			c.byLabel[p.label] += p.ticks - q.ticks
		} else if !ok {
			c.byLabel[p.label] += p.ticks
		}
	}
	c.last = s
}

// tcpCounters are the snmp/netstat counters kept, per namespace.
var tcpCounters = map[string][]string{
	"Tcp:":    {"RetransSegs", "OutRsts", "AttemptFails"},
	"TcpExt:": {"ListenOverflows", "ListenDrops", "TCPTimeouts", "TCPBacklogDrop"},
}

// openKstats opens the files it samples: /proc/thread-self/net/* from a
// thread in each namespace (a proc net file stays bound to the namespace
// it was opened in) and the VM's softnet_stat and CPU pressure.
func (l *lab) openKstats() *kstats {
	k := &kstats{files: map[string]*os.File{}}
	names := make([]string, 0, len(l.ns))
	for name := range l.ns {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		l.ns[name].Do(func() {
			for _, f := range []string{"snmp", "netstat", "dev"} {
				if fh, err := os.Open("/proc/thread-self/net/" + f); err == nil {
					k.files[name+" "+f] = fh
				}
			}
		})
	}
	for key, path := range map[string]string{"vm softnet": "/proc/net/softnet_stat", "vm psi": "/proc/pressure/cpu"} {
		if fh, err := os.Open(path); err == nil {
			k.files[key] = fh
		}
	}
	l.t.Cleanup(func() {
		for _, f := range k.files {
			f.Close()
		}
	})
	return k
}

// run samples every 500 ms until stop is closed.
func (k *kstats) run(stop <-chan struct{}) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	buf := make([]byte, 64<<10)
	for {
		s := ksample{at: time.Now(), vals: map[string]uint64{}}
		for key, f := range k.files {
			n, _ := f.ReadAt(buf, 0)
			ns, kind, _ := strings.Cut(key, " ")
			parseProc(ns, kind, buf[:n], s.vals)
		}
		var cs *cpuSample
		if len(k.samples)%10 == 0 {
			cs = sampleCPU()
		}
		k.mu.Lock()
		k.samples = append(k.samples, s)
		if cs != nil {
			k.cpu.add(cs)
		}
		k.mu.Unlock()
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// parseProc adds one proc file's counters to vals, keyed "ns counter".
func parseProc(ns, kind string, b []byte, vals map[string]uint64) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	switch kind {
	case "snmp", "netstat":
		// Pairs of lines: a header of names, then the values.
		var head []string
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 0 {
				continue
			}
			want, ok := tcpCounters[f[0]]
			if !ok {
				head = nil
				continue
			}
			if head == nil || head[0] != f[0] {
				head = f
				continue
			}
			for i := 1; i < len(f) && i < len(head); i++ {
				if slices.Contains(want, head[i]) {
					v, _ := strconv.ParseUint(f[i], 10, 64)
					vals[ns+" "+head[i]] = v
				}
			}
			head = nil
		}
	case "dev":
		for sc.Scan() {
			name, rest, ok := strings.Cut(sc.Text(), ":")
			if !ok {
				continue
			}
			name = strings.TrimSpace(name)
			f := strings.Fields(rest)
			if name == "lo" || len(f) < 12 {
				continue
			}
			rx, _ := strconv.ParseUint(f[3], 10, 64)
			tx, _ := strconv.ParseUint(f[11], 10, 64)
			vals[ns+" "+name+".rx_drop"] = rx
			vals[ns+" "+name+".tx_drop"] = tx
		}
	case "softnet":
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) < 3 {
				continue
			}
			d, _ := strconv.ParseUint(f[1], 16, 64)
			q, _ := strconv.ParseUint(f[2], 16, 64)
			vals["vm softnet.dropped"] += d
			vals["vm softnet.squeezed"] += q
		}
	case "psi":
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, "some ") {
				continue
			}
			if _, t, ok := strings.Cut(line, "total="); ok {
				v, _ := strconv.ParseUint(strings.TrimSpace(t), 10, 64)
				vals["vm cpu_pressure_ms"] = v / 1000
			}
		}
	}
}

// delta says which counters moved between from and to (the samples
// nearest inside), as "ns counter +n", sorted; "" when none did.
func (k *kstats) delta(from, to time.Time) string {
	if k == nil {
		return ""
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var a, b *ksample
	for i := range k.samples {
		s := &k.samples[i]
		if a == nil && !s.at.Before(from) {
			a = s
		}
		if !s.at.After(to) {
			b = s
		}
	}
	if a == nil || b == nil || a == b {
		return ""
	}
	var out []string
	for key, v := range b.vals {
		if d := v - a.vals[key]; v > a.vals[key] {
			out = append(out, fmt.Sprintf("%s +%d", key, d))
		}
	}
	slices.Sort(out)
	return fmt.Sprintf("%s over %s", strings.Join(out, ", "), b.at.Sub(a.at).Round(100*time.Millisecond))
}

// series is the per-second rise of the counters named, between from and
// to, one line per second that moved: for a violation's evidence.
func (k *kstats) series(from, to time.Time, start time.Time) string {
	if k == nil {
		return ""
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var b strings.Builder
	var prev *ksample
	for i := range k.samples {
		s := &k.samples[i]
		if s.at.Before(from) || s.at.After(to) {
			continue
		}
		if prev != nil {
			var moved []string
			for key, v := range s.vals {
				if v > prev.vals[key] && key != "vm cpu_pressure_ms" {
					moved = append(moved, fmt.Sprintf("%s +%d", key, v-prev.vals[key]))
				}
			}
			slices.Sort(moved)
			psi := s.vals["vm cpu_pressure_ms"] - prev.vals["vm cpu_pressure_ms"]
			fmt.Fprintf(&b, "%s: cpu pressure %d ms of %s; %s\n", since(start, s.at), psi, s.at.Sub(prev.at).Round(10*time.Millisecond), strings.Join(moved, ", "))
		}
		prev = s
	}
	return b.String()
}

// sampleCPU reads /proc/stat's cpu line and every process's utime+stime
// (its threads' included), summed by process name. A process that ended
// between two samples is missed: the faults' short-lived commands show
// as the gap between the kinds' total and the named processes.
func sampleCPU() *cpuSample {
	cs := &cpuSample{at: time.Now(), kinds: map[string]uint64{}, procs: map[string]procTicks{}}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line)
		for i, name := range []string{"user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"} {
			if i+1 < len(f) {
				cs.kinds[name], _ = strconv.ParseUint(f[i+1], 10, 64)
			}
		}
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ... utime stime: fields 14 and 15, counted
		// after the comm's closing parenthesis (a comm may hold spaces).
		open, closing := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if open < 0 || closing < open {
			continue
		}
		f := strings.Fields(string(b[closing+1:]))
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseUint(f[11], 10, 64)
		st, _ := strconv.ParseUint(f[12], 10, 64)
		cs.procs[e.Name()] = procTicks{procLabel(e.Name(), string(b[open+1:closing])), ut + st}
	}
	return cs
}

// procLabel names a process for the CPU summary: its comm, and for the
// lab's own helpers (this test binary run again as the client's traffic
// or a real server's echo server) which helper it is.
func procLabel(pid, comm string) string {
	if pid == strconv.Itoa(os.Getpid()) {
		return comm + " (the lab: checker, faults)"
	}
	env, err := os.ReadFile("/proc/" + pid + "/environ")
	if err != nil {
		return comm
	}
	for _, kv := range bytes.Split(env, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte(labtest.HelperEnv+"=")); ok {
			return comm + " (" + string(v) + ")"
		}
	}
	return comm
}

// cpuSummary says where the VM's CPU went between the first and the last
// sample: by kind, then the processes that took at least 1 %.
func (k *kstats) cpuSummary() string {
	if k == nil {
		return ""
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	a, b := k.cpu.first, k.cpu.last
	if a == nil || a == b {
		return ""
	}
	var total uint64
	for name, v := range b.kinds {
		total += v - a.kinds[name]
	}
	if total == 0 {
		return ""
	}
	pct := func(v uint64) string { return fmt.Sprintf("%.1f %%", 100*float64(v)/float64(total)) }
	var out []string
	for _, name := range []string{"user", "system", "softirq", "irq", "idle", "iowait", "steal"} {
		out = append(out, name+" "+pct(b.kinds[name]-a.kinds[name]))
	}
	type proc struct {
		name string
		v    uint64
	}
	var procs []proc
	var named, small uint64
	for name, d := range k.cpu.byLabel {
		named += d
		if 100*d >= total {
			procs = append(procs, proc{name, d})
		} else {
			small += d
		}
	}
	slices.SortFunc(procs, func(x, y proc) int { return int(y.v) - int(x.v) })
	var ps []string
	for _, p := range procs {
		ps = append(ps, p.name+" "+pct(p.v))
	}
	busy := total - (b.kinds["idle"] - a.kinds["idle"]) - (b.kinds["iowait"] - a.kinds["iowait"])
	ps = append(ps, "others under 1 % each "+pct(small))
	if busy > named {
		ps = append(ps, "short-lived processes and softirq work outside any process "+pct(busy-named))
	}
	return fmt.Sprintf("%s over %s; by process (of all CPU time, threads included): %s",
		strings.Join(out, ", "), b.at.Sub(a.at).Round(time.Second), strings.Join(ps, ", "))
}
