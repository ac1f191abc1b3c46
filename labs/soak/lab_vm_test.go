package soak

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anycastd/anycastd/api"
	"github.com/anycastd/anycastd/ipvs"
	"github.com/anycastd/anycastd/labs/labtest"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// The soak lab, inside the VM (Debian's kernel with IPVS):
//
//	client cl 10.0.0.1-40 -- router r (BIRD: BGP+BFD, ECMP) --+-- br0 10.1.0.0/24
//	                              10.0.0.254 / 10.1.0.254      +-- d1..d5 10.1.0.1-5: anycastd, kernel IPVS, BGP
//	                                                           +-- rs1..rs4 10.1.0.11-14: DR real servers
//
// Five directors with max_active 4 (d5, priority 200, is the warm
// standby), one VIP with two services (HTTP on :80, long flows on :9000),
// mh with mh-port, sloppy_tcp. Traffic runs all the time while a seeded
// schedule of faults plays, and the invariants are checked every 200 ms.

const (
	vip       = "198.51.100.10"
	nDir      = 5
	nRS       = 4
	maxActive = 4
)

var dirNames = []string{"d1", "d2", "d3", "d4", "d5"}

// The routing setups the soak runs (SOAK_ROUTING, comma-separated): the
// embedded BGP speaker, or kernel mode with BIRD OSPF on every director
// (the VIP as a route in table 100, or as an address on lo).
const (
	modeBGP       = "bgp"
	modeOSPFTable = "ospf-table"
	modeOSPFIface = "ospf-iface"
)

var routingModes = []string{modeBGP, modeOSPFTable, modeOSPFIface}
var rsNames = []string{"rs1", "rs2", "rs3", "rs4"}

// Bounds the invariants allow a transition (the VM runs under software
// emulation: generous, and stated in the report).
const (
	boundRouteBGP = 4 * time.Second // router next hops = announcers, BGP with BFD
	// boundRouteOSPF: an OSPF director originates a new LSA at most every
	// 5 s (MinLSInterval), the router waits 3 s (dead) for a lost
	// neighbour, and BIRD's SPF and kernel sync follow.
	boundRouteOSPF = 12 * time.Second
	boundAnnounce  = 2 * time.Second  // announcing without being allowed to
	boundTable     = 4 * time.Second  // IPVS tables equal
	boundBehind    = 15 * time.Second // config behind
	boundAnswer    = 8 * time.Second  // a live daemon's API answers
	// boundHeal is how long after a gossip partition heals the sides
	// may still act as two (memberlist finds the members it declared
	// dead again by the reconnect loop, every second, then push/pull).
	boundHeal = 10 * time.Second
)

type daemon struct {
	name, dir string
	cmd       *exec.Cmd
	done      chan struct{}
	exitErr   error
	expected  bool // its exit is the schedule's doing
	client    *http.Client
}

type lab struct {
	t        *testing.T
	mode     string // routingModes
	seed     uint64
	kinds    []string // the fault kinds the schedule draws from
	duration time.Duration
	self     string
	bin      string
	ns       map[string]*labtest.Netns
	dirs     map[string]string
	kern     map[string]*ipvs.Kernel
	keys     []string // the gossip key in use, then the next
	router   *netlink.Handle
	// dirNL are the directors' namespaces, for what their kernel holds
	// (kernel mode: the VIP's route in table 100 or address on lo).
	dirNL map[string]*netlink.Handle

	// busy holds a director from a fault's start to its restore: the
	// schedule's holds are nominal, and a SIGTERM's graceful exit adds
	// its own seconds, so a later fault on the same director waits
	// (rather than, say, a kill -9 landing on a daemon already stopped
	// and both restores starting one: two daemons on one state dir).
	busy sync.Map // director name -> *sync.Mutex

	mu      sync.Mutex
	daemons map[string]*daemon
	servers map[string]*exec.Cmd
	// nginx: the real servers' HTTP is Debian's nginx (when the VM has
	// it), the flows' echo on :9000 the lab's own server.
	nginx        bool
	nginxes      map[string]*exec.Cmd
	bird         *exec.Cmd
	rep          *report
	svcWeights   map[string]int  // backend address -> weight in the applied config
	removed      map[string]bool // backend addresses taken out of the config
	checkTimeout string
	birdLog      string
	birdCtl      string
	// initialServices is the services part of every config file.
	initialServices string
	files           map[string]fileState
}

