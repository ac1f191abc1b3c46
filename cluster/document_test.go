package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/configs"
)

// services returns a valid services config with n backends, through the
// real loader so that defaults are filled as a director fills them.
func services(t testing.TB, n int) []configs.Service {
	t.Helper()
	doc := "node: {name: t, state_dir: /tmp/x}\ncluster: {insecure: true}\nrouting: {mode: kernel, kernel: {table: 100}}\nservices:\n  - name: web\n    vip: 198.51.100.10\n    port: 80\n    backends:\n"
	for i := range n {
		doc += "      - {address: " + netip.AddrFrom4([4]byte{10, 0, 2, byte(10 + i)}).String() + "}\n"
	}
	cfg, err := configs.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Services
}

var (
	key1 = bytes.Repeat([]byte{1}, 32)
	key2 = bytes.Repeat([]byte{2}, 16)
)

func TestDocumentAuthentication(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	d, err := NewDocument(services(t, 2), 7, "lb1", now, key1)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Verify([][]byte{key1}); err != nil {
		t.Errorf("own key: %v", err)
	}
	if err := d.Verify([][]byte{key2, key1}); err != nil {
		t.Errorf("during rotation (new key first, old still installed): %v", err)
	}
	for _, tc := range []struct {
		name string
		keys [][]byte
		mut  func(d *Document)
	}{
		{"wrong key", [][]byte{key2}, nil},
		{"insecure director gets a signed document", nil, nil},
		{"version raised", [][]byte{key1}, func(d *Document) { d.Version++ }},
		{"author changed", [][]byte{key1}, func(d *Document) { d.Author = "evil" }},
		{"time changed", [][]byte{key1}, func(d *Document) { d.Time = d.Time.Add(time.Second) }},
		{"services changed and rehashed", [][]byte{key1}, func(d *Document) {
			nd, _ := NewDocument(services(t, 3), d.Version, d.Author, d.Time, nil)
			d.Services, d.Hash = nd.Services, nd.Hash
		}},
		{"tag removed", [][]byte{key1}, func(d *Document) { d.Tag = nil }},
	} {
		x := *d
		if tc.mut != nil {
			tc.mut(&x)
		}
		if err := x.Verify(tc.keys); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("%s: Verify = %v, want ErrUnauthenticated", tc.name, err)
		}
	}
	// An insecure cluster signs nothing and accepts unsigned documents.
	u, _ := NewDocument(services(t, 1), 1, "lb1", now, nil)
	if len(u.Tag) != 0 || u.Verify(nil) != nil {
		t.Errorf("unsigned document: tag %x, verify %v", u.Tag, u.Verify(nil))
	}
}

func TestDocumentDecode(t *testing.T) {
	d, _ := NewDocument(services(t, 2), 1, "lb1", time.Now(), nil)
	ss, err := d.Decode()
	if err != nil || len(ss) != 1 || len(ss[0].Backends) != 2 {
		t.Fatalf("Decode = %v, %v", ss, err)
	}
	// Survives the wire: encode, decode, same hash and content.
	var back Document
	if err := json.Unmarshal(encodeDoc(d)[1:], &back); err != nil {
		t.Fatal(err)
	}
	if _, err := back.Decode(); err != nil {
		t.Errorf("after a round trip: %v", err)
	}

	bad := *d
	bad.Services = json.RawMessage(strings.Replace(string(d.Services), "198.51.100.10", "198.51.100.11", 1))
	if _, err := bad.Decode(); !errors.Is(err, ErrCorrupt) {
		t.Errorf("changed services, old hash: %v", err)
	}
	invalid := services(t, 1)
	invalid[0].Scheduler = "fastest"
	inv, _ := NewDocument(invalid, 2, "lb1", time.Now(), nil)
	if _, err := inv.Decode(); err == nil || !strings.Contains(err.Error(), "services[0].scheduler") {
		t.Errorf("invalid services: %v", err)
	}
	unknown := *d
	unknown.Services = json.RawMessage(`[{"name":"x","surprise":1}]`)
	if _, err := unknown.Decode(); err == nil {
		t.Error("unknown field accepted")
	}
}

func TestDocumentNewer(t *testing.T) {
	doc := func(v uint64, h string) *Document { return &Document{Version: v, Hash: h} }
	for _, tc := range []struct {
		name     string
		new, old *Document
		want     bool
	}{
		{"anything beats none", doc(1, "a"), nil, true},
		{"zero beats nothing", doc(0, ""), nil, false},
		{"higher version", doc(3, "a"), doc(2, "f"), true},
		{"lower version", doc(2, "f"), doc(3, "a"), false},
		{"tie: higher hash wins", doc(3, "b"), doc(3, "a"), true},
		{"tie: lower hash loses", doc(3, "a"), doc(3, "b"), false},
		{"same document", doc(3, "a"), doc(3, "a"), false},
	} {
		if got := tc.new.Newer(tc.old); got != tc.want {
			t.Errorf("%s: Newer = %v", tc.name, got)
		}
	}
}

func TestSaveLoadDocument(t *testing.T) {
	dir := t.TempDir()
	if d, err := LoadDocument(dir, nil); d != nil || err != nil {
		t.Fatalf("empty dir: %v %v", d, err)
	}
	d, _ := NewDocument(services(t, 2), 5, "lb1", time.Now(), key1)
	if err := SaveDocument(dir, d); err != nil {
		t.Fatal(err)
	}
	got, err := LoadDocument(dir, [][]byte{key1})
	if err != nil || got.Version != 5 || got.Hash != d.Hash {
		t.Fatalf("LoadDocument = %+v, %v", got, err)
	}
	if _, err := LoadDocument(dir, [][]byte{key2}); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("after the key changed behind its back: %v", err)
	}
	// No temporary files are left behind.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("state dir holds %d files", len(entries))
	}
	os.WriteFile(filepath.Join(dir, docFile), []byte("{half a docu"), 0o600)
	if _, err := LoadDocument(dir, [][]byte{key1}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("corrupt file: %v", err)
	}
}
