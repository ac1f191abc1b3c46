package ipvs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Case 15 of the fail-safe issue: a journal save that failed left the
// change in the in-memory journal, so the next attempt made the change
// with no record on disk to undo it by.
func TestHostJournalsBeforeChanging(t *testing.T) {
	root := t.TempDir()
	sysctl := filepath.Join(root, "net", "ipv4", "vs", "sloppy_tcp")
	os.MkdirAll(filepath.Dir(sysctl), 0o755)
	os.WriteFile(sysctl, []byte("0\n"), 0o644)
	journal := filepath.Join(t.TempDir(), "host.json")
	h, err := OpenHost(journal)
	if err != nil {
		t.Fatal(err)
	}
	h.SysctlRoot = root
	if err := os.Mkdir(journal, 0o700); err != nil { // the save cannot replace it
		t.Fatal(err)
	}
	for i := range 2 {
		if _, err := h.Sysctl("net.ipv4.vs.sloppy_tcp", "1"); err == nil {
			t.Fatalf("attempt %d: a change whose journal could not be saved was made", i+1)
		}
		if b, _ := os.ReadFile(sysctl); strings.TrimSpace(string(b)) != "0" {
			t.Fatalf("attempt %d: the sysctl changed without a journal entry: %q", i+1, b)
		}
	}
	os.Remove(journal)
	if _, err := h.Sysctl("net.ipv4.vs.sloppy_tcp", "1"); err != nil {
		t.Fatal(err)
	}
	again, err := OpenHost(journal)
	if err != nil {
		t.Fatal(err)
	}
	if cs := again.Changes(); len(cs) != 1 || cs[0].Before != "0" || cs[0].After != "1" {
		t.Errorf("journal on disk: %+v", cs)
	}
}
