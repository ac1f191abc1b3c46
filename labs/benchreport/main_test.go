package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The long soak's reports go into docs/benchmarks.md as the VM printed
// them: each from its first line to the end of its block, unindented, and
// nothing of the test's own lines around them.
func TestSoakReports(t *testing.T) {
	out := `=== RUN   TestLabSoak
    lab_test.go:70: inside the VM (kernel 6.1.0-57-amd64, whole run 5m46s):
        === RUN   TestVMSoak
        === RUN   TestVMSoak/bgp
        soak report (bgp): seed 3, 1m30s planned
        invariant violations: 0
          d1 churn: 2 routes announced
        
        === RUN   TestVMSoak/ospf-table
        soak report (ospf-table): seed 3, 1m30s planned
        invariant violations: 1
        --- FAIL: TestVMSoak (336.61s)
--- FAIL: TestLabSoak (349.80s)
`
	path := filepath.Join(t.TempDir(), "soak.txt")
	os.WriteFile(path, []byte(out), 0o644)
	rs, err := soakReports(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"soak report (bgp): seed 3, 1m30s planned\ninvariant violations: 0\n  d1 churn: 2 routes announced\n\n",
		"soak report (ospf-table): seed 3, 1m30s planned\ninvariant violations: 1\n",
	}
	if strings.Join(rs, "|") != strings.Join(want, "|") {
		t.Errorf("reports %q, want %q", rs, want)
	}
}

// Only the long soak may be run again (make bench with BENCH=soak): its
// section is replaced, or put before the Go benchmarks, and nothing else
// of the file changes.
func TestReplaceSoak(t *testing.T) {
	doc := "# Benchmarks\n\n## Lab measurements\n\n- a\n\n## Go benchmarks\n\n- b\n"
	sec := soakHeading + "\n\nnew\n\n"
	got := replaceSoak(doc, sec)
	want := "# Benchmarks\n\n## Lab measurements\n\n- a\n\n" + sec + "## Go benchmarks\n\n- b\n"
	if got != want {
		t.Fatalf("inserted:\n%s\nwant:\n%s", got, want)
	}
	again := replaceSoak(got, soakHeading+"\n\nnewer\n\n")
	if again != strings.Replace(want, "new\n", "newer\n", 1) {
		t.Fatalf("replaced:\n%s", again)
	}
}
