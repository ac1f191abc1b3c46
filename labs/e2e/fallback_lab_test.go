package e2e

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anycastd/anycastd/labs/clab"
	"github.com/anycastd/anycastd/labs/labtest"
)

// fallbackLab is labs/fallback.clab.yml with anycastd on f1..f3.
type fallbackLab struct {
	t      *testing.T
	lab    *clab.Lab
	bin    string
	dir    string
	key    string
	advert time.Duration
	d      map[int]*clab.Process
}

func vipOf(i int) string { return fmt.Sprintf("192.0.2.%d", 100+i) }

func deployFallback(t *testing.T, advert time.Duration) *fallbackLab {
	t.Helper()
	labtest.Require(t)
	for _, p := range []string{"dig"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s is not installed (labs/install-deps.sh installs it)", p)
		}
	}
	topo, err := clab.Load(filepath.Join(labtest.RepoRoot(), "labs", "fallback.clab.yml"))
	if err != nil {
		t.Fatal(err)
	}
	lab, err := clab.Deploy(topo)
	if err != nil {
		t.Fatal(err)
	}
	k := make([]byte, 32)
	rand.Read(k)
	l := &fallbackLab{t: t, lab: lab, bin: labtest.Binaries(t), dir: t.TempDir(), key: base64.StdEncoding.EncodeToString(k),
		advert: advert, d: map[int]*clab.Process{}}
	t.Cleanup(func() {
		if t.Failed() {
			for i := 1; i <= 3; i++ {
				out, _ := exec.Command(filepath.Join(l.bin, "anyctl"), "members", "--socket", filepath.Join(l.dir, fmt.Sprintf("f%d", i), "api.sock")).CombinedOutput()
				st, _ := exec.Command(filepath.Join(l.bin, "anyctl"), "announcements", "-o", "json", "--socket", filepath.Join(l.dir, fmt.Sprintf("f%d", i), "api.sock")).CombinedOutput()
				t.Logf("f%d: anyctl members:\n%s\nannouncements: %s", i, out, st)
			}
			for i, p := range l.d {
				o := p.Output()
				if len(o) > 3000 {
					o = o[len(o)-3000:]
				}
				t.Logf("f%d log (tail):\n%s", i, o)
			}
		}
		lab.Destroy()
	})
	for i := 1; i <= 3; i++ {
		l.start(i)
	}
	return l
}

func (l *fallbackLab) start(i int) {
	l.t.Helper()
	dir := filepath.Join(l.dir, fmt.Sprintf("f%d", i))
	os.MkdirAll(dir, 0o700)
	var inst []string
	for v := 1; v <= 3; v++ {
		prio := 100
		if v == i {
			prio = 200
		}
		inst = append(inst, fmt.Sprintf("      - {name: v%d, vrid: %d, vips: [%s], priority: %d, preempt: true, unhealthy_priority: 0}", v, v, vipOf(v), prio))
	}
	doc := fmt.Sprintf(`node: {name: f%[1]d, addresses: [10.2.0.%[1]d], state_dir: %[2]s/state, dataplane: memory}
cluster: {bind: 10.2.0.%[1]d, port: 7946, seeds: [10.2.0.1, 10.2.0.2], keys: [%[3]q]}
routing:
  mode: vrrp
  vrrp:
    interface: eth1
    advert_interval: %[4]s
    instances:
%[5]s
  dns:
    enabled: true
    listen: ["10.2.0.%[1]d:53"]
    zone: lb.example.com.
    ns: [f1.lb.example.com., f2.lb.example.com., f3.lb.example.com.]
    hostmaster: hostmaster.example.com.
    ttl: 5s
    names: [{name: www, vips: [%[6]s, %[7]s, %[8]s]}]
api: {socket: %[2]s/api.sock}
health: {interval: 500ms, timeout: 400ms, rise: 1, fall: 2}
services:
`, i, dir, l.key, l.advert, strings.Join(inst, "\n"), vipOf(1), vipOf(2), vipOf(3))
	for v := 1; v <= 3; v++ {
		doc += fmt.Sprintf("  - {name: web%d, vip: %s, port: 80, backends: [{address: 10.2.0.11}, {address: 10.2.0.12}], health: {type: none}}\n", v, vipOf(v))
	}
	path := filepath.Join(dir, "anycastd.yaml")
	os.WriteFile(path, []byte(doc), 0o600)
	p, err := l.lab.Start(fmt.Sprintf("f%d", i), filepath.Join(l.bin, "anycastd"), "-c", path, "--log-format", "json")
	if err != nil {
		l.t.Fatal(err)
	}
	l.d[i] = p
}

// holder is the director that holds vip now (0: none, -1: several).
func (l *fallbackLab) holder(vip string) int {
	h := 0
	for i := 1; i <= 3; i++ {
		out, _ := l.lab.Exec(fmt.Sprintf("f%d", i), "ip -4 addr show dev eth1")
		if strings.Contains(out, vip+"/32") {
			if h != 0 {
				return -1
			}
			h = i
		}
	}
	return h
}

// dns asks director i (from the client, with dig) for www's A records.
func (l *fallbackLab) dns(i int) ([]string, error) {
	out, err := l.lab.Exec("client", fmt.Sprintf("dig @10.2.0.%d +short +time=1 +tries=1 www.lb.example.com A", i))
	if err != nil {
		return nil, fmt.Errorf("dig: %v %s", err, out)
	}
	got := strings.Fields(out)
	slices.Sort(got)
	return got, nil
}

