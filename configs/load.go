package configs

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/big"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// EnvPrefix is the prefix of the environment variables that override the
// file: node.name is ANYCASTD_NODE_NAME, routing.bgp.asn is
// ANYCASTD_ROUTING_BGP_ASN. A list takes comma-separated values.
const EnvPrefix = "ANYCASTD"

// Option changes how Load reads a document.
type Option func(*loader)

type loader struct {
	env   func(string) (string, bool)
	flags *pflag.FlagSet
	keys  map[string]string // flag name -> config key
	// servicesOnly validates only services and the health defaults
	// they take (ParseServices).
	servicesOnly bool
}

// WithEnv lets ANYCASTD_* variables from lookup (os.LookupEnv in the
// daemon) override the file.
func WithEnv(lookup func(string) (string, bool)) Option {
	return func(l *loader) { l.env = lookup }
}

// WithFlags lets the flags of fs that the user set override the file and
// the environment. keys maps a flag name to a config key ("node.name").
func WithFlags(fs *pflag.FlagSet, keys map[string]string) Option {
	return func(l *loader) { l.flags, l.keys = fs, keys }
}

// Load reads the YAML document at path, then the environment and flags the
// options name (in that order of precedence, lowest first), fills defaults
// and validates the whole document. On any problem it returns nil and every
// problem found, joined; see FieldErrors.
func Load(path string, opts ...Option) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return parse(data, opts...)
}

// ParseServices reads the cluster-wide part of a document: its services,
// with defaults filled from its health section, validated as a director
// validates a services document. The rest of the document may be absent
// (a file that holds only `services:`), but an unknown key is still an
// error. It is what `anyctl apply -f` sends.
func ParseServices(data []byte) ([]Service, error) {
	cfg, err := parse(data, func(l *loader) { l.servicesOnly = true })
	if err != nil {
		return nil, err
	}
	return cfg.Services, nil
}

// Parse is Load for a document already in memory, without environment or
// flags unless options add them.
func Parse(data []byte, opts ...Option) (*Config, error) {
	return parse(data, opts...)
}

func parse(data []byte, opts ...Option) (cfg *Config, err error) {
	l := &loader{}
	for _, o := range opts {
		o(l)
	}
	if problems := checkYAML(data); len(problems) > 0 {
		sortFieldErrors(problems)
		errs := make([]error, len(problems))
		for i, p := range problems {
			errs[i] = p
		}
		return nil, errors.Join(errs...)
	}
	v := viper.New()
	v.SetConfigType("yaml")
	if err := readYAML(v, data); err != nil {
		return nil, &FieldError{Msg: fmt.Sprintf("not a valid YAML document: %v", err)}
	}
	if l.env != nil {
		if err := applyEnv(v, l.env); err != nil {
			return nil, err
		}
	}
	if l.flags != nil {
		if err := applyFlags(v, l.flags, l.keys); err != nil {
			return nil, err
		}
	}

	var c Config
	md := &mapstructure.Metadata{}
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		Result:      &c,
		ErrorUnused: true,
		Metadata:    md,
		TagName:     "mapstructure",
		DecodeHook: mapstructure.ComposeDecodeHookFunc(
			durationHook,
			netipHook,
			scalarHook,
			mapstructure.StringToBasicTypeHookFunc(),
		),
	})
	if err != nil {
		return nil, fmt.Errorf("config decoder: %w", err)
	}
	var problems []*FieldError
	if err := dec.Decode(v.AllSettings()); err != nil {
		problems = decodeErrors(err)
	}
	set := make(map[string]bool, len(md.Keys))
	for _, k := range md.Keys {
		set[k] = true
	}
	Canonicalize(&c)
	applyDefaults(&c, func(p string) bool { return set[p] })

	// A field that could not be decoded is left zero; don't report it a
	// second time as "required" or out of range.
	decodeProblems := problems
	check := validate
	if l.servicesOnly {
		check = func(c *Config) []*FieldError {
			ch := &checker{}
			ch.health("health", &c.Health)
			ch.services(c.Services)
			sortFieldErrors(ch.errs)
			return ch.errs
		}
	}
	for _, ve := range check(&c) {
		if !under(ve.Path, decodeProblems) && !derived(ve.Path, decodeProblems) {
			problems = append(problems, ve)
		}
	}
	if len(problems) > 0 {
		sortFieldErrors(problems)
		errs := make([]error, len(problems))
		for i, p := range problems {
			errs[i] = p
		}
		return nil, errors.Join(errs...)
	}
	return &c, nil
}

