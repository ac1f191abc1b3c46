package configs

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/anycastd/anycastd/internal/golden"
)

// TestBadConfigCorpus loads every file of testdata/bad and compares the
// problems reported with the lines of its .err file, in order: each bad
// input gets a clear error with its path, and nothing is accepted. The
// corpus holds the cases the fail-safe issue found (a port written as a
// word, a boolean as "maybe", numbers past their field's range, a 1 ns
// interval, a VIP with a zone, a dotted key, name and Name, a second
// document, mode dns alone, nesting 1,600 deep, one address in two
// spellings) and more. go test ./configs -run Corpus -update rewrites the
// .err files.
func TestBadConfigCorpus(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*.yaml")
	if err != nil || len(files) < 20 {
		t.Fatalf("corpus: %d files, %v", len(files), err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".yaml"), func(t *testing.T) {
			c, err := Load(f)
			if err == nil || c != nil {
				t.Fatalf("accepted")
			}
			var got []string
			for _, fe := range FieldErrors(err) {
				got = append(got, fe.Error())
			}
			golden.CheckFile(t, strings.TrimSuffix(f, ".yaml")+".err", []byte(strings.Join(got, "\n")+"\n"))
		})
	}
}
