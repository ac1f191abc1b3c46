// Package vrrp implements VRRP version 3 (RFC 5798) for IPv4 and IPv6,
// and version 2 (RFC 3768, IPv4, with the simple-text authentication
// keepalived sends) per instance, for mixed pairs with keepalived boxes that
// run its default VRRPv2: the advertisement format, the protocol's state
// machine, and (in the files that touch the network) raw sockets,
// gratuitous ARP and unsolicited neighbour advertisements. No maintained Go
// library implements VRRP; this one is written from the RFCs and tested
// against keepalived.
package vrrp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Protocol is VRRP's IP protocol number.
const Protocol = 112

// Multicast groups advertisements go to (RFC 5798 5.1.1.2 and 5.1.2.2).
var (
	GroupIPv4 = netip.MustParseAddr("224.0.0.18")
	GroupIPv6 = netip.MustParseAddr("ff02::12")
)

// Versions, and the Type of the only message VRRP has.
const (
	Version2      = 2
	Version3      = 3
	TypeAdvertise = 1
)

// VRRPv2 authentication types (RFC 3768 5.3.6; type 2, IP AH, was
// removed by RFC 3768 and is not supported).
const (
	AuthNone   = 0
	AuthSimple = 1
)

// MaxIntervalV2 is VRRPv2's largest advertisement interval: 8 bits of
// seconds.
const MaxIntervalV2 = 255 * time.Second

// Priorities with a meaning of their own (RFC 5798 5.2.4).
const (
	// PriorityStop is sent by a master that stops: backups take over at
	// once (skew time) instead of waiting for the master-down interval.
	PriorityStop = 0
	// PriorityOwner is the address owner's.
	PriorityOwner = 255
)

// MaxInterval is the largest advertisement interval: 12 bits of
// centiseconds.
const MaxInterval = 4095 * 10 * time.Millisecond

// Advert is a VRRP advertisement.
type Advert struct {
	// Version is Version3 (0 means 3) or Version2 (IPv4 only).
	Version  uint8
	VRID     uint8
	Priority uint8
	// Interval is the master's advertisement interval (v3: centisecond
	// resolution, at most MaxInterval; v2: whole seconds, at most
	// MaxIntervalV2).
	Interval time.Duration
	// Addrs are the virtual addresses, all of one family: the family of
	// the IP packet that carries the advertisement.
	Addrs []netip.Addr
	// AuthType and Auth are VRRPv2's authentication: AuthSimple carries a
	// password of up to 8 bytes, zero-padded (keepalived's auth_type
	// PASS); AuthNone carries zeros.
	AuthType uint8
	Auth     [8]byte
}

// SimpleAuth is the authentication data of a VRRPv2 password (at most 8
// bytes are sent; keepalived cuts a longer one the same way).
func SimpleAuth(password string) [8]byte {
	var a [8]byte
	copy(a[:], password)
	return a
}

// Errors of Unmarshal.
var (
	ErrShort    = errors.New("vrrp: packet too short")
	ErrVersion  = errors.New("vrrp: not version 2 or 3")
	ErrType     = errors.New("vrrp: not an advertisement")
	ErrLength   = errors.New("vrrp: address count does not match the length")
	ErrChecksum = errors.New("vrrp: bad checksum")
	ErrFamily   = errors.New("vrrp: addresses and IP header of different families")
)

// Marshal encodes a as sent from src to dst (whose family decides the
// address size and the checksum's pseudo-header).
func (a Advert) Marshal(src, dst netip.Addr) ([]byte, error) {
	v6 := src.Is6() && !src.Is4In6()
	if v6 != (dst.Is6() && !dst.Is4In6()) {
		return nil, fmt.Errorf("%w: source %s, destination %s", ErrFamily, src, dst)
	}
	if len(a.Addrs) == 0 || len(a.Addrs) > 255 {
		return nil, fmt.Errorf("vrrp: %d addresses (1..255)", len(a.Addrs))
	}
	if a.VRID == 0 {
		return nil, errors.New("vrrp: VRID 0 is not valid (1..255)")
	}
	if a.Version == Version2 {
		return a.marshalV2(v6)
	}
	cs := a.Interval / (10 * time.Millisecond)
	if cs < 1 || a.Interval > MaxInterval || a.Interval%(10*time.Millisecond) != 0 {
		return nil, fmt.Errorf("vrrp: interval %v is not 10ms..40.95s in steps of 10ms", a.Interval)
	}
	size := 4
	if v6 {
		size = 16
	}
	b := make([]byte, 8, 8+size*len(a.Addrs))
	b[0] = Version3<<4 | TypeAdvertise
	b[1] = a.VRID
	b[2] = a.Priority
	b[3] = uint8(len(a.Addrs))
	binary.BigEndian.PutUint16(b[4:6], uint16(cs)&0x0fff)
	for _, addr := range a.Addrs {
		if (addr.Is6() && !addr.Is4In6()) != v6 {
			return nil, fmt.Errorf("%w: virtual address %s", ErrFamily, addr)
		}
		if v6 {
			x := addr.As16()
			b = append(b, x[:]...)
		} else {
			x := addr.Unmap().As4()
			b = append(b, x[:]...)
		}
	}
	binary.BigEndian.PutUint16(b[6:8], checksum(b, src, dst))
	return b, nil
}

