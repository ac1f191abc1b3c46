package keepalived

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// includeKeys are keepalived's include statement and its variants (which
// differ only in the checks keepalived makes on what they match).
var includeKeys = map[string]bool{"include": true, "includer": true, "includem": true, "includew": true, "includeb": true}

// maxIncludeDepth bounds nested includes.
const maxIncludeDepth = 16

// ParseFile reads a keepalived.conf and the files it includes, as
// keepalived does: an include statement stands for the statements of the
// files its pattern matches (wildcards and {a,b} brace expressions,
// relative to the including file's directory), in name order, wherever it
// appears. Statements from included files carry their file. A pattern
// that matches nothing is reported in the returned list (keepalived goes
// on without it); an unreadable file, an include cycle or nesting deeper
// than 16 is an error.
func ParseFile(path string) ([]*Node, []Skipped, error) {
	l := &loader{}
	toks, err := l.load(path, "", nil)
	if err != nil {
		return nil, nil, err
	}
	p := &parser{toks: toks}
	nodes, err := p.block(false)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return nodes, l.skipped, nil
}

type loader struct {
	skipped []Skipped
}

// load tokenizes path (shown as display in messages, "" for the main
// file) with its includes spliced in; stack holds the files being read.
func (l *loader) load(path, display string, stack []string) ([]token, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	if slices.Contains(stack, abs) {
		return nil, fmt.Errorf("include cycle: %s includes itself (through %s)", path, strings.Join(stack, " -> "))
	}
	if len(stack) >= maxIncludeDepth {
		return nil, fmt.Errorf("%s: includes nested deeper than %d", path, maxIncludeDepth)
	}
	stack = append(stack, abs)
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	toks, err := tokenize(string(text))
	if err != nil {
		if display != "" {
			return nil, fmt.Errorf("%s: %w", display, err)
		}
		return nil, err
	}
	lines := strings.Split(string(text), "\n")
	var out []token
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		t.file = display
		first := i == 0 || toks[i-1].nl
		if !first || !includeKeys[t.s] {
			out = append(out, t)
			continue
		}
		// include PATTERN, alone on its line. The pattern is taken from
		// the line itself: the tokenizer splits words at braces.
		for !toks[i].nl && i+1 < len(toks) {
			i++
		}
		raw := lines[t.line-1]
		if c := strings.IndexAny(raw, "#!"); c >= 0 {
			raw = raw[:c]
		}
		rest := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(raw), t.s))
		what := t.s + " " + rest
		pattern, ok := includeArg(rest)
		if !ok {
			return nil, fmt.Errorf("%s: %s: an include takes one file name", where(display, t.line), what)
		}
		if !filepath.IsAbs(pattern) {
			pattern = filepath.Join(filepath.Dir(path), pattern)
		}
		var files []string
		for _, p := range expandBraces(pattern) {
			m, err := filepath.Glob(p)
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %w", where(display, t.line), what, err)
			}
			slices.Sort(m)
			for _, f := range m {
				if !slices.Contains(files, f) {
					files = append(files, f)
				}
			}
		}
		if len(files) == 0 {
			l.skipped = append(l.skipped, Skipped{File: display, Line: t.line, What: what, Why: "matches no file"})
			continue
		}
		for _, f := range files {
			sub, err := l.load(f, f, stack)
			if err != nil {
				return nil, err
			}
			out = append(out, sub...)
		}
	}
	return out, nil
}

// includeArg is the one file name of an include line's rest: a word or a
// double-quoted string.
func includeArg(rest string) (string, bool) {
	if strings.HasPrefix(rest, `"`) {
		end := strings.IndexByte(rest[1:], '"')
		if end < 0 || strings.TrimSpace(rest[end+2:]) != "" || end == 0 {
			return "", false
		}
		return rest[1 : end+1], true
	}
	f := strings.Fields(rest)
	if len(f) != 1 {
		return "", false
	}
	return f[0], true
}

// expandBraces expands csh-style {a,b} expressions, nested or not:
// "x{a,b{c,d}}y" is xay, xbcy, xbdy. Unbalanced braces are left as they
// are.
func expandBraces(s string) []string {
	open := strings.IndexByte(s, '{')
	if open < 0 {
		return []string{s}
	}
	depth, end := 0, -1
	var commas []int
	for i := open; i < len(s) && end < 0; i++ {
		switch s[i] {
		case '{':
			depth++
		case '}':
			depth--
			if depth == 0 {
				end = i
			}
		case ',':
			if depth == 1 {
				commas = append(commas, i)
			}
		}
	}
	if end < 0 {
		return []string{s}
	}
	var alts []string
	from := open + 1
	for _, c := range append(commas, end) {
		alts = append(alts, s[from:c])
		from = c + 1
	}
	var out []string
	for _, a := range alts {
		out = append(out, expandBraces(s[:open]+a+s[end+1:])...)
	}
	return out
}
