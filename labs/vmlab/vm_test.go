package vmlab

import (
	"strings"
	"testing"
	"time"
)

func TestParseConsole(t *testing.T) {
	console := strings.Join([]string{
		"[    0.000000] Linux version 6.1.0",
		"@@VMLAB BOOTED 1.57",
		"@@VMLAB BEGIN ipvs",
		"=== RUN   TestVMKernelCRUD",
		"--- PASS: TestVMKernelCRUD (0.72s)",
		"@@VMLAB END ipvs 0",
		"@@VMLAB BEGIN vmlab",
		"--- FAIL: TestVMPacketPathDR (1.00s)",
		"@@VMLAB END vmlab 1",
		"@@VMLAB BEGIN anyctl",
		"=== RUN   TestLabRealServer",
		"[   12.3] Kernel panic",
	}, "\n")
	res := parseConsole(console, []Test{{Name: "ipvs"}, {Name: "vmlab"}, {Name: "anyctl"}, {Name: "never"}})
	if res.Boot != 1570*time.Millisecond {
		t.Errorf("boot %s", res.Boot)
	}
	want := []struct {
		exit int
		out  string
	}{
		{0, "--- PASS: TestVMKernelCRUD"},
		{1, "--- FAIL: TestVMPacketPathDR"},
		{-1, "Kernel panic"},
		{-1, ""},
	}
	for i, w := range want {
		r := res.Tests[i]
		if r.Exit != w.exit || !strings.Contains(r.Output, w.out) {
			t.Errorf("%s: exit %d output %q; want exit %d with %q", r.Name, r.Exit, r.Output, w.exit, w.out)
		}
	}
}

func TestInitScriptQuotes(t *testing.T) {
	s := initScript(Spec{Tests: []Test{{Name: "x", Args: []string{"-test.run", "^TestVM'quote"}}}, Env: map[string]string{"A": "b c"}})
	for _, want := range []string{"modprobe ip_vs_mh", `'^TestVM'\''quote'`, "A='b c'", "poweroff -f"} {
		if !strings.Contains(s, want) {
			t.Errorf("init script lacks %q:\n%s", want, s)
		}
	}
}

func TestConsoleReportShowsTheFirstKernelReport(t *testing.T) {
	var lines []string
	for i := range 200 {
		switch i {
		case 50:
			lines = append(lines, "[  104.1] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [anycastd:376]")
		case 53:
			lines = append(lines, "[  104.1]  ip_vs_first_culprit+0x42/0x80 [ip_vs]")
		case 190:
			lines = append(lines, "[ 1352.7] watchdog: BUG: soft lockup - CPU#1 stuck for 1248s! [anycastd:376]")
		default:
			lines = append(lines, "noise")
		}
	}
	r := &Result{Console: strings.Join(lines, "\n")}
	got := r.ConsoleReport(10)
	for _, want := range []string{"console lines 51-60 of 200", "stuck for 22s", "ip_vs_first_culprit", "console tail:", "stuck for 1248s"} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q:\n%s", want, got)
		}
	}
	clean := (&Result{Console: "a\nb\nc"}).ConsoleReport(2)
	if strings.Contains(clean, "kernel report") || !strings.HasSuffix(clean, "b\nc") {
		t.Errorf("clean console: %q", clean)
	}
}
