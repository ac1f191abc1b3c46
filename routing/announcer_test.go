package routing

import (
	"net/netip"
	"testing"
)

func TestAnnouncementEqual(t *testing.T) {
	a := Announcement{Prefix: netip.MustParsePrefix("192.0.2.1/32"), Communities: []string{"65000:1"}, MED: 5}
	for _, tc := range []struct {
		name string
		b    Announcement
		want bool
	}{
		{"same", a, true},
		{"prefix", Announcement{Prefix: netip.MustParsePrefix("192.0.2.2/32"), Communities: []string{"65000:1"}, MED: 5}, false},
		{"communities", Announcement{Prefix: a.Prefix, MED: 5}, false},
		{"med", Announcement{Prefix: a.Prefix, Communities: []string{"65000:1"}}, false},
		{"gshut", Announcement{Prefix: a.Prefix, Communities: []string{"65000:1"}, MED: 5, GracefulShutdown: true}, false},
	} {
		if got := a.Equal(tc.b); got != tc.want {
			t.Errorf("%s: Equal = %v", tc.name, got)
		}
	}
}
