package configs

import (
	"net/netip"
	"reflect"
)

// Canonicalize gives every address in c its one canonical form: an
// IPv4-mapped IPv6 address ("::ffff:198.51.100.10") becomes the IPv4
// address it maps. Two spellings of one address would otherwise pass the
// checks that compare addresses and meet as one key in the kernel's table.
// Load and Parse call it before validating.
func Canonicalize(c *Config) { canonical(reflect.ValueOf(c).Elem()) }

// CanonicalizeServices is Canonicalize for a services document.
func CanonicalizeServices(ss []Service) { canonical(reflect.ValueOf(ss)) }

var (
	addrType     = reflect.TypeFor[netip.Addr]()
	addrPortType = reflect.TypeFor[netip.AddrPort]()
	prefixType   = reflect.TypeFor[netip.Prefix]()
)

func canonical(v reflect.Value) {
	switch v.Type() {
	case addrType:
		if a := v.Interface().(netip.Addr); a.Is4In6() {
			v.Set(reflect.ValueOf(a.Unmap()))
		}
		return
	case addrPortType:
		if ap := v.Interface().(netip.AddrPort); ap.Addr().Is4In6() {
			v.Set(reflect.ValueOf(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())))
		}
		return
	case prefixType:
		if p := v.Interface().(netip.Prefix); p.Addr().Is4In6() && p.Bits() >= 96 {
			v.Set(reflect.ValueOf(netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)))
		}
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				canonical(v.Field(i))
			}
		}
	case reflect.Slice, reflect.Array:
		for i := range v.Len() {
			canonical(v.Index(i))
		}
	case reflect.Pointer:
		if !v.IsNil() {
			canonical(v.Elem())
		}
	}
}
