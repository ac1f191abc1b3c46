package soak

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anycastd/anycastd/labs/labtest"
)

// The test binary doubles as the lab's small programs (labtest.HelperMain):
//
//	server NAME        a real server: HTTP on :80 answering NAME, and on
//	                   :9000 a flow echo that greets with NAME and echoes
//	                   each line prefixed with NAME
//	traffic TARGET_IP RATE FLOWS SRC,...
//	                   the client: RATE new HTTP requests a second and
//	                   FLOWS long-lived flows that exchange a line every
//	                   100-200 ms; it prints events as JSON lines
func TestMain(m *testing.M) {
	labtest.HelperMain(map[string]func([]string) error{"server": serverHelper, "traffic": trafficHelper})
	os.Exit(m.Run())
}

func serverHelper(args []string) error {
	name := args[0]
	ln, err := net.Listen("tcp", ":9000")
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "%s\n", name)
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := fmt.Fprintf(c, "%s %s", name, line); err != nil {
						return
					}
				}
			}()
		}
	}()
	fmt.Println("listening")
	if len(args) > 1 && args[1] == "no-http" {
		select {} // nginx serves HTTP on this real server
	}
	return http.ListenAndServe(":80", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, name+"\n")
	}))
}

// event is one line of the traffic helper's output.
type event struct {
	// T is when it happened (Unix nanoseconds).
	T int64 `json:"t"`
	// Kind: "req" (a summary of requests since the last), "req_fail",
	// "flow_pause" (an echo answered after more than pauseAfter: the
	// flow goes on), "flow_break" (reset, stall, wrong_peer).
	Kind string `json:"k"`
	// Start is when a failed request or a pause began (Unix
	// nanoseconds).
	Start  int64  `json:"s,omitempty"`
	OK     int    `json:"ok,omitempty"`
	Failed int    `json:"failed,omitempty"`
	Flows  int    `json:"flows,omitempty"`
	Why    string `json:"why,omitempty"`
	Server string `json:"server,omitempty"`
	Err    string `json:"err,omitempty"`
}

func trafficHelper(args []string) error {
	vip := args[0]
	rate, _ := strconv.Atoi(args[1])
	nflows, _ := strconv.Atoi(args[2])
	srcs := strings.Split(args[3], ",")
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	emit := func(e event) {
		e.T = time.Now().UnixNano()
		mu.Lock()
		enc.Encode(e)
		mu.Unlock()
	}
	dial := func(port string, i int) (net.Conn, error) {
		src := srcs[i%len(srcs)]
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		return d.Dial("tcp", net.JoinHostPort(vip, port))
	}
	var ok, failed, alive atomic.Int64
	// Requests: each on a new connection, at a steady rate.
	go func() {
		t := time.NewTicker(time.Second / time.Duration(max(rate, 1)))
		defer t.Stop()
		for i := 0; ; i++ {
			<-t.C
			go func() {
				start := time.Now()
				c, err := dial("80", i)
				if err == nil {
					c.SetDeadline(time.Now().Add(2 * time.Second))
					fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
					var resp *http.Response
					if resp, err = http.ReadResponse(bufio.NewReader(c), nil); err == nil {
						_, err = io.ReadAll(resp.Body)
						resp.Body.Close()
					}
					c.Close()
				}
				if err != nil {
					failed.Add(1)
					emit(event{Kind: "req_fail", Start: start.UnixNano(), Err: err.Error()})
					return
				}
				ok.Add(1)
			}()
		}
	}()
	// Flows: each keeps one connection and checks an echo every
	// 100-200 ms; a pause (see pauseAfter) is reported and the flow goes on,
	// a broken one is reported and replaced.
	for f := range nflows {
		go func() {
			rnd := rand.New(rand.NewPCG(uint64(f), 7))
			for i := f; ; i += nflows {
				c, err := dial("9000", i)
				if err != nil {
					time.Sleep(200 * time.Millisecond)
					continue
				}
				r := bufio.NewReader(c)
				c.SetDeadline(time.Now().Add(2 * time.Second))
				greet, err := r.ReadString('\n')
				if err != nil {
					c.Close()
					continue
				}
				server := strings.TrimSpace(greet)
				alive.Add(1)
				why, detail, since := echoFlow(c, r, server, rnd, pauseAfter, breakAfter, emit)
				alive.Add(-1)
				c.Close()
				e := event{Kind: "flow_break", Why: why, Server: server, Err: detail}
				if why == "stall" {
					// Charged to the faults around the echo that got no
					// answer, not to those of breakAfter later.
					e.Start = since.UnixNano()
				}
				emit(e)
			}
		}()
	}
	for range time.Tick(time.Second) {
		emit(event{Kind: "req", OK: int(ok.Swap(0)), Failed: int(failed.Swap(0)), Flows: int(alive.Load())})
	}
	return nil
}

// echoFlow exchanges a line with the flow's server every 100-200 ms until
// the flow breaks, and says why: "reset" (an error), "wrong_peer" (an
// answer from another server) or "stall" (no answer within breakAfter).
// An answer later than pauseAfter is a pause, emitted, and the flow goes
// on. sent is when the last echo was sent: for a stall, when the flow
// stopped.
func echoFlow(c net.Conn, r *bufio.Reader, server string, rnd *rand.Rand, pauseAfter, breakAfter time.Duration, emit func(event)) (why, detail string, sent time.Time) {
	for why == "" {
		time.Sleep(time.Duration(100+rnd.IntN(100)) * time.Millisecond)
		sent = time.Now()
		c.SetWriteDeadline(sent.Add(breakAfter))
		if _, err := fmt.Fprintf(c, "ping\n"); err != nil {
			why, detail = "reset", err.Error()
			break
		}
		c.SetReadDeadline(sent.Add(pauseAfter))
		line, err := r.ReadString('\n')
		if err != nil && isTimeout(err) {
			// A pause: TCP retransmits while the path heals; the
			// flow breaks only if no answer comes within breakAfter.
			c.SetReadDeadline(sent.Add(breakAfter))
			var rest string
			rest, err = r.ReadString('\n')
			line += rest
			if err == nil {
				emit(event{Kind: "flow_pause", Start: sent.UnixNano(), Server: server})
			}
		}
		switch {
		case err != nil && isTimeout(err):
			why, detail = "stall", err.Error()
		case err != nil:
			why, detail = "reset", err.Error()
		case line != server+" ping\n":
			why, detail = "wrong_peer", strings.TrimSpace(line)
		}
	}
	return why, detail, sent
}

// A long flow whose echo does not come within pauseAfter has paused (the
// path is healing: a director failed and the router has not yet moved the
// flow, or the router itself restarted); one whose echo does not come
// within breakAfter has stalled, and is broken. TCP's retransmissions back
// off (0.2, 0.4, 0.8, 1.6, 3.2, 6.4 s... after the loss), so a path healed
// after 7 s is used again only at about 12.6 s, one healed after 13 s at
// about 25 s: breakAfter leaves room for that (a router restarting takes
// several seconds), and is still below what client applications wait.
const (
	pauseAfter = time.Second
	breakAfter = 30 * time.Second
)

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
