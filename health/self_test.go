package health

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/labs/labtest"
)

func TestSelfAggregates(t *testing.T) {
	s := NewSelf(nil)
	ctx := context.Background()
	if st := s.Evaluate(ctx); !st.Healthy || st.Reason() != "" {
		t.Fatalf("no checks: %+v", st)
	}
	ipvsOK := true
	s.AddCheck("ipvs", func(context.Context) error {
		if !ipvsOK {
			return errors.New("netlink: IPVS family not found")
		}
		return nil
	})
	s.AddCheck("config", func(context.Context) error { return nil })
	if st := s.Evaluate(ctx); !st.Healthy {
		t.Fatalf("all passing: %+v", st)
	}
	ipvsOK = false
	before := time.Now()
	st := s.Evaluate(ctx)
	if c := st.Checks[0]; c.Name != "ipvs" || c.Since.Before(before) {
		t.Errorf("a built-in check that changed says since %v, want the evaluation's time (after %v)", c.Since, before)
	}
	if c := st.Checks[1]; !c.Since.IsZero() {
		t.Errorf("a built-in check that never changed says since %v", c.Since)
	}
	if st.Healthy {
		t.Fatal("failing checks must make the director unhealthy")
	}
	if want := "ipvs: netlink: IPVS family not found"; st.Reason() != want {
		t.Errorf("reason %q, want %q", st.Reason(), want)
	}
	ipvsOK = true
	if st := s.Evaluate(ctx); !st.Healthy {
		t.Errorf("recovered: %+v", st)
	}
}

func TestSelfCheckHonoursTimeout(t *testing.T) {
	s := NewSelf(nil)
	s.evalLimit = 50 * time.Millisecond
	s.AddCheck("stuck", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	if st := s.Evaluate(context.Background()); st.Healthy || !strings.Contains(st.Reason(), "deadline") {
		t.Errorf("stuck check: %+v", st)
	}
}

func TestSelfOperatorChecks(t *testing.T) {
	s := NewSelf(nil)
	mk := func(name string, argv ...string) configs.SelfCheck {
		return configs.SelfCheck{Name: name, Check: configs.Check{Type: "exec", Command: argv,
			Interval: 20 * time.Millisecond, Timeout: time.Second, Rise: 1, Fall: 1}}
	}
	if err := s.SetOperatorChecks([]configs.SelfCheck{mk("resolver", "true"), mk("disk", "sh", "-c", "echo disk full; exit 1")}); err != nil {
		t.Fatal(err)
	}
	// Before the checks have run, the director must not count as healthy.
	if st := s.Evaluate(context.Background()); st.Healthy || !strings.Contains(st.Reason(), "not checked yet") {
		t.Fatalf("before the first run: %+v", st)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	deadline := time.Now().Add(5 * time.Second)
	var st SelfStatus
	for time.Now().Before(deadline) {
		if st = s.Evaluate(context.Background()); !strings.Contains(st.Reason(), "not checked yet") {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st.Healthy || st.Reason() != "disk: exit status 1" {
		t.Errorf("operator checks: healthy %v reason %q", st.Healthy, st.Reason())
	}
	bad := configs.SelfCheck{Name: "x", Target: "no-port", Check: configs.Check{Type: "tcp"}}
	if err := s.SetOperatorChecks([]configs.SelfCheck{bad}); err == nil {
		t.Errorf("a self check with a bad target must be refused")
	}
}

func TestUplinkCheckLoopbackAndMissing(t *testing.T) {
	if err := UplinkCheck("lo")(context.Background()); err != nil {
		t.Errorf("lo: %v", err)
	}
	if err := UplinkCheck("nosuch0")(context.Background()); err == nil || !strings.Contains(err.Error(), "nosuch0") {
		t.Errorf("missing interface: %v", err)
	}
}

// TestLabUplinkCheck: a veth uplink in a namespace; down on our side, and
// no carrier when the far end goes down.
func TestLabUplinkCheck(t *testing.T) {
	labtest.Require(t)
	ns := labtest.NewNetns(t, "uplink")
	ns.Run("ip", "link", "add", "up0", "type", "veth", "peer", "name", "far0")
	check := func() (err error) {
		ns.Do(func() { err = UplinkCheck("up0")(context.Background()) })
		return err
	}
	if err := check(); err == nil || !strings.Contains(err.Error(), "administratively down") {
		t.Errorf("down link: %v", err)
	}
	ns.Run("ip", "link", "set", "up0", "up")
	if err := check(); err == nil || !strings.Contains(err.Error(), "no carrier") {
		t.Errorf("far end down: %v", err)
	}
	ns.Run("ip", "link", "set", "far0", "up")
	labtest.Eventually(t, 5*time.Second, "up0 to get carrier", check)
}