func newLab(t *testing.T, mode string, seed uint64, duration time.Duration, kinds []string) *lab {
	labtest.RequireVM(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{t: t, mode: mode, seed: seed, kinds: kinds, dirNL: map[string]*netlink.Handle{}, duration: duration, self: self, bin: labtest.Binaries(t),
		ns: map[string]*labtest.Netns{}, dirs: map[string]string{}, kern: map[string]*ipvs.Kernel{},
		daemons: map[string]*daemon{}, servers: map[string]*exec.Cmd{}, nginxes: map[string]*exec.Cmd{}, rep: newReport(mode, seed, duration),
		svcWeights: map[string]int{}, removed: map[string]bool{}, checkTimeout: checkTimeout, files: map[string]fileState{}}
	for _, k := range []string{"soak-key-1", "soak-key-2"} { // the lab's own, public
		l.keys = append(l.keys, base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("%-32s", k))))
	}
	l.rep.httpServer = "the lab's own server (no nginx in the VM)"
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		l.nginx = true
		l.rep.httpServer = "Debian's nginx"
		if out, err := exec.Command("/usr/sbin/nginx", "-v").CombinedOutput(); err == nil {
			l.rep.httpServer = "Debian's " + strings.TrimPrefix(strings.TrimSpace(string(out)), "nginx version: ")
		}
	}
	l.topology()
	// Before any daemon starts: a daemon's unplanned exit is a violation,
	// whose evidence reads the counters.
	l.rep.kstats = l.openKstats()
	return l
}

func (l *lab) topology() {
	t := l.t
	sw := labtest.NewNetns(t, "ssw")
	l.ns["sw"] = sw
	sw.Run("ip", "link", "add", "br0", "type", "bridge")
	sw.Run("ip", "link", "set", "br0", "up")
	cl, r := labtest.NewNetns(t, "scl"), labtest.NewNetns(t, "sr")
	l.ns["cl"], l.ns["r"] = cl, r
	labtest.Run(t, "ip", "link", "add", "c0", "netns", cl.Name, "type", "veth", "peer", "name", "c1", "netns", r.Name)
	for i := 1; i <= 40; i++ {
		cl.Run("ip", "addr", "add", fmt.Sprintf("10.0.0.%d/24", i), "dev", "c0")
	}
	cl.Run("ip", "link", "set", "c0", "up")
	cl.Run("ip", "route", "add", "default", "via", "10.0.0.254")
	r.Run("ip", "addr", "add", "10.0.0.254/24", "dev", "c1")
	r.Run("ip", "link", "set", "c1", "up")
	r.Run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1")
	lan := func(name, addr string, n *labtest.Netns) {
		sw.Run("ip", "link", "add", "p-"+name, "type", "veth", "peer", "name", "eth0", "netns", n.Name)
		sw.Run("ip", "link", "set", "p-"+name, "master", "br0", "up")
		n.Run("ip", "addr", "add", addr+"/24", "dev", "eth0")
		n.Run("ip", "link", "set", "eth0", "up")
	}
	lan("r", "10.1.0.254", r)
	for i, name := range dirNames {
		n := labtest.NewNetns(t, "s"+name)
		l.ns[name] = n
		lan(name, fmt.Sprintf("10.1.0.%d", i+1), n)
		n.Run("ip", "route", "add", "default", "via", "10.1.0.254")
		l.dirs[name] = t.TempDir()
		k, err := ipvs.OpenKernel("/run/netns/" + n.Name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { k.Close() })
		l.kern[name] = k
		l.dirNL[name] = nsHandle(t, n)
	}
	anyctl := filepath.Join(l.bin, "anyctl")
	for i, name := range rsNames {
		n := labtest.NewNetns(t, "s"+name)
		l.ns[name] = n
		lan(name, fmt.Sprintf("10.1.0.%d", 11+i), n)
		n.Run("ip", "route", "add", "default", "via", "10.1.0.254")
		n.Run(anyctl, "realserver", "--state-dir", t.TempDir(), "up", "--vip", vip)
		l.startServer(name)
	}
	l.router = nsHandle(t, r)
	l.startBird()
	if l.mode != modeBGP {
		for _, name := range dirNames {
			l.startDirectorBird(name)
		}
	}
	l.initialServices = l.services()
	for _, name := range dirNames {
		l.files[name] = fileState{keys: l.keys[:1], interval: "500ms"}
		if err := l.writeConfig(name, l.files[name]); err != nil {
			t.Fatal(err)
		}
		l.startDaemon(name)
	}
}

