package configs

import (
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strings"

	"github.com/go-viper/mapstructure/v2"
)

// FieldError is one problem in a config document: the field's path in the
// document ("services[1].backends[0].port") and what is wrong with it,
// including the bad value.
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// FieldErrors returns the FieldErrors joined in err, in document order
// (sorted by path). An error that is not a FieldError is returned as one
// with an empty path.
func FieldErrors(err error) []*FieldError {
	var out []*FieldError
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		var fe *FieldError
		if errors.As(e, &fe) && e == error(fe) {
			out = append(out, fe)
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		if errors.As(e, &fe) {
			out = append(out, fe)
			return
		}
		out = append(out, &FieldError{Msg: e.Error()})
	}
	walk(err)
	sortFieldErrors(out)
	return out
}

func sortFieldErrors(errs []*FieldError) {
	sort.SliceStable(errs, func(i, j int) bool {
		return pathLess(errs[i].Path, errs[j].Path)
	})
}

// pathLess orders paths as they appear in a document: by their segments,
// with list indexes compared as numbers (services[2] before services[10]).
func pathLess(a, b string) bool {
	as, bs := splitPath(a), splitPath(b)
	for i := 0; i < len(as) && i < len(bs); i++ {
		if as[i] == bs[i] {
			continue
		}
		an, aok := as[i].(int)
		bn, bok := bs[i].(int)
		switch {
		case aok && bok:
			return an < bn
		case aok != bok:
			return bok // a name sorts before an index
		default:
			return as[i].(string) < bs[i].(string)
		}
	}
	return len(as) < len(bs)
}

// splitPath splits "a.b[3].c" into "a", "b", 3, "c".
func splitPath(p string) []any {
	var out []any
	for _, seg := range strings.Split(p, ".") {
		name, rest, _ := strings.Cut(seg, "[")
		if name != "" {
			out = append(out, name)
		}
		for rest != "" {
			var n int
			idx, after, _ := strings.Cut(rest, "]")
			if _, err := fmt.Sscanf(idx, "%d", &n); err == nil {
				out = append(out, n)
			} else {
				out = append(out, idx)
			}
			_, rest, _ = strings.Cut(after, "[")
		}
	}
	return out
}

// decodeErrors turns what mapstructure reports (unknown keys, values of the
// wrong type) into FieldErrors with document paths.
func decodeErrors(err error) []*FieldError {
	var out []*FieldError
	var walk func(error)
	walk = func(e error) {
		switch x := e.(type) {
		case *mapstructure.DecodeError:
			// The innermost DecodeError names the field; outer ones
			// only carry the joined errors of a struct or list.
			inner := x.Unwrap()
			var nested *mapstructure.DecodeError
			if _, isJoin := inner.(interface{ Unwrap() []error }); isJoin || errors.As(inner, &nested) {
				walk(inner)
				return
			}
			name := x.Name()
			if name == reflect.TypeFor[Config]().String() {
				name = ""
			}
			out = append(out, fieldDecodeError(name, inner)...)
		case interface{ Unwrap() []error }:
			for _, y := range x.Unwrap() {
				walk(y)
			}
		case interface{ Unwrap() error }:
			if inner := x.Unwrap(); inner != nil {
				walk(inner)
				return
			}
			out = append(out, &FieldError{Msg: e.Error()})
		default:
			out = append(out, &FieldError{Msg: e.Error()})
		}
	}
	walk(err)
	return out
}

func fieldDecodeError(name string, err error) []*FieldError {
	msg := err.Error()
	if keys, ok := strings.CutPrefix(msg, "has invalid keys: "); ok {
		var out []*FieldError
		for k := range strings.SplitSeq(keys, ", ") {
			out = append(out, &FieldError{Path: join(name, k), Msg: "unknown key"})
		}
		return out
	}
	if got, ok := strings.CutPrefix(msg, "source data must be an array or slice, got "); ok {
		return []*FieldError{{Path: name, Msg: fmt.Sprintf("a %s is not a list: write it as a list (- item)", map[string]string{"map": "mapping"}[got]+map[bool]string{true: got}[got != "map"])}}
	}
	var pe *mapstructure.ParseError
	if errors.As(err, &pe) {
		return []*FieldError{{Path: name, Msg: fmt.Sprintf("%q is not a valid %s: %v",
			fmt.Sprint(pe.Value), typeWord(pe.Expected.Type()), unwrapParse(pe.Err))}}
	}
	var ue *mapstructure.UnconvertibleTypeError
	if errors.As(err, &ue) {
		return []*FieldError{{Path: name, Msg: fmt.Sprintf("%s is not a valid %s",
			valueWord(ue.Value), typeWord(ue.Expected.Type()))}}
	}
	return []*FieldError{{Path: name, Msg: msg}}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// unwrapParse drops the library's "strconv.ParseInt: parsing ..." prefix
// noise where the inner error says it better.
func unwrapParse(err error) string {
	if err == nil {
		return "invalid"
	}
	inner := errors.Unwrap(err)
	for inner != nil {
		err, inner = inner, errors.Unwrap(inner)
	}
	return err.Error()
}

func typeWord(t reflect.Type) string {
	switch t.String() {
	case "netip.Addr":
		return "IP address"
	case "netip.AddrPort":
		return "address:port"
	case "netip.Prefix":
		return "prefix"
	case "time.Duration":
		return "duration (e.g. 2s, 500ms)"
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "non-negative integer"
	case reflect.Bool:
		return "boolean (true or false)"
	case reflect.String:
		return "string"
	case reflect.Slice:
		return "list of " + typeWord(t.Elem())
	case reflect.Struct, reflect.Map:
		return "mapping"
	}
	return t.String()
}

func valueWord(v any) string {
	switch x := v.(type) {
	case map[string]any:
		return "a mapping"
	case []any:
		return "a list"
	case string:
		return fmt.Sprintf("%q", x)
	case nil:
		return "an empty value"
	}
	return fmt.Sprint(v)
}

// WriteReport writes the result of loading file for an operator: "ok FILE",
// or the file, the number of problems and each problem on its own line with
// its path. It returns err unchanged.
func WriteReport(w io.Writer, file string, err error) error {
	if err == nil {
		fmt.Fprintf(w, "ok %s\n", file)
		return nil
	}
	errs := FieldErrors(err)
	noun := "errors"
	if len(errs) == 1 {
		noun = "error"
	}
	fmt.Fprintf(w, "%s: %d %s\n", file, len(errs), noun)
	for _, e := range errs {
		fmt.Fprintf(w, "  %s\n", e)
	}
	return err
}
