package health

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anycastd/anycastd/configs"
	"go.uber.org/goleak"
)

// With ANYCASTD_BENCH_SERVER=N the test binary is the loopback server of
// BenchmarkMonitor10k: N TCP listeners on 127.0.0.1, ports printed.
func TestMain(m *testing.M) {
	if n := os.Getenv("ANYCASTD_BENCH_SERVER"); n != "" {
		count, _ := strconv.Atoi(n)
		var ports []string
		for range count {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			ports = append(ports, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
		}
		fmt.Println(strings.Join(ports, ","))
		select {}
	}
	// Every goroutine a test starts (monitors, the connector, probes) is
	// gone when the tests end.
	goleak.VerifyTestMain(m)
}

// BenchmarkMonitor10k watches 10,000 TCP targets on loopback at a 1 s
// interval; each iteration is one second of monitoring. It reports the
// monitor process's CPU use (cores), its RSS and the probe rate. The
// server runs in another process so that only the monitor is measured.
// Goal: at most 1 core and 64 MiB.
func BenchmarkMonitor10k(b *testing.B) {
	const targets, listeners = 10000, 100
	self, _ := os.Executable()
	srv := exec.Command(self)
	srv.Env = append(os.Environ(), fmt.Sprintf("ANYCASTD_BENCH_SERVER=%d", listeners))
	out, _ := srv.StdoutPipe()
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		b.Fatal(err)
	}
	ports := strings.Split(strings.TrimSpace(line), ",")

	m := NewMonitor(nil, 1024)
	var specs []Spec
	for i := range targets {
		p, _ := strconv.Atoi(ports[i%len(ports)])
		specs = append(specs, Spec{ID: fmt.Sprintf("t%d", i), Target: Target{Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(p))},
			Check: configs.Check{Type: "tcp", Interval: time.Second, Timeout: 500 * time.Millisecond, Rise: 2, Fall: 3}})
	}
	if err := m.Set(specs); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Run(ctx)
	time.Sleep(2 * time.Second) // every target has run once; steady state

	checks := func() (n uint64, up int) {
		for _, s := range m.Snapshot() {
			n += s.Checks
			if s.State == Up {
				up++
			}
		}
		return
	}
	c0, _ := checks()
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	start := time.Now()
	b.ResetTimer()
	for b.Loop() {
		time.Sleep(time.Second)
	}
	b.StopTimer()
	wall := time.Since(start)
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano()-ru0.Utime.Nano()+ru1.Stime.Nano()-ru0.Stime.Nano()) * time.Nanosecond
	c1, up := checks()
	if up != targets {
		b.Errorf("%d of %d targets up", up, targets)
	}
	b.ReportMetric(cpu.Seconds()/wall.Seconds(), "cores")
	b.ReportMetric(float64(c1-c0)/wall.Seconds(), "probes/s")
	b.ReportMetric(rssMiB(), "RSS-MiB")
}

func rssMiB() float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for l := range strings.SplitSeq(string(data), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// BenchmarkHTTPCheck is one http check (GET /, 200 expected) against a
// loopback server: its CPU and garbage per check.
func BenchmarkHTTPCheck(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					l, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if l == "\r\n" {
						break
					}
				}
				c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
			}()
		}
	}()
	p, err := New(configs.Check{Type: configs.CheckHTTP, Path: "/", Interval: time.Second, Timeout: time.Second, Rise: 1, Fall: 1},
		Target{Addr: netip.MustParseAddrPort(ln.Addr().String())})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if r := p.Check(ctx); !r.OK {
			b.Fatal(r.Err)
		}
		cancel()
	}
}
