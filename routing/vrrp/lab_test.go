package vrrp

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/configs/keepalived"
	"github.com/anycastd/anycastd/labs/labtest"
	"github.com/anycastd/anycastd/routing"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	labtest.HelperMain(map[string]func([]string) error{"vrrp": vrrpHelper})
	goleak.VerifyTestMain(m)
}

// vrrpHelper runs a Router from a config file (its routing.vrrp part) as
// a labtest.AnnouncerHelper (set, none, status), wanting every VIP from
// the start. At stdin's end it stops (a master sends priority 0) and
// exits.
func vrrpHelper(args []string) error {
	cfg, err := configs.Load(args[0])
	if err != nil {
		return err
	}
	r, err := New(cfg.Routing.VRRP, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		return err
	}
	var all []routing.Announcement
	for _, in := range cfg.Routing.VRRP.Instances {
		for _, v := range in.VIPs {
			all = append(all, routing.Announcement{Prefix: netip.PrefixFrom(v, v.BitLen())})
		}
	}
	return labtest.AnnouncerHelper{Announcer: r, Initial: all}.Serve()
}

const (
	labVIP  = "192.0.2.51"
	labVIP6 = "2001:db8:9::51"
)

type vrrpLab struct {
	t    *testing.T
	ns   map[string]*labtest.Netns
	self string
	dir  string
	// vip is the instance's VIP, labVIP unless a test changes it, and
	// host its host prefix.
	vip, host string
	// kaExtra goes into keepalived's vrrp_instance, acExtra into
	// anycastd's routing.vrrp.
	kaExtra, acExtra string
}

func newVRRPLab(t *testing.T) *vrrpLab {
	labtest.Require(t)
	if _, err := exec.LookPath("keepalived"); err != nil {
		t.Fatal("keepalived is not installed (labs/install-deps.sh installs it)")
	}
	self, _ := os.Executable()
	l := &vrrpLab{t: t, ns: map[string]*labtest.Netns{}, self: self, dir: t.TempDir(), vip: labVIP, host: labVIP + "/32"}
	sw := labtest.NewNetns(t, "vsw")
	sw.Run("ip", "link", "add", "br0", "type", "bridge")
	sw.Run("ip", "link", "set", "br0", "up")
	for name, addr := range map[string]string{"ka": "10.9.0.1", "ac": "10.9.0.2", "cl": "10.9.0.10"} {
		n := labtest.NewNetns(t, "v"+name)
		l.ns[name] = n
		sw.Run("ip", "link", "add", "p-"+name, "type", "veth", "peer", "name", "eth0", "netns", n.Name)
		sw.Run("ip", "link", "set", "p-"+name, "master", "br0", "up")
		n.Run("ip", "addr", "add", addr+"/24", "dev", "eth0")
		n.Run("ip", "link", "set", "eth0", "up")
	}
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(l.dir, "keepalived.log")); err == nil {
				t.Logf("keepalived log:\n%s", b)
			}
		}
	})
	// The client reaches the VIP on the segment (ARP), as a router on it
	// would.
	l.ns["cl"].Run("ip", "route", "add", labVIP+"/32", "dev", "eth0")
	return l
}

// holds reports whether node holds the VIP (on eth0 or its virtual MAC
// interface).
func (l *vrrpLab) holds(node string) bool {
	out, _ := l.ns[node].Try("ip", "addr", "show")
	return strings.Contains(out, " "+l.host+" ")
}

// keepalived starts keepalived (VRRPv3) in ka with the given priority.
func (l *vrrpLab) keepalived(prio int) *exec.Cmd {
	l.t.Helper()
	return l.keepalivedWith(fmt.Sprintf(`global_defs {
	router_id ka
	vrrp_version 3
}
vrrp_instance VI_1 {
	state BACKUP
	interface eth0
	virtual_router_id 51
	priority %d
	advert_int 1
	virtual_ipaddress {
		%s
	}
%s}
`, prio, l.host, l.kaExtra))
}

