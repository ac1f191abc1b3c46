package vmlab

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/health"
	"github.com/anycastd/anycastd/labs/labtest"
)

// listenersHelper: listeners N [http] opens N TCP listeners on 127.0.0.1
// that accept and close (with http: read the request, answer 200 with no
// body, close), prints their ports (comma-separated) and serves until
// stdin ends; each stdin line is answered with the connections accepted
// so far (the checks that reached them, whoever made them).
func listenersHelper(args []string) error {
	n, _ := strconv.Atoi(args[0])
	web := len(args) > 1 && args[1] == "http"
	var accepted atomic.Uint64
	var ports []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		ports = append(ports, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				accepted.Add(1)
				if !web {
					c.Close()
					continue
				}
				go func() {
					defer c.Close()
					c.SetDeadline(time.Now().Add(2 * time.Second))
					r := bufio.NewReader(c)
					for {
						l, err := r.ReadString('\n')
						if err != nil {
							return
						}
						if l == "\r\n" || l == "\n" {
							break
						}
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
				}()
			}
		}()
	}
	fmt.Println(strings.Join(ports, ","))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		fmt.Println(accepted.Load())
	}
	return nil
}

// monitorHelper: monitor PORTS TARGETS [http] runs anycastd's health
// monitor on TARGETS plain TCP checks (or HTTP GET / expecting 200) at 1 s, spread over the listeners' PORTS on
// 127.0.0.1 (10 per service, as the keepalived config below), until stdin
// ends: a process of its own, measured as keepalived's checker is. Each
// stdin line is answered with the number of checks done so far.
func monitorHelper(args []string) error {
	ports := strings.Split(args[0], ",")
	n, _ := strconv.Atoi(args[1])
	m := health.NewMonitor(nil, 1024)
	check := configs.Check{Type: "tcp", Interval: time.Second, Timeout: time.Second, Rise: 1, Fall: 3}
	if len(args) > 2 && args[2] == "http" {
		check.Type, check.Method, check.Path, check.Status = "http", "GET", "/", []string{"200"}
	}
	var specs []health.Spec
	for i := range n {
		p, _ := strconv.Atoi(ports[(i/10+i%10)%len(ports)])
		specs = append(specs, health.Spec{ID: fmt.Sprintf("s%d/%d", i/10, i%10),
			Target: health.Target{Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(p))},
			Check:  check})
	}
	if err := m.Set(specs); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		in := bufio.NewScanner(os.Stdin)
		for in.Scan() {
			var n uint64
			for _, s := range m.Snapshot() {
				n += s.Checks
			}
			fmt.Println(n)
		}
		cancel()
	}()
	fmt.Println("running")
	return m.Run(ctx)
}

// procCPU is a process's user+system CPU time so far (/proc/PID/stat,
// clock ticks of 10 ms) and its resident set (VmRSS).
func procCPU(t *testing.T, pid int) (time.Duration, float64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command (which may hold spaces) start after ")".
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	rss := 0.0
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.Atoi(strings.Fields(l)[1])
			rss = float64(kb) / 1024
		}
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, rss
}

// measureProc samples pid's CPU over window after warm, and its RSS at
// the end.
func measureProc(t *testing.T, pid int, warm, window time.Duration) (cores, rss float64) {
	time.Sleep(warm)
	c0, _ := procCPU(t, pid)
	start := time.Now()
	time.Sleep(window)
	c1, rss := procCPU(t, pid)
	return (c1 - c0).Seconds() / time.Since(start).Seconds(), rss
}

// TestVMMeasureHealthChecks compares anycastd's health monitor with
// keepalived's checker doing the same work in the same boot: TARGETS
// (ANYCASTD_HEALTH_TARGETS, default 2,000: what the emulated VM
// sustains) plain TCP checks at 1 s against listeners on loopback, then as
// many HTTP GET checks (keepalived's HTTP_GET) against listeners that
// answer 200, each tool in a process of its own measured from /proc the
// same way (CPU over 20 s after 5 s, RSS at the end). keepalived runs its
// checker only where IPVS is, hence the VM. Logged ("measure:"), never
// asserted.
func TestVMMeasureHealthChecks(t *testing.T) {
	labtest.RequireVM(t)
	if _, err := exec.LookPath("keepalived"); err != nil {
		t.Skip("no keepalived in the VM")
	}
	n := 2000
	if v, err := strconv.Atoi(os.Getenv("ANYCASTD_HEALTH_TARGETS")); err == nil && v > 0 {
		n = v
	}
	for _, kind := range []string{"tcp", "http"} {
		t.Run(kind, func(t *testing.T) { measureHealthChecks(t, kind, n) })
	}
}