// nsHandle is a netlink handle in n, closed with the test.
func nsHandle(t *testing.T, n *labtest.Netns) *netlink.Handle {
	h, err := netns.GetFromName(n.Name)
	if err != nil {
		t.Fatal(err)
	}
	nl, err := netlink.NewHandleAt(h, syscall.NETLINK_ROUTE)
	h.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nl.Close)
	return nl
}

// helperCmd runs this test binary as a helper inside a namespace.
func (l *lab) helperCmd(ns string, helper string, args ...string) *exec.Cmd {
	cmd := exec.Command("ip", append([]string{"netns", "exec", l.ns[ns].Name, l.self}, args...)...)
	cmd.Env = append(os.Environ(), labtest.HelperEnv+"="+helper)
	return cmd
}

func (l *lab) startServer(name string) {
	args := []string{name}
	if l.nginx {
		args = append(args, "no-http")
	}
	cmd := l.helperCmd(name, "server", args...)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	r := bufio.NewReader(out)
	if line, err := r.ReadString('\n'); err != nil || line != "listening\n" {
		l.t.Fatalf("%s's server: %q %v", name, line, err)
	}
	go io.Copy(io.Discard, r)
	var ngx *exec.Cmd
	if l.nginx {
		ngx = l.startNginx(name)
	}
	l.mu.Lock()
	l.servers[name] = cmd
	l.nginxes[name] = ngx
	l.mu.Unlock()
	l.t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		stopNginx(ngx)
	})
}

// nginxConf is a real server's nginx: it answers with the server's name,
// on its address and on the VIP (on lo: anyctl realserver up), a new
// connection per request as the traffic's requests are.
const nginxConf = `daemon off;
master_process on;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	keepalive_timeout 0;
	server {
		listen 80;
		location / { return 200 "%[2]s\n"; }
	}
}
`