// readYAML reads the document into v. The YAML parser is third-party code
// fed with operator and network input (anyctl apply); a panic in it must
// become an error, not take the daemon down.
func readYAML(v *viper.Viper, data []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("parser failed: %v", r)
		}
	}()
	return v.ReadConfig(bytes.NewReader(data))
}

// derived reports a check of a value that takes its default from a field
// that could not be decoded: the problem is that field, reported already.
func derived(path string, problems []*FieldError) bool {
	for _, p := range problems {
		switch {
		case p.Path == "cluster.insecure" && path == "cluster.keys":
			return true
		case strings.HasPrefix(p.Path, "services[") && strings.HasSuffix(p.Path, "].port"):
			svc := strings.TrimSuffix(p.Path, ".port")
			if strings.HasPrefix(path, svc+".backends[") && strings.HasSuffix(path, "].port") {
				return true
			}
		}
	}
	return false
}

func under(path string, problems []*FieldError) bool {
	for _, p := range problems {
		if p.Path == "" {
			continue
		}
		if path == p.Path || strings.HasPrefix(path, p.Path+".") || strings.HasPrefix(path, p.Path+"[") {
			return true
		}
	}
	return false
}

// durationHook decodes "2s" into a time.Duration and refuses a bare number,
// which mapstructure would otherwise take as nanoseconds.
func durationHook(from, to reflect.Type, data any) (any, error) {
	if to != reflect.TypeFor[time.Duration]() {
		return data, nil
	}
	switch x := data.(type) {
	case string:
		d, err := time.ParseDuration(strings.TrimSpace(x))
		if err != nil {
			return nil, fmt.Errorf("%q is not a duration (e.g. 2s, 500ms)", x)
		}
		return d, nil
	case time.Duration:
		return x, nil
	default:
		return nil, fmt.Errorf("%v is not a duration: give a unit, e.g. %vs", data, data)
	}
}

// scalarHook decodes integers and booleans with errors that say what the
// value should be, and refuses a number its field cannot hold (mapstructure
// would wrap 2^63 around to -2^63, and an AS number of 2^32 to 0).
func scalarHook(from, to reflect.Type, data any) (any, error) {
	if to == reflect.TypeFor[time.Duration]() {
		return data, nil
	}
	switch to.Kind() {
	case reflect.Bool:
		s, ok := data.(string)
		if !ok {
			return data, nil
		}
		b, err := strconv.ParseBool(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("%q is not a boolean (true or false)", s)
		}
		return b, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
	default:
		return data, nil
	}
	var n big.Int
	switch x := data.(type) {
	case string:
		if _, ok := n.SetString(strings.TrimSpace(x), 10); !ok {
			return nil, fmt.Errorf("%q is not an integer", x)
		}
	case int:
		n.SetInt64(int64(x))
	case int64:
		n.SetInt64(x)
	case uint64:
		n.SetUint64(x)
	case float64:
		if x != math.Trunc(x) || math.IsInf(x, 0) || math.IsNaN(x) {
			return nil, fmt.Errorf("%v is not an integer", x)
		}
		big.NewFloat(x).Int(&n)
	default:
		return data, nil
	}
	out := reflect.New(to).Elem()
	var lo, hi big.Int
	if to.Kind() >= reflect.Uint && to.Kind() <= reflect.Uint64 {
		hi.Lsh(big.NewInt(1), uint(to.Bits())).Sub(&hi, big.NewInt(1))
		if n.Sign() < 0 || n.Cmp(&hi) > 0 {
			return nil, fmt.Errorf("%s is out of range (0..%s)", n.String(), hi.String())
		}
		out.SetUint(n.Uint64())
		return out.Interface(), nil
	}
	hi.Lsh(big.NewInt(1), uint(to.Bits()-1)).Sub(&hi, big.NewInt(1))
	lo.Neg(&hi).Sub(&lo, big.NewInt(1))
	if n.Cmp(&lo) < 0 || n.Cmp(&hi) > 0 {
		return nil, fmt.Errorf("%s is out of range (%s..%s)", n.String(), lo.String(), hi.String())
	}
	out.SetInt(n.Int64())
	return out.Interface(), nil
}

