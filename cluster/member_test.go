package cluster

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestElect(t *testing.T) {
	m := func(name string, prio int, opts ...string) Member {
		x := Member{Name: name, State: StateAlive, Meta: Meta{Priority: prio, Healthy: true}}
		for _, o := range opts {
			switch o {
			case "sick":
				x.Meta.Healthy = false
			case "drained":
				x.Meta.Drained = true
			case "dead":
				x.State = StateDead
			case "left":
				x.State = StateLeft
			case "bad":
				x.Bad = "unreadable metadata"
			}
		}
		return x
	}
	roles := func(r map[string]Role, names ...string) string {
		var out []string
		for _, n := range names {
			out = append(out, n+"="+string(r[n])[:1])
		}
		return strings.Join(out, " ")
	}
	for _, tc := range []struct {
		name    string
		members []Member
		max     int
		want    string // name=a(ctive)/s(tandby)/i(neligible), in members order
	}{
		{"all fit", []Member{m("a", 100), m("b", 100)}, 8, "a=a b=a"},
		{"max_active cuts by name", []Member{m("c", 100), m("a", 100), m("b", 100)}, 2, "c=s a=a b=a"},
		{"priority before name", []Member{m("a", 200), m("b", 100), m("c", 150)}, 2, "a=s b=a c=a"},
		{"unhealthy, drained, gone and unreadable are out", []Member{
			m("a", 1, "sick"), m("b", 1, "drained"), m("c", 1, "dead"), m("d", 1, "left"), m("e", 1, "bad"), m("f", 9), m("g", 9)},
			1, "a=i b=i c=i d=i e=i f=a g=s"},
		{"a standby moves up when an active one fails", []Member{m("a", 1, "dead"), m("b", 2), m("c", 3)}, 1, "a=i b=a c=s"},
		{"nobody eligible", []Member{m("a", 1, "sick")}, 8, "a=i"},
		{"max 0", []Member{m("a", 1)}, 0, "a=s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var names []string
			for _, x := range tc.members {
				names = append(names, x.Name)
			}
			got := roles(Elect(tc.members, tc.max), names...)
			if got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
			// Deterministic whatever the order of the view.
			rev := make([]Member, len(tc.members))
			for i, x := range tc.members {
				rev[len(rev)-1-i] = x
			}
			if again := roles(Elect(rev, tc.max), names...); again != got {
				t.Errorf("reversed view: %s", again)
			}
		})
	}
}

func TestMetaEncodeFits(t *testing.T) {
	// Case 18 of the fail-safe issue: the metadata dropped the announced
	// list (and cut the reason) when it did not fit 512 bytes, and DNS
	// then left those VIPs out. They are sent as the member's state now;
	// the metadata carries neither, and is never cut.
	m := Meta{Priority: 100, Healthy: false, Reason: strings.Repeat("uplink eth1 has no carrier; ", 30),
		ConfigVersion: 12, ConfigHash: "0123456789ab", Build: "v1.2.3-45-gdeadbeef", Started: 1764000000, StateSeq: 7}
	for i := range 100 {
		m.Announced = append(m.Announced, fmt.Sprintf("198.51.100.%d/32", i))
	}
	m.AnnouncedCount = len(m.Announced)
	b, err := m.Encode(MetaMaxSize)
	if err != nil || len(b) > MetaMaxSize {
		t.Fatalf("Encode: %d bytes, %v", len(b), err)
	}
	back, err := DecodeMeta(b)
	if err != nil {
		t.Fatal(err)
	}
	if back.AnnouncedCount != 100 || back.Announced != nil || back.Reason != "" || back.StateSeq != 7 || back.ConfigVersion != 12 {
		t.Errorf("decoded %+v", back)
	}
	// What does not fit is an error, not a silent cut.
	big := Meta{Build: strings.Repeat("x", 600)}
	if _, err := big.Encode(MetaMaxSize); err == nil {
		t.Error("metadata over the limit was accepted")
	}
	// A short list fits, and goes in for members of earlier builds (their
	// DNS feed reads it there) during a rolling upgrade.
	small := Meta{Healthy: true, Reason: "why", Announced: []string{"198.51.100.1/32"}, AnnouncedCount: 1, StateSeq: 3}
	b, err = small.Encode(MetaMaxSize)
	if err != nil {
		t.Fatal(err)
	}
	var earlier struct {
		Reason    string   `json:"r"`
		Announced []string `json:"a"`
		Seq       uint64   `json:"q"`
	}
	if err := json.Unmarshal(b, &earlier); err != nil || earlier.Reason != "why" || len(earlier.Announced) != 1 || earlier.Seq != 3 {
		t.Errorf("an earlier build reads %+v from %s (%v)", earlier, b, err)
	}
	// An earlier build's metadata, with its lists inside, is still read.
	old := []byte(`{"p":100,"h":true,"r":"why","v":3,"a":["198.51.100.1/32"],"n":1,"pu":0,"pt":0,"s":1}`)
	if back, err := DecodeMeta(old); err != nil || back.Reason != "why" || len(back.Announced) != 1 {
		t.Errorf("legacy metadata: %+v %v", back, err)
	}
}

func TestMemberIneligible(t *testing.T) {
	ok := Member{Name: "a", State: StateAlive, Meta: Meta{Healthy: true}}
	for _, c := range []struct {
		name string
		mod  func(m *Member)
		want []Ineligibility
	}{
		{"eligible", func(*Member) {}, nil},
		{"dead", func(m *Member) { m.State = StateDead }, []Ineligibility{IneligibleGone}},
		{"left and drained", func(m *Member) { m.State, m.Meta.Drained = StateLeft, true }, []Ineligibility{IneligibleGone, IneligibleDrained}},
		{"unreadable: its metadata says nothing", func(m *Member) { m.Bad, m.Meta = "unreadable metadata", Meta{} }, []Ineligibility{IneligibleUnreadable}},
		{"unhealthy and drained", func(m *Member) { m.Meta.Healthy, m.Meta.Drained = false, true }, []Ineligibility{IneligibleUnhealthy, IneligibleDrained}},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := ok
			c.mod(&m)
			if got := m.Ineligible(); !slices.Equal(got, c.want) {
				t.Errorf("ineligible %v, want %v", got, c.want)
			}
			if m.Eligible() != (len(c.want) == 0) {
				t.Errorf("eligible %v", m.Eligible())
			}
		})
	}
}
