package vrrp

import (
	"bytes"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"
)

var (
	src4 = netip.MustParseAddr("10.0.0.2")
	src6 = netip.MustParseAddr("fe80::2")
)

func TestAdvertRoundTrip(t *testing.T) {
	cases := []struct {
		name     string
		a        Advert
		src, dst netip.Addr
		size     int
	}{
		{"ipv4 one address", Advert{VRID: 51, Priority: 100, Interval: time.Second, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10")}}, src4, GroupIPv4, 12},
		{"ipv4 three addresses, 100ms", Advert{VRID: 1, Priority: 254, Interval: 100 * time.Millisecond,
			Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("192.0.2.12")}}, src4, GroupIPv4, 20},
		{"ipv4 unicast peer", Advert{VRID: 255, Priority: 1, Interval: MaxInterval, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10")}}, src4, netip.MustParseAddr("10.0.0.3"), 12},
		{"ipv6", Advert{VRID: 7, Priority: 200, Interval: 10 * time.Millisecond, Addrs: []netip.Addr{netip.MustParseAddr("2001:db8::10"), netip.MustParseAddr("fe80::1")}}, src6, GroupIPv6, 40},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := c.a.Marshal(c.src, c.dst)
			if err != nil {
				t.Fatal(err)
			}
			if len(b) != c.size || b[0] != 0x31 {
				t.Fatalf("% x: want %d bytes starting 0x31", b, c.size)
			}
			got, err := Unmarshal(b, c.src, c.dst)
			if err != nil {
				t.Fatal(err)
			}
			if got.VRID != c.a.VRID || got.Priority != c.a.Priority || got.Interval != c.a.Interval || !slices.Equal(got.Addrs, c.a.Addrs) {
				t.Errorf("got %+v, want %+v", got, c.a)
			}
			// The checksum covers the pseudo-header: another source fails.
			if _, err := Unmarshal(b, netip.MustParseAddr(map[bool]string{true: "fe80::9", false: "10.0.0.9"}[c.src.Is6()]), c.dst); !errors.Is(err, ErrChecksum) {
				t.Errorf("another source: %v, want a checksum error", err)
			}
		})
	}
}

// A fixed encoding, worked out by hand from RFC 5798 5.1 and 5.2.8:
// 0x31 (v3, advertisement), VRID 51, priority 100, 1 address, interval
// 100 cs = 0x064, then the checksum over the IPv4 pseudo-header
// (10.0.0.2, 224.0.0.18, 0, 112, length 12) and the message.
func TestAdvertKnownBytes(t *testing.T) {
	a := Advert{VRID: 51, Priority: 100, Interval: time.Second, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10")}}
	b, err := a.Marshal(src4, GroupIPv4)
	if err != nil {
		t.Fatal(err)
	}
	// Sum of the 16-bit words 0a00 0002 e000 0012 0070 000c (pseudo-
	// header) and 3133 6401 0064 0000 c000 020a (message) = 0x24232;
	// folded 0x4234; complemented 0xbdcb.
	want := []byte{0x31, 0x33, 0x64, 0x01, 0x00, 0x64, 0xbd, 0xcb, 192, 0, 2, 10}
	if !bytes.Equal(b, want) {
		t.Errorf("% x, want % x", b, want)
	}
}

// VRRPv2 as keepalived sends it by default (RFC 3768 5.1): the handbook's
// instance, VRID 51, priority 100, advert_int 1, auth_type PASS with
// auth_pass 1111, one address. Worked out by hand: 0x21 (v2,
// advertisement), 0x33, 0x64, count 1, auth type 1, interval 1 s, the
// checksum over the message alone (no pseudo-header): the words 2133 6401
// 0101 c000 020a 3131 3131 sum to 0x1aaa1, folded 0xaaa2, complemented
// 0x555d; then the address, then "1111" padded to 8 bytes.
func TestAdvertV2KnownBytes(t *testing.T) {
	a := Advert{Version: Version2, VRID: 51, Priority: 100, Interval: time.Second,
		Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10")}, AuthType: AuthSimple, Auth: SimpleAuth("1111")}
	b, err := a.Marshal(src4, GroupIPv4)
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{0x21, 0x33, 0x64, 0x01, 0x01, 0x01, 0x55, 0x5d, 192, 0, 2, 10, '1', '1', '1', '1', 0, 0, 0, 0}
	if !bytes.Equal(b, want) {
		t.Fatalf("% x, want % x", b, want)
	}
	// No pseudo-header: any source and destination decode it.
	got, err := Unmarshal(b, netip.MustParseAddr("10.9.9.9"), netip.MustParseAddr("10.0.0.3"))
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != Version2 || got.VRID != 51 || got.Priority != 100 || got.Interval != time.Second ||
		got.AuthType != AuthSimple || got.Auth != SimpleAuth("1111") || !slices.Equal(got.Addrs, a.Addrs) {
		t.Errorf("got %+v", got)
	}
	if SimpleAuth("longer than eight") != SimpleAuth("longer t") {
		t.Error("a password is not cut at 8 bytes as keepalived sends it")
	}
	mod := func(f func(b []byte) []byte) []byte { return f(slices.Clone(want)) }
	for _, c := range []struct {
		name string
		b    []byte
		src  netip.Addr
		want error
	}{
		{"over IPv6", want, src6, ErrFamily},
		{"no authentication data", want[:12], src4, ErrLength},
		{"count 2, one address", mod(func(b []byte) []byte { b[3] = 2; return b }), src4, ErrLength},
		{"flipped bit", mod(func(b []byte) []byte { b[13] ^= 1; return b }), src4, ErrChecksum},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := Unmarshal(c.b, c.src, GroupIPv4); !errors.Is(err, c.want) {
				t.Errorf("%v, want %v", err, c.want)
			}
		})
	}
	for _, bad := range []Advert{
		{Version: Version2, VRID: 1, Priority: 1, Interval: 1500 * time.Millisecond, Addrs: a.Addrs},
		{Version: Version2, VRID: 1, Priority: 1, Interval: 256 * time.Second, Addrs: a.Addrs},
		{Version: Version2, VRID: 1, Priority: 1, Interval: time.Second, Addrs: a.Addrs, AuthType: 2},
		{Version: Version2, VRID: 1, Priority: 1, Interval: time.Second, Addrs: []netip.Addr{netip.MustParseAddr("2001:db8::1")}},
	} {
		if _, err := bad.Marshal(src4, GroupIPv4); err == nil {
			t.Errorf("%+v encoded", bad)
		}
	}
}

func TestAdvertRefused(t *testing.T) {
	good, _ := Advert{VRID: 51, Priority: 100, Interval: time.Second, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10")}}.Marshal(src4, GroupIPv4)
	mod := func(f func(b []byte) []byte) []byte { return f(slices.Clone(good)) }
	cases := []struct {
		name string
		b    []byte
		src  netip.Addr
		want error
	}{
		{"empty", nil, src4, ErrShort},
		{"header only", good[:7], src4, ErrShort},
		{"version 4", mod(func(b []byte) []byte { b[0] = 0x41; return b }), src4, ErrVersion},
		{"a v3 body called version 2 (no authentication data)", mod(func(b []byte) []byte { b[0] = 0x21; return b }), src4, ErrLength},
		{"type 2", mod(func(b []byte) []byte { b[0] = 0x32; return b }), src4, ErrType},
		{"count 2, one address", mod(func(b []byte) []byte { b[3] = 2; return b }), src4, ErrLength},
		{"count 0", mod(func(b []byte) []byte { b[3] = 0; return b[:8] }), src4, ErrLength},
		{"trailing byte", append(slices.Clone(good), 0), src4, ErrLength},
		{"flipped bit", mod(func(b []byte) []byte { b[9] ^= 1; return b }), src4, ErrChecksum},
		{"IPv4 body from an IPv6 source", good, src6, ErrLength},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := Unmarshal(c.b, c.src, GroupIPv4); !errors.Is(err, c.want) {
				t.Errorf("%v, want %v", err, c.want)
			}
		})
	}
	bad := []Advert{
		{VRID: 0, Priority: 1, Interval: time.Second, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}},
		{VRID: 1, Priority: 1, Interval: 0, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}},
		{VRID: 1, Priority: 1, Interval: 41 * time.Second, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}},
		{VRID: 1, Priority: 1, Interval: 15 * time.Millisecond, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}},
		{VRID: 1, Priority: 1, Interval: time.Second},
		{VRID: 1, Priority: 1, Interval: time.Second, Addrs: []netip.Addr{netip.MustParseAddr("2001:db8::1")}},
	}
	for _, a := range bad {
		if _, err := a.Marshal(src4, GroupIPv4); err == nil {
			t.Errorf("%+v encoded", a)
		}
	}
	if _, err := (Advert{VRID: 1, Interval: time.Second, Addrs: []netip.Addr{src4}}).Marshal(src4, GroupIPv6); !errors.Is(err, ErrFamily) {
		t.Errorf("mixed families: %v", err)
	}
}