// netipHook decodes addresses ("10.0.0.1", "[2001:db8::1]:53") with an
// error that shows the bad value.
func netipHook(from, to reflect.Type, data any) (any, error) {
	s, ok := data.(string)
	if !ok {
		return data, nil
	}
	s = strings.TrimSpace(s)
	switch to {
	case reflect.TypeFor[netip.Addr]():
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not a valid IP address", s)
		}
		return a, nil
	case reflect.TypeFor[netip.AddrPort]():
		a, err := netip.ParseAddrPort(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not a valid address:port (IPv6 in brackets: [2001:db8::1]:53)", s)
		}
		return a, nil
	}
	return data, nil
}

// leafKeys lists the config keys that the environment and flags may set:
// every scalar or scalar list reachable from Config without crossing a list
// of mappings (services, neighbours, ...), with whether it is a list.
func leafKeys() map[string]bool {
	out := map[string]bool{}
	var walk func(prefix string, t reflect.Type)
	walk = func(prefix string, t reflect.Type) {
		for f := range t.Fields() {
			tag, opts, _ := strings.Cut(f.Tag.Get("mapstructure"), ",")
			if opts == "squash" {
				walk(prefix, f.Type)
				continue
			}
			key := tag
			if prefix != "" {
				key = prefix + "." + tag
			}
			ft := f.Type
			switch {
			case ft.Kind() == reflect.Struct && !isScalarStruct(ft):
				walk(key, ft)
			case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct && !isScalarStruct(ft.Elem()):
				// lists of mappings come only from the file
			default:
				out[key] = ft.Kind() == reflect.Slice
			}
		}
	}
	walk("", reflect.TypeFor[Config]())
	return out
}

func isScalarStruct(t reflect.Type) bool {
	switch t {
	case reflect.TypeFor[netip.Addr](), reflect.TypeFor[netip.AddrPort](), reflect.TypeFor[netip.Prefix]():
		return true
	}
	return false
}

// EnvName is the environment variable that sets a config key.
func EnvName(key string) string {
	return EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

func applyEnv(v *viper.Viper, lookup func(string) (string, bool)) error {
	for key, isList := range leafKeys() {
		val, ok := lookup(EnvName(key))
		if !ok {
			continue
		}
		if isList {
			var parts []any
			for p := range strings.SplitSeq(val, ",") {
				if p = strings.TrimSpace(p); p != "" {
					parts = append(parts, p)
				}
			}
			v.Set(key, parts)
			continue
		}
		v.Set(key, val)
	}
	return nil
}

func applyFlags(v *viper.Viper, fs *pflag.FlagSet, keys map[string]string) error {
	leaves := leafKeys()
	for name, key := range keys {
		f := fs.Lookup(name)
		if f == nil {
			return fmt.Errorf("flag --%s is bound to %s but not defined", name, key)
		}
		if _, ok := leaves[key]; !ok {
			return fmt.Errorf("flag --%s is bound to unknown config key %s", name, key)
		}
		if !f.Changed {
			continue
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			list := []any{}
			for _, s := range sv.GetSlice() {
				list = append(list, s)
			}
			v.Set(key, list)
			continue
		}
		v.Set(key, f.Value.String())
	}
	return nil
}
