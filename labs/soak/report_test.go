package soak

import (
	"bufio"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"
)

// A failed request is placed in the detection window it overlaps; one
// outside every window is what the soak's goal counts ("elsewhere").
func TestFailureWindow(t *testing.T) {
	t0 := time.Now()
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	r := newReport(modeBGP, 1, time.Minute)
	r.faults = []*fault{
		{Kind: "blackhole", Target: "d1", start: at(10), restored: at(20)},
		{Kind: "rs_stop", Target: "rs1", start: at(30), restored: at(40)},
		{Kind: "bird_restart", Target: "router", start: at(50), restored: at(53)},
		{Kind: "drain", Target: "d2", start: at(60), restored: at(70)},
		{Kind: "bird_restart", Target: "router", start: at(80)}, // not restored yet
	}
	for _, c := range []struct {
		from, to float64
		want     string
	}{
		{9, 10.5, "director"},
		{13.5, 14, "director"}, // within boundRoute (4 s) of the blackhole
		{14.5, 15, "elsewhere"},
		{20, 21, "elsewhere"}, // its restore is no detection window
		{29, 31, "real server"},
		{34, 34.4, "real server"}, // within rsDetect (4.5 s) of the stop
		{34.6, 35, "elsewhere"},
		{52, 53, "router"},
		{56.5, 57, "router"}, // sessions come back within boundRoute of the restart
		{57.5, 58, "elsewhere"},
		{61, 62, "elsewhere"}, // a drain may fail no request
		{85, 86, "router"},
	} {
		if got := r.failureWindow(at(c.from), at(c.to)); got != c.want {
			t.Errorf("request %.1f-%.1f s: %q, want %q", c.from, c.to, got, c.want)
		}
	}
}

// Pauses and breaks are charged to the faults around their start; a flow
// whose own real server is stopped is counted apart.
func TestTrafficAccounting(t *testing.T) {
	t0 := time.Now()
	at := func(s float64) int64 { return t0.Add(time.Duration(s * float64(time.Second))).UnixNano() }
	r := newReport(modeBGP, 1, time.Minute)
	r.faults = []*fault{
		{Kind: "blackhole", Target: "d1", start: t0.Add(10 * time.Second), restored: t0.Add(20 * time.Second)},
		{Kind: "rs_stop", Target: "rs1", start: t0.Add(30 * time.Second)},
	}
	for _, e := range []event{
		{Kind: "flow_pause", Start: at(10.5), T: at(12), Server: "rs2"},
		{Kind: "flow_break", T: at(11), Why: "reset", Server: "rs3"},
		{Kind: "req_fail", Start: at(10.2), T: at(12.2)},
		{Kind: "flow_break", T: at(31), Why: "reset", Server: "rs1"},
		// A stall seen 30 s after its echo went unanswered during the
		// blackhole is the blackhole's.
		{Kind: "flow_break", Start: at(12), T: at(42), Why: "stall", Server: "rs4"},
	} {
		r.traffic(e)
	}
	r.faults[1].restored = t0.Add(40 * time.Second)
	for _, e := range []event{
		{Kind: "flow_pause", Start: at(100), T: at(101.5), Server: "rs2"},
		{Kind: "req_fail", Start: at(200), T: at(202)},
	} {
		r.traffic(e)
	}
	bh := r.kinds["blackhole"]
	if bh == nil || len(bh.pauses) != 1 || bh.pauses[0] != 1500*time.Millisecond || bh.breaks["reset"] != 1 || bh.breaks["stall"] != 1 || bh.reqFailed != 1 {
		t.Fatalf("blackhole's stats: %+v", bh)
	}
	if r.pauses != 2 || r.unattrPs != 1 || r.ownDown != 1 || r.breaks["reset"] != 1 || r.breaks["stall"] != 1 || r.unattrBrk != 0 {
		t.Errorf("pauses %d (outside %d), own server down %d, breaks %v", r.pauses, r.unattrPs, r.ownDown, r.breaks)
	}
	if r.reqWhere["director"] != 1 || r.reqWhere["elsewhere"] != 1 {
		t.Errorf("failed requests by window: %v", r.reqWhere)
	}
}