// keepalivedWith starts keepalived's VRRP process (-P: no checker, this
// kernel has no IPVS) in ka with the given keepalived.conf.
func (l *vrrpLab) keepalivedWith(text string) *exec.Cmd {
	l.t.Helper()
	conf := filepath.Join(l.dir, "keepalived.conf")
	os.WriteFile(conf, []byte(text), 0o644)
	// A keepalived killed -9 leaves its pid files, and a new one refuses
	// to start over them ("daemon is already running").
	for _, f := range []string{"ka.pid", "ka-vrrp.pid", "ka-chk.pid"} {
		os.Remove(filepath.Join(l.dir, f))
	}
	cmd := exec.Command("ip", "netns", "exec", l.ns["ka"].Name, "keepalived", "-n", "-l", "-D", "-P", "-f", conf,
		"-p", filepath.Join(l.dir, "ka.pid"), "-r", filepath.Join(l.dir, "ka-vrrp.pid"), "-c", filepath.Join(l.dir, "ka-chk.pid"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	log, _ := os.Create(filepath.Join(l.dir, "keepalived.log"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	return cmd
}

type ours struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *strings.Builder
}

// anycastd's VRRP (the Router) in ac with the given priority.
func (l *vrrpLab) ours(prio int) *ours { return l.oursVMAC(prio, false) }

func (l *vrrpLab) oursVMAC(prio int, vmac bool) *ours {
	l.t.Helper()
	conf := filepath.Join(l.dir, fmt.Sprintf("ac-%d-%v.yaml", prio, vmac))
	os.WriteFile(conf, []byte(fmt.Sprintf(`node: {name: ac}
cluster: {insecure: true}
routing:
  mode: vrrp
  vrrp:
    interface: eth0
    advert_interval: 1s
    virtual_mac: %v
%s    instances:
      - {name: vi1, vrid: 51, vips: [%s], priority: %d, preempt: true}
`, vmac, l.acExtra, l.vip, prio)), 0o644)
	return l.oursFrom(conf)
}

// oursFrom runs anycastd's VRRP in ac from a config file.
func (l *vrrpLab) oursFrom(conf string) *ours {
	l.t.Helper()
	cmd := exec.Command("ip", "netns", "exec", l.ns["ac"].Name, l.self, conf)
	cmd.Env = append(os.Environ(), labtest.HelperEnv+"=vrrp")
	stdin, _ := cmd.StdinPipe()
	o := &ours{cmd: cmd, stdin: stdin, out: &strings.Builder{}}
	cmd.Stdout, cmd.Stderr = o.out, o.out
	if err := cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return o
}

func (l *vrrpLab) expect(what, master string, timeout time.Duration) time.Duration {
	l.t.Helper()
	start := time.Now()
	other := map[string]string{"ka": "ac", "ac": "ka"}[master]
	labtest.Eventually(l.t, timeout, what, func() error {
		if !l.holds(master) || l.holds(other) {
			return fmt.Errorf("ka holds the VIP: %v, anycastd: %v", l.holds("ka"), l.holds("ac"))
		}
		return nil
	})
	return time.Since(start)
}

// preemptAndHandBack: keepalived (100) master alone, anycastd (200)
// preempting it, then stopping cleanly (priority 0) and keepalived taking
// the VIP back.
func (l *vrrpLab) preemptAndHandBack() {
	l.t.Helper()
	l.keepalived(100)
	l.expect("keepalived master alone", "ka", 10*time.Second)
	o := l.ours(200)
	l.expect("anycastd preempts keepalived", "ac", 15*time.Second)
	o.stdin.Close()
	o.cmd.Wait()
	l.expect("keepalived takes over after anycastd's priority 0", "ka", 5*time.Second)
}

// backupBelowKeepalived starts anycastd at priority 50, below keepalived's
// 100, and checks that it stays backup: it hears keepalived.
func (l *vrrpLab) backupBelowKeepalived() *ours {
	l.t.Helper()
	o := l.ours(50)
	time.Sleep(5 * time.Second)
	if l.holds("ac") || !l.holds("ka") {
		l.t.Fatalf("anycastd at 50 took the VIP from keepalived at 100:\n%s", o.out)
	}
	return o
}

// killKeepalived kills keepalived -9, its VRRP process first (killed after
// its parent it would notice and leave cleanly, with priority 0, which is
// not the failure wanted), and takes away the address a dead host would
// not answer for.
func (l *vrrpLab) killKeepalived() {
	l.t.Helper()
	if b, err := os.ReadFile(filepath.Join(l.dir, "ka-vrrp.pid")); err == nil {
		exec.Command("kill", "-9", strings.TrimSpace(string(b))).Run()
	}
	for _, p := range strings.Fields(labtest.Run(l.t, "ip", "netns", "pids", l.ns["ka"].Name)) {
		exec.Command("kill", "-9", p).Run()
	}
	l.ns["ka"].Try("ip", "addr", "del", l.host, "dev", "eth0")
}

// TestLabVRRPKeepalived: anycastd's VRRPv3 and keepalived's in one VRID on
// one segment, failing over both ways.
func TestLabVRRPKeepalived(t *testing.T) {
	l := newVRRPLab(t)

	// keepalived alone: master.
	l.keepalived(100)
	l.expect("keepalived master alone", "ka", 10*time.Second)

	// anycastd at priority 200 with preempt takes the VIP over;
	// keepalived hears the higher priority and releases it.
	o := l.ours(200)
	el := l.expect("anycastd preempts keepalived", "ac", 15*time.Second)
	t.Logf("anycastd (200) took the VIP from keepalived (100) %v after starting", el.Round(time.Millisecond))

	// kill -9: no priority 0 goes out; keepalived waits out the
	// master-down interval (3 x 1s + skew).
	start := time.Now()
	o.cmd.Process.Kill()
	o.cmd.Wait()
	// A killed process leaves the address it added behind (as keepalived
	// would): the host is dead in this scenario, so take it away.
	l.ns["ac"].Try("ip", "addr", "del", l.host, "dev", "eth0")
	l.expect("keepalived takes over from a dead anycastd", "ka", 10*time.Second)
	labtest.Report(t, "VRRP: anycastd killed -> keepalived holds the VIP (advert 1s)", []time.Duration{time.Since(start)})

	// Back, preempting again; then a graceful stop: priority 0, and
	// keepalived takes over after its skew time only.
	o = l.ours(200)
	l.expect("anycastd preempts again", "ac", 15*time.Second)
	start = time.Now()
	o.stdin.Close()
	o.cmd.Wait()
	l.expect("keepalived takes over after priority 0", "ka", 5*time.Second)
	labtest.Report(t, "VRRP: anycastd stops (priority 0) -> keepalived holds the VIP", []time.Duration{time.Since(start)})

	// The other way: anycastd below keepalived stays backup; keepalived
	// dies; anycastd takes over.
	l.backupBelowKeepalived()
	start = time.Now()
	l.killKeepalived()
	l.expect("anycastd takes over from a dead keepalived", "ac", 10*time.Second)
	labtest.Report(t, "VRRP: keepalived killed -> anycastd holds the VIP (advert 1s)", []time.Duration{time.Since(start)})
}

// TestLabVRRPKeepalivedIPv6: the same over IPv6 (VRRPv3 from link-local
// sources, the IPv6 pseudo-header checksum, unsolicited neighbour
// advertisements): keepalived master alone, anycastd preempting it, a
// clean stop handing back, anycastd below keepalived staying backup and
// taking over when keepalived dies.
func TestLabVRRPKeepalivedIPv6(t *testing.T) {
	l := newVRRPLab(t)
	l.vip, l.host = labVIP6, labVIP6+"/128"
	// Link-local addresses first (DAD), as a host on a segment has them.
	for _, n := range []string{"ka", "ac"} {
		ns := l.ns[n]
		labtest.Eventually(t, 10*time.Second, n+": link-local address ready", func() error {
			out, _ := ns.Try("ip", "-6", "addr", "show", "dev", "eth0", "scope", "link")
			if !strings.Contains(out, "fe80::") || strings.Contains(out, "tentative") {
				return fmt.Errorf("%s", out)
			}
			return nil
		})
	}

	l.preemptAndHandBack()

	l.backupBelowKeepalived()
	l.killKeepalived()
	l.expect("anycastd takes over from a dead keepalived over IPv6", "ac", 10*time.Second)
}

// TestLabVRRPKeepalivedUnicast: both sides send their advertisements to
// each other's address, with multicast VRRP dropped on both hosts (so
// only unicast can work): preempt, hand back on a clean stop, stay backup
// below keepalived.
func TestLabVRRPKeepalivedUnicast(t *testing.T) {
	l := newVRRPLab(t)
	l.kaExtra = "\tunicast_src_ip 10.9.0.1\n\tunicast_peer {\n\t\t10.9.0.2\n\t}\n"
	l.acExtra = "    unicast_peers: [10.9.0.1]\n"
	for _, n := range []string{"ka", "ac"} {
		l.ns[n].Run("nft", "add table inet nomc { chain out { type filter hook output priority 0; ip daddr 224.0.0.18 counter drop; }; }")
	}
	l.preemptAndHandBack()
	l.backupBelowKeepalived()
	// anycastd sent nothing by multicast: unicast carried it all.
	if out := l.ns["ac"].Run("nft", "list", "table", "inet", "nomc"); !strings.Contains(out, "counter packets 0 ") {
		t.Errorf("anycastd sent VRRP to 224.0.0.18 with unicast peers set:\n%s", out)
	}
}

// neighbour is the MAC the client has for the VIP after talking to it.
func (l *vrrpLab) neighbour() string {
	l.ns["cl"].Try("ip", "neigh", "flush", "dev", "eth0")
	l.ns["cl"].Try("curl", "-s", "--max-time", "1", "http://"+labVIP+":9/")
	out, _ := l.ns["cl"].Try("ip", "neigh", "show", labVIP)
	f := strings.Fields(out)
	for i, w := range f {
		if w == "lladdr" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

// TestLabVRRPVirtualMAC: with virtual_mac the master answers for the VIP
// from 00:00:5e:00:01:VRID on a macvlan interface; when keepalived takes
// over, its gratuitous ARP moves the client to keepalived's MAC; the
// interface is gone after a stop.
func TestLabVRRPVirtualMAC(t *testing.T) {
	l := newVRRPLab(t)
	l.keepalived(100)
	o := l.oursVMAC(200, true)
	l.expect("anycastd master", "ac", 15*time.Second)
	out, _ := l.ns["ac"].Try("ip", "-br", "addr", "show", "dev", "vrrp.51")
	if !strings.Contains(out, labVIP) || !strings.Contains(out, "UP") {
		t.Fatalf("the VIP is not on the virtual MAC interface: %q\n%s", out, o.out)
	}
	labtest.Eventually(t, 10*time.Second, "the client reaches the VIP at the virtual MAC", func() error {
		if mac := l.neighbour(); mac != "00:00:5e:00:01:33" {
			return fmt.Errorf("client's neighbour entry: %q", mac)
		}
		return nil
	})
	kaMAC := strings.Fields(l.ns["ka"].Run("cat", "/sys/class/net/eth0/address"))[0]
	o.stdin.Close()
	o.cmd.Wait()
	l.expect("keepalived takes over", "ka", 10*time.Second)
	labtest.Eventually(t, 10*time.Second, "the client follows to keepalived's MAC", func() error {
		if mac := l.neighbour(); mac != kaMAC {
			return fmt.Errorf("client's neighbour entry %q, keepalived's MAC %s", mac, kaMAC)
		}
		return nil
	})
	if out, err := l.ns["ac"].Try("ip", "link", "show", "vrrp.51"); err == nil {
		t.Errorf("the virtual MAC interface is left after the stop: %s", out)
	}
	if v := l.ns["ac"].Sysctl("net.ipv4.conf.eth0.arp_ignore"); v != "0" {
		t.Errorf("eth0's arp_ignore not put back after the stop: %s", v)
	}
}

// TestLabVRRPRestartDropsStaleVIP: anycastd killed -9 while master leaves
// the VIP on its interface; restarted below keepalived (now master), it
// must come up as backup without it (else both answer ARP for the VIP: a
// client saw two MACs). keepalived removes its VIPs at start the same way.
func TestLabVRRPRestartDropsStaleVIP(t *testing.T) {
	l := newVRRPLab(t)
	l.keepalived(100)
	l.expect("keepalived master alone", "ka", 10*time.Second)
	o := l.ours(200)
	l.expect("anycastd preempts keepalived", "ac", 15*time.Second)
	o.cmd.Process.Kill()
	o.cmd.Wait()
	// The VIP stays on anycastd's interface (the host is up, the daemon
	// died); keepalived hears no master and takes over.
	labtest.Eventually(t, 10*time.Second, "keepalived master again", func() error {
		if !l.holds("ka") {
			return fmt.Errorf("keepalived does not hold the VIP")
		}
		return nil
	})
	if !l.holds("ac") {
		t.Fatal("the killed daemon's VIP is gone already: the test does not test the restart")
	}
	o = l.ours(50)
	l.expect("restarted anycastd is backup without the stale VIP", "ka", 5*time.Second)
	o.stdin.Close()
	o.cmd.Wait()
	if !strings.Contains(o.out.String(), "removed a VIP left on the interface by an earlier run") {
		t.Errorf("no log line for the stale VIP removed:\n%s", o.out)
	}
}

// handbookConf is the LVS handbook's keepalived.conf for a director pair
// (with the lab's interface and VIP): one VRRPv2 instance (keepalived's
// default: no vrrp_version), PASS authentication, and a DR virtual server
// that keepalived's checker would run (the lab runs keepalived with -P:
// this kernel has no IPVS).
func handbookConf(state string, prio int) string {
	return fmt.Sprintf(`! Configuration File for keepalived
global_defs {
   router_id LVS_DEVEL
}
vrrp_instance VI_1 {
    state %s
    interface eth0
    virtual_router_id 51
    priority %d
    advert_int 1
    authentication {
        auth_type PASS
        auth_pass 1111
    }
    virtual_ipaddress {
        %s
    }
}
virtual_server %s 80 {
    delay_loop 6
    lb_algo wlc
    lb_kind DR
    persistence_timeout 50
    protocol TCP
    real_server 10.9.0.21 80 {
        weight 3
        TCP_CHECK {
            connect_timeout 3
        }
    }
    real_server 10.9.0.22 80 {
        weight 3
        TCP_CHECK {
            connect_timeout 3
        }
    }
}
`, state, prio, labVIP, labVIP)
}

// importHandbook imports the handbook's BACKUP keepalived.conf as
// `anyctl import keepalived` does and returns the anycastd config's path.
func (l *vrrpLab) importHandbook(t *testing.T) string {
	src := filepath.Join(l.dir, "backup-keepalived.conf")
	os.WriteFile(src, []byte(handbookConf("BACKUP", 90)), 0o644)
	nodes, _, err := keepalived.ParseFile(src)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := keepalived.Render(keepalived.Translate(nodes), src)
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(l.dir, "imported.yaml")
	os.WriteFile(conf, []byte("node: {name: ac}\n"+doc), 0o644)
	cfg, err := configs.Load(conf)
	if err != nil {
		t.Fatalf("the imported config does not load: %v\n%s", err, doc)
	}
	if in := cfg.Routing.VRRP.Instances[0]; in.Version != 2 || in.Authentication == nil || in.Authentication.Password != "1111" {
		t.Fatalf("the import does not carry VRRPv2 and the password:\n%s", doc)
	}
	return conf
}

// stopWithStatus asks our router for its status, stops it, and returns
// the status and its log.
func (o *ours) stopWithStatus(t *testing.T) (routing.Status, string) {
	t.Helper()
	io.WriteString(o.stdin, "status\n")
	o.stdin.Close()
	o.cmd.Wait()
	out := o.out.String()
	var st routing.Status
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, `{"Mode"`) {
			if err := json.Unmarshal([]byte(line), &st); err != nil {
				t.Fatalf("status %q: %v", line, err)
			}
		}
	}
	if st.Mode == "" {
		t.Fatalf("no status in:\n%s", out)
	}
	return st, out
}

// TestLabVRRPKeepalivedHandbookV2: the migration from keepalived one box at
// a time (issue 17, item 4). keepalived runs the handbook's MASTER config
// unchanged (VRRPv2, auth PASS); anycastd runs what `anyctl import
// keepalived` makes of the BACKUP box's config (VRRPv2, the password). They
// hear each other: anycastd stays backup, takes over when keepalived dies,
// hands back when it returns, and neither side logs a bad packet. Then the
// old import (VRRPv3) and a wrong password: anycastd counts and reports
// the dropped advertisements (the v3 case is the split brain it used to be
// silent about).
func TestLabVRRPKeepalivedHandbookV2(t *testing.T) {
	l := newVRRPLab(t)
	l.keepalivedWith(handbookConf("MASTER", 100))
	l.expect("keepalived (handbook MASTER, VRRPv2) master alone", "ka", 10*time.Second)

	o := l.oursFrom(l.importHandbook(t))
	time.Sleep(4 * time.Second) // more than the master-down interval
	if l.holds("ac") || !l.holds("ka") {
		t.Fatalf("anycastd (imported, 90) does not hear keepalived (100): ka %v, anycastd %v\n%s", l.holds("ka"), l.holds("ac"), o.out)
	}
	start := time.Now()
	l.killKeepalived()
	l.expect("anycastd takes over from a dead keepalived (VRRPv2)", "ac", 10*time.Second)
	labtest.Report(t, "VRRPv2: keepalived killed -> anycastd holds the VIP (advert 1s)", []time.Duration{time.Since(start)})

	l.keepalivedWith(handbookConf("MASTER", 100))
	l.expect("keepalived back: preempts anycastd (VRRPv2)", "ka", 15*time.Second)
	st, out := o.stopWithStatus(t)
	if len(st.Peers) != 1 || len(st.Peers[0].Rejected) != 0 {
		t.Errorf("anycastd dropped keepalived's advertisements: %+v", st.Peers)
	}
	if b, _ := os.ReadFile(filepath.Join(l.dir, "keepalived.log")); strings.Contains(string(b), "wrong version") || strings.Contains(string(b), "passwd") || strings.Contains(string(b), "invalid") {
		t.Errorf("keepalived complains about anycastd's advertisements:\n%s", b)
	}
	if strings.Contains(out, "advertisement dropped") {
		t.Errorf("anycastd logged dropped advertisements:\n%s", out)
	}

	// The old import: VRRPv3 against keepalived's v2. Neither hears the
	// other, both hold the VIP; anycastd says why, once per 10 s.
	l.expect("keepalived master", "ka", 10*time.Second)
	for _, c := range []struct {
		name, instance, reason string
	}{
		{"VRRPv3 against keepalived's default v2", "{name: vi1, vrid: 51, vips: [" + labVIP + "], priority: 90, version: 3}", "version"},
		{"VRRPv2 with another password", "{name: vi1, vrid: 51, vips: [" + labVIP + "], priority: 90, version: 2, authentication: {type: pass, password: \"2222\"}}", "auth"},
	} {
		t.Run(c.name, func(t *testing.T) {
			conf := filepath.Join(l.dir, c.reason+".yaml")
			os.WriteFile(conf, []byte("node: {name: ac}\ncluster: {insecure: true}\nrouting:\n  mode: vrrp\n  vrrp:\n    interface: eth0\n    advert_interval: 1s\n    instances:\n      - "+c.instance+"\n"), 0o644)
			o := l.oursFrom(conf)
			labtest.Eventually(t, 10*time.Second, "anycastd master beside keepalived (neither hears the other)", func() error {
				if !l.holds("ac") {
					return fmt.Errorf("anycastd does not hold the VIP")
				}
				return nil
			})
			time.Sleep(2 * time.Second)
			st, out := o.stopWithStatus(t)
			if len(st.Peers) != 1 || st.Peers[0].Rejected[c.reason] < 2 || !strings.HasPrefix(st.Peers[0].LastRejected, c.reason+": 10.9.0.1") {
				t.Errorf("status %+v, want %q counted", st.Peers, c.reason)
			}
			if n := strings.Count(out, "advertisement dropped: misconfigured peer"); n != 1 || !strings.Contains(out, "level=WARN") {
				t.Errorf("%d warnings (want 1: rate-limited):\n%s", n, out)
			}
			l.expect("keepalived alone again", "ka", 10*time.Second)
		})
	}
}