// startNginx runs Debian's nginx on a real server (HTTP on :80) and waits
// until it answers there.
func (l *lab) startNginx(name string) *exec.Cmd {
	dir := l.t.TempDir()
	conf := filepath.Join(dir, "nginx.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(nginxConf, dir, name)), 0o644)
	lf, _ := os.Create(filepath.Join(dir, "nginx.log"))
	cmd := exec.Command("ip", "netns", "exec", l.ns[name].Name, "/usr/sbin/nginx", "-e", "stderr", "-p", dir, "-c", conf)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("nginx on %s: %v", name, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := exec.Command("ip", "netns", "exec", l.ns[name].Name, filepath.Join(l.bin, "anyctl"), "probe",
			"--type", "http", "--target", "127.0.0.1:80", "--timeout", "1s").CombinedOutput()
		if err == nil {
			return cmd
		}
		if time.Now().After(deadline) {
			stopNginx(cmd)
			b, _ := os.ReadFile(filepath.Join(dir, "nginx.log"))
			l.t.Fatalf("nginx on %s does not answer: %s\n%s", name, out, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// stopNginx stops an nginx as a fast shutdown does (SIGTERM: the master
// takes its workers down; a SIGKILL would leave them serving).
func stopNginx(cmd *exec.Cmd) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

func (l *lab) stopServer(name string) {
	l.mu.Lock()
	cmd, ngx := l.servers[name], l.nginxes[name]
	delete(l.servers, name)
	delete(l.nginxes, name)
	l.mu.Unlock()
	if cmd != nil {
		// ip netns exec runs the helper itself (exec): kill reaches it.
		cmd.Process.Kill()
		cmd.Wait()
	}
	stopNginx(ngx)
}

// routerOSPF is the router's BIRD in the OSPF setups: the DR of the
// directors' segment (the directors never are: priority 0), ECMP over
// equal externals from several directors.
const routerOSPF = `router id 10.1.0.254;
log "%s" all;
protocol device { scan time 1; }
protocol kernel { ipv4 { export all; import none; }; merge paths on limit 8; }
protocol ospf v2 {
	ecmp yes limit 8;
	merge external yes;
	tick 1;
	ipv4 { import all; export none; };
	area 0 { interface "eth0" { type broadcast; priority 255; hello 1; dead 3; }; };
}
`

// directorOSPF is a director's BIRD in the OSPF setups (as README's
// kernel-mode section gives it), with what it learns the VIPs from: table
// 100 (table mode) or lo's addresses (interface mode).
const directorOSPF = `router id 10.1.0.%d;
log "%s" all;
protocol device { scan time 1; }
%s
protocol ospf v2 {
	tick 1;
	ipv4 { import none; export where %s; };
	area 0 { interface "eth0" { type broadcast; priority 0; hello 1; dead 3; }; };
}
`

const (
	learnTable = `protocol kernel vips { kernel table 100; learn; scan time 2; ipv4 { import all; export none; }; }`
	learnIface = `protocol direct vips { ipv4; interface "lo"; }`
)

const birdConf = `router id 10.1.0.254;
log "%s" all;
protocol device { scan time 1; }
protocol kernel { ipv4 { export all; import none; }; merge paths on limit 8; }
protocol bfd { interface "*" { min rx interval 200 ms; min tx interval 200 ms; multiplier 5; }; }
filter directors_in { if (65535, 0) ~ bgp_community then bgp_local_pref = 0; accept; }
template bgp dir {
	local 10.1.0.254 as 65000;
	hold time 3; keepalive time 1; connect retry time 1; error wait time 1, 5;
	ipv4 { import filter directors_in; export none; };
	bfd on;
}
`

func (l *lab) startBird() {
	dir := l.t.TempDir()
	l.birdLog = filepath.Join(dir, "bird.log")
	conf := fmt.Sprintf(routerOSPF, l.birdLog)
	if l.mode == modeBGP {
		conf = fmt.Sprintf(birdConf, l.birdLog)
		for i := range dirNames {
			conf += fmt.Sprintf("protocol bgp %s from dir { neighbor 10.1.0.%d as 65001; }\n", dirNames[i], i+1)
		}
	}
	path := filepath.Join(dir, "bird.conf")
	os.WriteFile(path, []byte(conf), 0o644)
	l.mu.Lock()
	l.birdCtl = filepath.Join(dir, "bird.ctl")
	l.mu.Unlock()
	cmd := exec.Command("ip", "netns", "exec", l.ns["r"].Name, "/usr/sbin/bird", "-f", "-c", path,
		"-s", filepath.Join(dir, "bird.ctl"), "-P", filepath.Join(dir, "bird.pid"))
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("BIRD: %v", err)
	}
	l.mu.Lock()
	l.bird = cmd
	l.mu.Unlock()
	l.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}

// startDirectorBird runs BIRD with OSPF in a director's namespace, for the
// whole run (anycastd's faults leave it alone, as a separate daemon on a
// real director is).
func (l *lab) startDirectorBird(name string) {
	dir := l.t.TempDir()
	i := slices.Index(dirNames, name) + 1
	learn, export := learnTable, "source = RTS_INHERIT && net.len = 32"
	if l.mode == modeOSPFIface {
		learn, export = learnIface, "source = RTS_DEVICE && net.len = 32 && net !~ 127.0.0.0/8"
	}
	conf := fmt.Sprintf(directorOSPF, i, filepath.Join(dir, "bird.log"), learn, export)
	path := filepath.Join(dir, "bird.conf")
	os.WriteFile(path, []byte(conf), 0o644)
	cmd := exec.Command("ip", "netns", "exec", l.ns[name].Name, "/usr/sbin/bird", "-f", "-c", path,
		"-s", filepath.Join(dir, "bird.ctl"), "-P", filepath.Join(dir, "bird.pid"))
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("BIRD on %s: %v", name, err)
	}
	l.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}

// boundRoute is invariant 1's bound in this setup.
func (l *lab) boundRoute() time.Duration {
	if l.mode == modeBGP {
		return boundRouteBGP
	}
	return boundRouteOSPF
}

// routingConfig is the routing part of a director's config.
func (l *lab) routingConfig(i int) string {
	switch l.mode {
	case modeOSPFTable:
		return "routing: {mode: kernel, kernel: {table: 100}}\n"
	case modeOSPFIface:
		return "routing: {mode: kernel, kernel: {interface: lo}}\n"
	}
	return fmt.Sprintf(`routing:
  mode: bgp
  bgp:
    asn: 65001
    router_id: 10.1.0.%d
    graceful_shutdown: 2s
    neighbors:
      - {address: 10.1.0.254, asn: 65000, hold_time: 3s, keepalive: 1s, connect_retry: 1s, bfd: {enabled: true, min_tx: 200ms, min_rx: 200ms, multiplier: 5}}
`, i)
}

// heldInKernel: the director's kernel holds the VIP's announcement for
// its routing daemon (kernel mode): the route in table 100, or the address
// on lo.
func (l *lab) heldInKernel(name string) bool {
	h := l.dirNL[name]
	want := net.ParseIP(vip).To4()
	switch l.mode {
	case modeOSPFTable:
		rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: 100}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return false
		}
		for _, r := range rs {
			if r.Dst != nil && r.Dst.IP.Equal(want) {
				return true
			}
		}
	case modeOSPFIface:
		lo, err := h.LinkByName("lo")
		if err != nil {
			return false
		}
		as, err := h.AddrList(lo, netlink.FAMILY_V4)
		if err != nil {
			return false
		}
		for _, a := range as {
			if a.IP.Equal(want) {
				return true
			}
		}
	}
	return false
}

// ospfFull are the directors the router has a full OSPF adjacency with
// (what a BGP session established is in the BGP setup).
func (l *lab) ospfFull() map[string]bool {
	l.mu.Lock()
	ctl := l.birdCtl
	l.mu.Unlock()
	out, err := exec.Command("ip", "netns", "exec", l.ns["r"].Name, "/usr/sbin/birdc", "-s", ctl, "show", "ospf", "neighbors").Output()
	full := map[string]bool{}
	if err != nil {
		return full
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasPrefix(f[2], "Full") {
			continue
		}
		if a, err := netip.ParseAddr(f[len(f)-1]); err == nil {
			if b := a.As4(); b[3] >= 1 && int(b[3]) <= nDir {
				full[dirNames[b[3]-1]] = true
			}
		}
	}
	return full
}

func (l *lab) stopBird() {
	l.mu.Lock()
	cmd := l.bird
	l.bird = nil
	l.mu.Unlock()
	if cmd != nil {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}
}

// services is the services part of every director's config.
func (l *lab) services() string {
	var web, flows []string
	for i := range rsNames {
		a := fmt.Sprintf("10.1.0.%d", 11+i)
		if l.removed[a] {
			continue
		}
		w := l.svcWeights[a]
		if w == 0 {
			w = 1
		}
		web = append(web, fmt.Sprintf("{address: %s, weight: %d}", a, w))
		flows = append(flows, fmt.Sprintf("{address: %s, port: 9000, weight: %d}", a, w))
	}
	return fmt.Sprintf(`services:
  - name: web
    vip: %[1]s
    port: 80
    flags: [mh-port]
    quorum: 1
    drain_timeout: %[5]s
    backends: [%[2]s]
    health: {type: http, path: /, interval: %[6]s, timeout: %[4]s, rise: 1, fall: 2}
  - name: flows
    vip: %[1]s
    port: 9000
    flags: [mh-port]
    quorum: 1
    drain_timeout: %[5]s
    backends: [%[3]s]
    health: {type: tcp, interval: %[6]s, timeout: %[4]s, rise: 1, fall: 2}
`, vip, strings.Join(web, ", "), strings.Join(flows, ", "), l.checkTimeout, drainTimeout, checkInterval)
}

// The services' checks. Every director checks every real server on its
// own; under software emulation with the whole tier on two vCPUs, the
// VM's CPU is saturated (its pressure stall figure near 100 %) and a
// packet can wait hundreds of milliseconds for the softirq work that
// carries it. With a 400 ms timeout, checks then timed out on time, on
// one director or on all at once, while the real servers were fine: the
// directors' tables differed for that reason (the report's kernel
// counters show it: retransmissions in every namespace, few drops). One
// second is still below what operators configure (keepalived's default
// connect timeout is 5 s) and keeps the detection windows short.
const (
	checkInterval = "1s"
	checkTimeout  = "1s"
	// checkTimeoutFault is what the "check" fault sets the timeout to.
	checkTimeoutFault = "800ms"
)

// drainTimeout is the services' drain_timeout: how long a removed
// backend's connections go on.
const drainTimeout = 5 * time.Second

// fileState is what a director's config file says that faults change:
// the gossip keys (a rotation) and the health defaults' interval (an edit
// with SIGHUP). The services part stays as the files first had it: the
// cluster's services change by anyctl apply, and a file edit would propose
// its own.
type fileState struct {
	keys     []string
	interval string
}

func (l *lab) writeConfig(name string, fs fileState) error {
	i := slices.Index(dirNames, name) + 1
	prio := 100
	if name == "d5" {
		prio = 200
	}
	dir := l.dirs[name]
	keys, _ := json.Marshal(fs.keys)
	doc := fmt.Sprintf(`node: {name: %[1]s, addresses: [10.1.0.%[2]d], state_dir: %[3]s/state, conn_sync: {enabled: true, interface: eth0, sync_id: 1}}
cluster: {bind: 10.1.0.%[2]d, port: 7946, seeds: [10.1.0.1, 10.1.0.2], keys: %[4]s, max_active: %[5]d, priority: %[6]d}
%[8]sapi: {socket: %[3]s/api.sock}
health: {interval: %[7]s, timeout: 400ms, rise: 1, fall: 2, self: {uplink: eth0}}
`, name, i, dir, keys, maxActive, prio, fs.interval, l.routingConfig(i)) + l.initialServices
	return os.WriteFile(filepath.Join(dir, "anycastd.yaml"), []byte(doc), 0o600)
}

func (l *lab) startDaemon(name string) {
	dir := l.dirs[name]
	lf, err := os.OpenFile(filepath.Join(dir, "anycastd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		l.t.Fatal(err)
	}
	args := []string{"netns", "exec", l.ns[name].Name, filepath.Join(l.bin, "anycastd"), "-c", filepath.Join(dir, "anycastd.yaml"), "--watch", "0"}
	if debugLogs() {
		args = append(args, "--log-level", "debug")
	}
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	sock := filepath.Join(dir, "api.sock")
	d := &daemon{name: name, dir: dir, cmd: cmd, done: make(chan struct{}),
		client: &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var dl net.Dialer
				return dl.DialContext(ctx, "unix", sock)
			}}}}
	go func() {
		err := cmd.Wait()
		lf.Close()
		l.mu.Lock()
		d.exitErr = err
		expected := d.expected
		l.mu.Unlock()
		close(d.done)
		if !expected {
			l.rep.violation("6", fmt.Sprintf("%s exited unexpectedly: %v; log tail:\n%s", name, err, tailFile(filepath.Join(dir, "anycastd.log"), 15)))
		}
	}()
	l.mu.Lock()
	l.daemons[name] = d
	l.mu.Unlock()
	l.t.Cleanup(func() {
		l.mu.Lock()
		d.expected = true
		l.mu.Unlock()
		cmd.Process.Kill()
		<-d.done
	})
}