// marshalV2 encodes a VRRPv2 advertisement (RFC 3768 5.1): IPv4 only,
// the interval in seconds, the authentication data after the addresses,
// and a checksum over the message alone.
func (a Advert) marshalV2(v6 bool) ([]byte, error) {
	if v6 {
		return nil, fmt.Errorf("%w: VRRPv2 carries IPv4 only", ErrFamily)
	}
	if a.Interval < time.Second || a.Interval > MaxIntervalV2 || a.Interval%time.Second != 0 {
		return nil, fmt.Errorf("vrrp: interval %v is not 1s..255s in whole seconds (VRRPv2)", a.Interval)
	}
	if a.AuthType != AuthNone && a.AuthType != AuthSimple {
		return nil, fmt.Errorf("vrrp: authentication type %d (0 none, 1 simple text)", a.AuthType)
	}
	b := make([]byte, 8, 8+4*len(a.Addrs)+8)
	b[0] = Version2<<4 | TypeAdvertise
	b[1] = a.VRID
	b[2] = a.Priority
	b[3] = uint8(len(a.Addrs))
	b[4] = a.AuthType
	b[5] = uint8(a.Interval / time.Second)
	for _, addr := range a.Addrs {
		if addr.Is6() && !addr.Is4In6() {
			return nil, fmt.Errorf("%w: virtual address %s in VRRPv2", ErrFamily, addr)
		}
		x := addr.Unmap().As4()
		b = append(b, x[:]...)
	}
	if a.AuthType == AuthSimple {
		b = append(b, a.Auth[:]...)
	} else {
		b = append(b, make([]byte, 8)...)
	}
	binary.BigEndian.PutUint16(b[6:8], checksum(b, netip.Addr{}, netip.Addr{}))
	return b, nil
}

// Unmarshal decodes an advertisement received from src for dst, checking
// version (2 or 3), type, length, address family and checksum. Fields a
// receiver must ignore (the reserved bits) are ignored. Authentication and
// interval are returned for the caller to check against its configuration.
func Unmarshal(b []byte, src, dst netip.Addr) (Advert, error) {
	if len(b) < 8 {
		return Advert{}, ErrShort
	}
	if v := b[0] >> 4; v != Version3 && v != Version2 {
		return Advert{}, fmt.Errorf("%w (version %d)", ErrVersion, v)
	}
	if b[0]&0x0f != TypeAdvertise {
		return Advert{}, fmt.Errorf("%w (type %d)", ErrType, b[0]&0x0f)
	}
	v6 := src.Is6() && !src.Is4In6()
	if b[0]>>4 == Version2 {
		return unmarshalV2(b, v6)
	}
	size := 4
	if v6 {
		size = 16
	}
	n := int(b[3])
	if n == 0 || len(b) != 8+n*size {
		return Advert{}, fmt.Errorf("%w: %d addresses of %d bytes in %d bytes", ErrLength, n, size, len(b))
	}
	if checksum(b, src, dst) != 0 {
		return Advert{}, ErrChecksum
	}
	a := Advert{Version: Version3, VRID: b[1], Priority: b[2],
		Interval: time.Duration(binary.BigEndian.Uint16(b[4:6])&0x0fff) * 10 * time.Millisecond}
	for i := 0; i < n; i++ {
		p := b[8+i*size : 8+(i+1)*size]
		addr, _ := netip.AddrFromSlice(p)
		a.Addrs = append(a.Addrs, addr)
	}
	return a, nil
}

func unmarshalV2(b []byte, v6 bool) (Advert, error) {
	if v6 {
		return Advert{}, fmt.Errorf("%w: VRRPv2 over IPv6", ErrFamily)
	}
	n := int(b[3])
	if n == 0 || len(b) != 8+4*n+8 {
		return Advert{}, fmt.Errorf("%w: %d addresses and 8 bytes of authentication in %d bytes (VRRPv2)", ErrLength, n, len(b))
	}
	if checksum(b, netip.Addr{}, netip.Addr{}) != 0 {
		return Advert{}, ErrChecksum
	}
	a := Advert{Version: Version2, VRID: b[1], Priority: b[2], AuthType: b[4],
		Interval: time.Duration(b[5]) * time.Second}
	for i := 0; i < n; i++ {
		addr, _ := netip.AddrFromSlice(b[8+i*4 : 8+(i+1)*4])
		a.Addrs = append(a.Addrs, addr)
	}
	copy(a.Auth[:], b[8+4*n:])
	return a, nil
}

// checksum is the Internet checksum of the pseudo-header and b (RFC 5798
// 5.2.8: the IPv4 pseudo-header as for UDP, the IPv6 one of RFC 8200
// 8.1); without addresses (VRRPv2, RFC 3768 5.3.8) of b alone. Over a
// packet with its checksum filled in it is 0.
func checksum(b []byte, src, dst netip.Addr) uint16 {
	var sum uint32
	add := func(p []byte) {
		for i := 0; i+1 < len(p); i += 2 {
			sum += uint32(p[i])<<8 | uint32(p[i+1])
		}
		if len(p)%2 == 1 {
			sum += uint32(p[len(p)-1]) << 8
		}
	}
	switch {
	case !src.IsValid():
	case src.Is6() && !src.Is4In6():
		s, d := src.As16(), dst.As16()
		add(s[:])
		add(d[:])
		var l [8]byte
		binary.BigEndian.PutUint32(l[0:4], uint32(len(b)))
		l[7] = Protocol
		add(l[:])
	default:
		s, d := src.Unmap().As4(), dst.Unmap().As4()
		add(s[:])
		add(d[:])
		add([]byte{0, Protocol, byte(len(b) >> 8), byte(len(b))})
	}
	add(b)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
