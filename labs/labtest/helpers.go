package labtest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// HelperEnv names the helper a test binary runs instead of its tests.
const HelperEnv = "ANYCASTD_HELPER"

// HelperMain runs the helper named by ANYCASTD_HELPER and exits, if it is
// set; call it first in TestMain. Lab tests run their test binary as these
// small programs inside namespaces (a VM or a node has no servers and no
// Go toolchain):
//
//	serve NAME ADDR            answer each TCP connection with NAME, then echo
//	connect TARGET N SRC,...   N connections one after another, round robin
//	                           over the sources; print "SRC SERVER" each
//	hold TARGET N [SRC,...]    keep N connections; print "ready PORT,..."; on
//	                           each stdin line check they all echo ("ok K/N").
//	                           With sources (round robin) the ready line adds
//	                           the servers ("ready PORT,... SERVER,...") and
//	                           a check the servers of those that failed
//	                           ("ok K/N failed:SERVER,...")
//
// extra adds helpers of the calling package.
func HelperMain(extra map[string]func(args []string) error) {
	name := os.Getenv(HelperEnv)
	if name == "" {
		return
	}
	args := os.Args[1:]
	var err error
	switch name {
	case "serve":
		err = serve(args[0], args[1])
	case "connect":
		n, _ := strconv.Atoi(args[1])
		err = connect(args[0], n, strings.Split(args[2], ","))
	case "hold":
		n, _ := strconv.Atoi(args[1])
		var srcs []string
		if len(args) > 2 {
			srcs = strings.Split(args[2], ",")
		}
		err = hold(args[0], n, srcs)
	default:
		f, ok := extra[name]
		if !ok {
			err = fmt.Errorf("unknown helper %q", name)
		} else {
			err = f(args)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	os.Exit(0)
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

func hold(target string, n int, srcs []string) error {
	type held struct {
		c      net.Conn
		r      *bufio.Reader
		server string
	}
	var conns []held
	for i := range n {
		src := ""
		if len(srcs) > 0 {
			src = srcs[i%len(srcs)]
		}
		c, err := dial(target, src)
		if err != nil {
			return err
		}
		r := bufio.NewReader(c)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		name, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		conns = append(conns, held{c, r, strings.TrimSpace(name)})
	}
	var ports, servers []string
	for _, h := range conns {
		ports = append(ports, strconv.Itoa(h.c.LocalAddr().(*net.TCPAddr).Port))
		servers = append(servers, h.server)
	}
	if len(srcs) > 0 {
		fmt.Println("ready", strings.Join(ports, ","), strings.Join(servers, ","))
	} else {
		fmt.Println("ready", strings.Join(ports, ","))
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		alive := make([]bool, len(conns))
		var wg sync.WaitGroup
		for i, h := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				h.c.SetDeadline(time.Now().Add(3 * time.Second))
				if _, err := fmt.Fprintf(h.c, "ping\n"); err != nil {
					return
				}
				if l, err := h.r.ReadString('\n'); err == nil && l == "ping\n" {
					alive[i] = true
				}
			}()
		}
		wg.Wait()
		ok := 0
		var failed []string
		for i, a := range alive {
			if a {
				ok++
			} else {
				failed = append(failed, conns[i].server)
			}
		}
		if len(srcs) > 0 && len(failed) > 0 {
			fmt.Printf("ok %d/%d failed:%s\n", ok, len(conns), strings.Join(failed, ","))
		} else {
			fmt.Printf("ok %d/%d\n", ok, len(conns))
		}
	}
	return nil
}