// signal sends sig to a daemon whose exit the schedule expects, and waits
// for it to exit (up to timeout).
func (l *lab) signal(name string, sig syscall.Signal, timeout time.Duration) {
	l.mu.Lock()
	d := l.daemons[name]
	d.expected = true
	l.mu.Unlock()
	d.cmd.Process.Signal(sig)
	select {
	case <-d.done:
	case <-time.After(timeout):
		l.rep.violation("6", fmt.Sprintf("%s did not exit within %s of %s", name, timeout, sig))
		d.cmd.Process.Kill()
		<-d.done
	}
}

func (l *lab) status(name string) (*api.StatusResponse, error) {
	l.mu.Lock()
	d := l.daemons[name]
	l.mu.Unlock()
	select {
	case <-d.done:
		return nil, errors.New("not running")
	default:
	}
	resp, err := d.client.Get("http://anycastd/v1/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st api.StatusResponse
	return &st, json.NewDecoder(resp.Body).Decode(&st)
}

func (l *lab) anyctl(name string, args ...string) (string, error) {
	out, err := exec.Command(filepath.Join(l.bin, "anyctl"), append(args, "--socket", filepath.Join(l.dirs[name], "api.sock"))...).CombinedOutput()
	return string(out), err
}

// nextHops are the router's next hops for the VIP (directors' names).
func (l *lab) nextHops() []string {
	rs, err := l.router.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: &net.IPNet{IP: net.ParseIP(vip).To4(), Mask: net.CIDRMask(32, 32)}}, netlink.RT_FILTER_DST)
	if err != nil {
		return nil
	}
	var out []string
	add := func(gw net.IP) {
		if a, ok := netip.AddrFromSlice(gw); ok {
			b := a.Unmap().As4()
			if b[3] >= 1 && int(b[3]) <= nDir {
				out = append(out, dirNames[b[3]-1])
			}
		}
	}
	for _, r := range rs {
		if r.Gw != nil {
			add(r.Gw)
		}
		for _, nh := range r.MultiPath {
			add(nh.Gw)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func tailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitUp waits until every director runs and the router has maxActive
// next hops.
func (l *lab) waitUp(what string, timeout time.Duration) {
	l.t.Helper()
	labtest.Eventually(l.t, timeout, what, func() error {
		if h := l.nextHops(); len(h) != maxActive {
			return fmt.Errorf("router next hops %v", h)
		}
		for _, name := range dirNames {
			st, err := l.status(name)
			if err != nil {
				return fmt.Errorf("%s: %v", name, err)
			}
			if !st.Eligible {
				return fmt.Errorf("%s: %s", name, st.Reason)
			}
		}
		return nil
	})
}

// debugLogs is SOAK_LOGS=debug: the daemons log at debug level, and
// printLogs keeps memberlist's lines.
func debugLogs() bool { return os.Getenv("SOAK_LOGS") == "debug" }

// printLogs prints every director's whole log but memberlist's own lines
// (with SOAK_LOGS=debug, all of it): what SOAK_LOGS asks for, to follow a
// break or a violation through the daemons.
func (l *lab) printLogs() {
	for _, name := range dirNames {
		b, err := os.ReadFile(filepath.Join(l.dirs[name], "anycastd.log"))
		if err != nil {
			fmt.Printf("== %s log: %v\n", name, err)
			continue
		}
		fmt.Printf("== %s log\n", name)
		for _, line := range strings.Split(string(b), "\n") {
			if line != "" && (debugLogs() || !strings.Contains(line, "component=memberlist")) {
				fmt.Println(line)
			}
		}
	}
}

func parseSeed(s string) uint64 {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 1
	}
	return n
}

func durationEnv(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil && d > 0 {
		return d
	}
	return def
}

// TestVMSoak runs the soak inside the VM: SOAK_SEED and SOAK_DURATION
// (default 1 and 3m) choose the schedule, SOAK_KINDS its fault kinds
// (default all), SOAK_ROUTING the routing setups (comma-separated,
// default all three), one after the other; it prints a report for each
// (with SOAK_LOGS set, the daemons' logs after it) and fails on any
// invariant violation.
func TestVMSoak(t *testing.T) {
	seed := parseSeed(os.Getenv("SOAK_SEED"))
	kinds, err := parseKinds(os.Getenv("SOAK_KINDS"))
	if err != nil {
		t.Fatal(err)
	}
	modes := routingModes
	if m := os.Getenv("SOAK_ROUTING"); m != "" {
		modes = strings.Split(m, ",")
	}
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			if !slices.Contains(routingModes, mode) {
				t.Fatalf("SOAK_ROUTING: %q is none of %v", mode, routingModes)
			}
			l := newLab(t, mode, seed, durationEnv("SOAK_DURATION", 3*time.Minute), kinds)
			l.waitUp(fmt.Sprintf("the tier up: every director healthy, the router with %d next hops", maxActive), 3*time.Minute)
			rep := l.run()
			fmt.Println(rep.String())
			if os.Getenv("SOAK_LOGS") != "" {
				l.printLogs()
			}
			if n := len(rep.violations); n > 0 {
				t.Fatalf("%d invariant violations (%s, seed %d)", n, mode, seed)
			}
		})
	}
}