func measureHealthChecks(t *testing.T, kind string, n int) {
	self, _ := os.Executable()
	helper := func(args ...string) (*exec.Cmd, io.WriteCloser, *bufio.Reader) {
		cmd := exec.Command(self, args[1:]...)
		cmd.Env = append(os.Environ(), labtest.HelperEnv+"="+args[0])
		in, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { in.Close(); cmd.Process.Kill(); cmd.Wait() })
		return cmd, in, bufio.NewReader(out)
	}
	_, lin, lout := helper("listeners", "100", kind)
	line, err := lout.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	ports := strings.Split(strings.TrimSpace(line), ",")
	accepted := func() uint64 {
		io.WriteString(lin, "count\n")
		l, _ := lout.ReadString('\n')
		c, _ := strconv.ParseUint(strings.TrimSpace(l), 10, 64)
		return c
	}

	mon, monIn, mout := helper("monitor", strings.Join(ports, ","), strconv.Itoa(n), kind)
	if l, err := mout.ReadString('\n'); err != nil || strings.TrimSpace(l) != "running" {
		t.Fatalf("monitor helper: %q %v", l, err)
	}
	checks := func() uint64 {
		io.WriteString(monIn, "count\n")
		l, _ := mout.ReadString('\n')
		c, _ := strconv.ParseUint(strings.TrimSpace(l), 10, 64)
		return c
	}
	time.Sleep(5 * time.Second)
	k0, start := checks(), time.Now()
	ours, oursRSS := measureProc(t, mon.Process.Pid, 0, 20*time.Second)
	rate := float64(checks()-k0) / time.Since(start).Seconds()
	monIn.Close()
	mon.Wait()
	t.Logf("measure: health-%d-%s anycastd %.3f cores %.1f MiB (%.0f checks/s)", n, kind, ours, oursRSS, rate)

	dir := t.TempDir()
	var conf strings.Builder
	for s := 0; s < n/10; s++ {
		fmt.Fprintf(&conf, "virtual_server 198.18.%d.%d 80 {\n  delay_loop 1\n  lb_algo wlc\n  lb_kind DR\n  protocol TCP\n", s/250, s%250+1)
		for r := range 10 {
			check := "TCP_CHECK {\n      connect_timeout 1\n    }"
			if kind == "http" {
				check = "HTTP_GET {\n      url {\n        path /\n        status_code 200\n      }\n      connect_timeout 1\n    }"
			}
			fmt.Fprintf(&conf, "  real_server 127.0.0.1 %s {\n    weight 1\n    %s\n  }\n", ports[(s+r)%len(ports)], check)
		}
		conf.WriteString("}\n")
	}
	path := filepath.Join(dir, "keepalived.conf")
	os.WriteFile(path, []byte(conf.String()), 0o644)
	chk := filepath.Join(dir, "chk.pid")
	ka := exec.Command("keepalived", "-n", "-C", "-f", path, "-p", filepath.Join(dir, "ka.pid"), "-c", chk, "-r", filepath.Join(dir, "vrrp.pid"))
	ka.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := ka.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { syscall.Kill(-ka.Process.Pid, syscall.SIGKILL); ka.Wait() }()
	var pid int
	labtest.Eventually(t, 30*time.Second, "keepalived's checker pid file", func() error {
		b, err := os.ReadFile(chk)
		if err != nil {
			return err
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err
	})
	time.Sleep(5 * time.Second)
	a0, start := accepted(), time.Now()
	theirs, theirRSS := measureProc(t, pid, 0, 20*time.Second)
	theirRate := float64(accepted()-a0) / time.Since(start).Seconds()
	t.Logf("measure: health-%d-%s keepalived %.3f cores %.1f MiB (%.0f checks/s)", n, kind, theirs, theirRSS, theirRate)
	t.Logf("measure: health-%d-%s ratio-to-keepalived cpu %.2f rss %.2f cpu-per-check %.2f", n, kind, ours/theirs, oursRSS/theirRSS, (ours/rate)/(theirs/theirRate))
}