// FuzzUnmarshal: no input makes the decoder panic, and what it accepts
// encodes back to the same bytes (reserved bits aside).
func FuzzUnmarshal(f *testing.F) {
	good, _ := Advert{VRID: 51, Priority: 100, Interval: time.Second, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10")}}.Marshal(src4, GroupIPv4)
	f.Add(good, false)
	g6, _ := Advert{VRID: 7, Priority: 200, Interval: 10 * time.Millisecond, Addrs: []netip.Addr{netip.MustParseAddr("2001:db8::10")}}.Marshal(src6, GroupIPv6)
	f.Add(g6, true)
	f.Add([]byte{0x31}, false)
	g2, _ := Advert{Version: Version2, VRID: 51, Priority: 100, Interval: time.Second, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10")},
		AuthType: AuthSimple, Auth: SimpleAuth("1111")}.Marshal(src4, GroupIPv4)
	f.Add(g2, false)
	f.Fuzz(func(t *testing.T, b []byte, v6 bool) {
		src, dst := src4, GroupIPv4
		if v6 {
			src, dst = src6, GroupIPv6
		}
		a, err := Unmarshal(b, src, dst)
		if err != nil {
			return
		}
		if a.Interval == 0 || a.VRID == 0 || a.AuthType > AuthSimple {
			return // decodable but not something we would send
		}
		again, err := a.Marshal(src, dst)
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", a, err)
		}
		want := slices.Clone(b)
		if a.Version == Version2 {
			if a.AuthType == AuthNone {
				clear(want[len(want)-8:]) // ignored on receipt, zeros sent
			}
		} else {
			want[4] &= 0x0f // reserved bits
		}
		again[6], again[7], want[6], want[7] = 0, 0, 0, 0
		if !bytes.Equal(again, want) {
			t.Fatalf("% x decoded and encoded as % x", b, again)
		}
	})
}
