package vmlab

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anycastd/anycastd/ipvs"
)

// The test binary doubles as the small programs the packet-path tests run
// inside namespaces (the VM has no Go toolchain and no servers): with
// ANYCASTD_VM_HELPER set, TestMain runs the helper instead of the tests.
func TestMain(m *testing.M) {
	if h := os.Getenv("ANYCASTD_VM_HELPER"); h != "" {
		if err := runHelper(h, os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runHelper(name string, args []string) error {
	switch name {
	case "serve":
		// serve NAME ADDR: answer each connection with NAME, then echo.
		return serve(args[0], args[1])
	case "connect":
		// connect TARGET COUNT SRC[,SRC...]: one connection at a time,
		// round robin over the sources; print "SRC SERVER" per connection.
		n, _ := strconv.Atoi(args[1])
		return connect(args[0], n, strings.Split(args[2], ","))
	case "hold":
		// hold TARGET COUNT: open COUNT connections and keep them, print
		// "ready PORT,PORT,..." (their source ports); on each stdin line
		// check every one still echoes and print "ok N/COUNT"; exit on EOF.
		n, _ := strconv.Atoi(args[1])
		return hold(args[0], n)
	case "director":
		// director STATEFILE VIP...: a director's host settings.
		var vips []netip.Addr
		for _, v := range args[1:] {
			vips = append(vips, netip.MustParseAddr(v))
		}
		h, err := ipvs.OpenHost(args[0])
		if err != nil {
			return err
		}
		msgs, err := h.SetupDirector(ipvs.DirectorSettings{VIPs: vips})
		fmt.Println(strings.Join(msgs, "\n"))
		return err
	}
	return fmt.Errorf("unknown helper %q", name)
}

func serve(name, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Println("listening")
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			fmt.Fprintf(c, "%s\n", name)
			io.Copy(c, c)
		}()
	}
}

func dial(target, src string) (net.Conn, error) {
	d := net.Dialer{Timeout: 3 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	return d.Dial("tcp", target)
}

func connect(target string, n int, srcs []string) error {
	for i := range n {
		src := srcs[i%len(srcs)]
		c, err := dial(target, src)
		if err != nil {
			fmt.Printf("%s ERROR\n", src)
			continue
		}
		c.SetDeadline(time.Now().Add(3 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil {
			fmt.Printf("%s ERROR\n", src)
			continue
		}
		fmt.Printf("%s %s\n", src, strings.TrimSpace(line))
	}
	return nil
}

func hold(target string, n int) error {
	type held struct {
		c net.Conn
		r *bufio.Reader
	}
	var conns []held
	for range n {
		c, err := dial(target, "")
		if err != nil {
			return err
		}
		r := bufio.NewReader(c)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := r.ReadString('\n'); err != nil {
			return err
		}
		conns = append(conns, held{c, r})
	}
	var ports []string
	for _, h := range conns {
		ports = append(ports, strconv.Itoa(h.c.LocalAddr().(*net.TCPAddr).Port))
	}
	fmt.Println("ready", strings.Join(ports, ","))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var ok int
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, h := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				h.c.SetDeadline(time.Now().Add(3 * time.Second))
				if _, err := fmt.Fprintf(h.c, "ping\n"); err != nil {
					return
				}
				if l, err := h.r.ReadString('\n'); err == nil && l == "ping\n" {
					mu.Lock()
					ok++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		fmt.Printf("ok %d/%d\n", ok, len(conns))
	}
	return nil
}