func (l *fallbackLab) expectHolders(timeout time.Duration, what string, want map[string]int) {
	l.t.Helper()
	labtest.Eventually(l.t, timeout, what, func() error {
		for vip, i := range want {
			if h := l.holder(vip); h != i {
				return fmt.Errorf("%s held by f%d, want f%d", vip, h, i)
			}
		}
		return nil
	})
}

func (l *fallbackLab) expectDNS(timeout time.Duration, what string, at int, want ...string) {
	l.t.Helper()
	slices.Sort(want)
	labtest.Eventually(l.t, timeout, what, func() error {
		got, err := l.dns(at)
		if err != nil {
			return err
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("dig @f%d: %v, want %v", at, got, want)
		}
		return nil
	})
}

// TestLabFallback: VRRP multi-master with health-aware DNS, at advert
// intervals of 1 s and 100 ms: each director holds its own VIP; one dies,
// its VIP moves to a peer within 3 x advert + skew and DNS stops giving
// it out; it comes back, takes its VIP back (preempt) and DNS gives it
// out again.
func TestLabFallback(t *testing.T) {
	for _, advert := range []time.Duration{time.Second, 100 * time.Millisecond} {
		t.Run(advert.String(), func(t *testing.T) {
			l := deployFallback(t, advert)
			home := map[string]int{vipOf(1): 1, vipOf(2): 2, vipOf(3): 3}
			l.expectHolders(30*time.Second, "each director holds its own VIP", home)
			l.expectDNS(15*time.Second, "DNS gives out all three VIPs", 1, vipOf(1), vipOf(2), vipOf(3))
			l.expectDNS(5*time.Second, "every director answers the same", 3, vipOf(1), vipOf(2), vipOf(3))

			// f2 dies: its process killed, its link down (and the VIP the
			// killed process left on it gone, as with a dead host).
			start := time.Now()
			l.d[2].Signal(syscall.SIGKILL)
			<-l.d[2].Done()
			l.lab.Exec("f2", "ip link set eth1 down; ip addr del "+vipOf(2)+"/32 dev eth1")
			// f1 and f3 back it up with equal priorities: the first whose
			// master-down timer runs out takes it (the higher address
			// wins only if both do at once).
			labtest.Eventually(t, 15*time.Second, "f2's VIP moves to a peer", func() error {
				if h := l.holder(vipOf(2)); h != 1 && h != 3 {
					return fmt.Errorf("%s held by f%d", vipOf(2), h)
				}
				return nil
			})
			l.expectHolders(time.Second, "f1 and f3 keep their own", map[string]int{vipOf(1): 1, vipOf(3): 3})
			moved := time.Since(start)
			labtest.Report(t, fmt.Sprintf("fallback: director killed -> its VIP on a peer (advert %v; 3 x advert + skew = %v)",
				advert, 3*advert+time.Duration(156)*advert/256), []time.Duration{moved})
			l.expectDNS(15*time.Second, "DNS leaves the failed director's VIP out", 1, vipOf(1), vipOf(3))
			labtest.Report(t, fmt.Sprintf("fallback: director killed -> DNS no longer gives out its VIP (advert %v)", advert), []time.Duration{time.Since(start)})

			// f2 is back: it takes its VIP back, DNS gives it out again.
			l.lab.Exec("f2", "ip link set eth1 up")
			l.start(2)
			l.expectHolders(30*time.Second, "f2 takes its VIP back (preempt)", home)
			l.expectDNS(15*time.Second, "DNS gives out f2's VIP again", 1, vipOf(1), vipOf(2), vipOf(3))

			// Health tracking: f1 drained (as its failing self check would)
			// advertises unhealthy_priority 0, gives its VIP up at once,
			// and DNS stops giving it out; undrained, it takes it back.
			sock := filepath.Join(l.dir, "f1", "api.sock")
			anyctl := func(args ...string) {
				t.Helper()
				if out, err := exec.Command(filepath.Join(l.bin, "anyctl"), append(args, "--socket", sock)...).CombinedOutput(); err != nil {
					t.Fatalf("anyctl %v: %v %s", args, err, out)
				}
			}
			start = time.Now()
			anyctl("drain", "--reason", "fallback lab")
			labtest.Eventually(t, 10*time.Second, "f1's VIP moves to a peer when f1 is drained", func() error {
				if h := l.holder(vipOf(1)); h != 2 && h != 3 {
					return fmt.Errorf("%s held by f%d", vipOf(1), h)
				}
				return nil
			})
			labtest.Report(t, fmt.Sprintf("fallback: director drained (priority 0) -> its VIP on a peer (advert %v)", advert), []time.Duration{time.Since(start)})
			l.expectDNS(15*time.Second, "DNS leaves the drained director's VIP out", 2, vipOf(2), vipOf(3))
			anyctl("undrain")
			l.expectHolders(30*time.Second, "f1 takes its VIP back after undrain", home)
			l.expectDNS(15*time.Second, "DNS gives out f1's VIP again", 3, vipOf(1), vipOf(2), vipOf(3))

			for i := 1; i <= 3; i++ {
				l.d[i].Signal(syscall.SIGTERM)
				<-l.d[i].Done()
			}
		})
	}
}