// The long flows' client on loopback against a server that answers late
// once (a pause: the flow goes on), then as scripted by the case.
func TestEchoFlow(t *testing.T) {
	for _, c := range []struct {
		name  string
		serve func(n int, line string) (answer string, delay time.Duration, closeIt bool)
		want  string
	}{
		{"stall", func(n int, line string) (string, time.Duration, bool) {
			if n == 3 {
				return "", time.Hour, false
			}
			return "rs1 " + line, 0, false
		}, "stall"},
		{"wrong peer", func(n int, line string) (string, time.Duration, bool) {
			if n == 3 {
				return "rs2 " + line, 0, false
			}
			return "rs1 " + line, 0, false
		}, "wrong_peer"},
		{"reset", func(n int, line string) (string, time.Duration, bool) {
			return "rs1 " + line, 0, n == 3
		}, "reset"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				s, err := ln.Accept()
				if err != nil {
					return
				}
				defer s.Close()
				r := bufio.NewReader(s)
				for n := 0; ; n++ {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					answer, delay, closeIt := c.serve(n, line)
					if n == 1 {
						delay = 300 * time.Millisecond // the pause
					}
					if closeIt {
						s.(*net.TCPConn).SetLinger(0)
						return
					}
					time.Sleep(min(delay, 2*time.Second))
					// Half a line first: the client must join the parts
					// read before and after its pause deadline.
					io.WriteString(s, answer[:len(answer)/2])
					io.WriteString(s, answer[len(answer)/2:])
				}
			}()
			conn, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			var pauses []event
			why, detail, sent := echoFlow(conn, bufio.NewReader(conn), "rs1", rand.New(rand.NewPCG(1, 2)), 100*time.Millisecond, time.Second,
				func(e event) { pauses = append(pauses, e) })
			if why != c.want {
				t.Errorf("broke by %q (%s), want %q", why, detail, c.want)
			}
			// A stall is dated by the echo that got no answer: the
			// break is seen breakAfter (here 1 s) later.
			if ago := time.Since(sent); why == "stall" && ago < time.Second {
				t.Errorf("stalled echo sent %s before the break was seen, want at least 1s", ago)
			}
			if len(pauses) != 1 || pauses[0].Kind != "flow_pause" || pauses[0].Server != "rs1" {
				t.Errorf("pauses %+v, want the one of the second echo", pauses)
			}
		})
	}
}

// A flow to a backend removed by config may end once the removal's drain
// time has passed (the operator asked for that); one that ends earlier is
// broken. The report lists breaks one line per cause.
func TestRemovedBackendAndGrouping(t *testing.T) {
	t0 := time.Now()
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	r := newReport(modeBGP, 1, time.Minute)
	r.start = t0
	r.faults = []*fault{{Kind: "backend", Arg: 3, start: at(50), restored: at(55)}}
	for _, e := range []event{
		{Kind: "flow_break", T: at(52).UnixNano(), Why: "reset", Server: "rs4", Err: "early"},
		{Kind: "flow_break", T: at(53).UnixNano(), Why: "reset", Server: "rs4", Err: "early"},
		{Kind: "flow_break", T: at(56).UnixNano(), Why: "reset", Server: "rs4"},
		{Kind: "flow_break", T: at(59).UnixNano(), Why: "reset", Server: "rs4"}, // the re-adding still on its way
		{Kind: "flow_break", T: at(56).UnixNano(), Why: "reset", Server: "rs2", Err: "other"},
		{Kind: "flow_break", T: at(61).UnixNano(), Why: "reset", Server: "rs4", Err: "late"},
	} {
		r.traffic(e)
	}
	if r.removedEnd != 2 || r.breaks["reset"] != 4 {
		t.Fatalf("removed %d, breaks %v; want 2 ended by the removal, 4 broken", r.removedEnd, r.breaks)
	}
	lines := groupBreaks(r.start, r.breakList, "of flows", 10)
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "at 52s-53s: 2 reset of flows to rs4 (early)") || !strings.HasPrefix(lines[1], "at 56s: 1 reset of flows to rs2 (other)") ||
		!strings.HasPrefix(lines[2], "at 1m1s: 1 reset of flows to rs4 (late)") {
		t.Errorf("grouped:\n%s", strings.Join(lines, "\n"))
	}
}

// A violation is dated by the snapshot that showed it: gathering its
// evidence takes seconds, and a fault that began meanwhile is not one of
// those around it.
func TestViolationDatedBySnapshot(t *testing.T) {
	t0 := time.Now().Add(-time.Minute)
	r := newReport(modeBGP, 1, time.Minute)
	r.start = t0
	r.faults = []*fault{
		{Kind: "drain", Target: "d1", start: t0.Add(5 * time.Second)},
		{Kind: "uplink", Target: "d2", start: t0.Add(12 * time.Second)}, // after the snapshot
	}
	r.violation("4", "tables differ", &snapshot{at: t0.Add(10 * time.Second)})
	v := r.violations[0]
	if v.at != 10*time.Second {
		t.Errorf("violation at %s, want 10s (the snapshot's)", v.at)
	}
	if len(v.faults) != 1 || !strings.HasPrefix(v.faults[0], "drain d1") {
		t.Errorf("faults around %v, want the drain alone", v.faults)
	}
}
