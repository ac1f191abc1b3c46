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
	// "flow_break" (reset, stall, wrong_peer).
	Kind   string `json:"k"`
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
					emit(event{Kind: "req_fail", Err: err.Error()})
					return
				}
				ok.Add(1)
			}()
		}
	}()
	// Flows: each keeps one connection and checks an echo every
	// 100-200 ms; a broken one is reported and replaced.
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
				why, detail := "", ""
				for why == "" {
					time.Sleep(time.Duration(100+rnd.IntN(100)) * time.Millisecond)
					c.SetDeadline(time.Now().Add(time.Second))
					if _, err := fmt.Fprintf(c, "ping\n"); err != nil {
						why, detail = "reset", err.Error()
						break
					}
					line, err := r.ReadString('\n')
					switch {
					case err != nil && isTimeout(err):
						why, detail = "stall", err.Error()
					case err != nil:
						why, detail = "reset", err.Error()
					case line != server+" ping\n":
						why, detail = "wrong_peer", strings.TrimSpace(line)
					}
				}
				alive.Add(-1)
				c.Close()
				emit(event{Kind: "flow_break", Why: why, Server: server, Err: detail})
			}
		}()
	}
	for range time.Tick(time.Second) {
		emit(event{Kind: "req", OK: int(ok.Swap(0)), Failed: int(failed.Swap(0)), Flows: int(alive.Load())})
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
