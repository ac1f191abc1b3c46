// Package golden is for tests only: it compares what a test renders with
// a file under the package's testdata, as MetalLB does for the FRR config
// it writes. `go test -run Golden -update ./pkg` rewrites the files with
// what the tests render now; review the diff before committing it.
package golden

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/pmezard/go-difflib/difflib"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata with what the tests render")

// Check compares got with testdata/NAME.golden, or writes it there with
// -update.
func Check(t testing.TB, name string, got []byte) {
	t.Helper()
	CheckFile(t, filepath.Join("testdata", name+".golden"), got)
}

// CheckFile compares got with the file at path, or writes it there with
// -update.
func CheckFile(t testing.TB, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run the test with -update to create it)", err)
	}
	if bytes.Equal(got, want) {
		return
	}
	diff, _ := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{A: difflib.SplitLines(string(want)), B: difflib.SplitLines(string(got)),
		FromFile: path, ToFile: "rendered now", Context: 2})
	t.Errorf("%s differs from what the test renders (if the change is meant, run the test with -update and review the diff):\n%s", path, diff)
}
