// Package keepalived reads keepalived.conf (the virtual_server, its groups
// and vrrp_instance blocks) and translates it into an anycastd config.
// What it cannot translate is listed with its line number, never dropped
// silently.
package keepalived

import (
	"fmt"
	"strings"
)

// Node is one statement of keepalived.conf: a keyword, its arguments, and
// a block of statements if it has one.
type Node struct {
	Key  string
	Args []string
	Line int
	// File is the included file the statement is in ("" for the file
	// given to ParseFile or for Parse's text).
	File     string
	Children []*Node
	Block    bool
}

// Parse reads a keepalived.conf text into its statements.
func Parse(text string) ([]*Node, error) {
	toks, err := tokenize(text)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks}
	nodes, err := p.block(false)
	if err != nil {
		return nil, err
	}
	return nodes, nil
}

type token struct {
	s    string
	line int
	file string // "" for the main file
	nl   bool   // a newline follows
}

// where is "line N" or "FILE:line N".
func where(file string, line int) string {
	if file == "" {
		return fmt.Sprintf("line %d", line)
	}
	return fmt.Sprintf("%s:line %d", file, line)
}

// tokenize splits into words, "{" and "}", keeping line numbers; # and !
// start comments; double quotes group words.
func tokenize(text string) ([]token, error) {
	var out []token
	for i, line := range strings.Split(text, "\n") {
		ln := i + 1
		var cur strings.Builder
		inQuote, have := false, false
		flush := func() {
			if have {
				out = append(out, token{s: cur.String(), line: ln})
				cur.Reset()
				have = false
			}
		}
	chars:
		for _, r := range line {
			switch {
			case inQuote && r == '"':
				inQuote = false
			case inQuote:
				cur.WriteRune(r)
			case r == '"':
				inQuote, have = true, true
			case r == '#' || r == '!':
				break chars
			case r == '{' || r == '}':
				flush()
				out = append(out, token{s: string(r), line: ln})
			case r == ' ' || r == '\t' || r == '\r':
				flush()
			default:
				cur.WriteRune(r)
				have = true
			}
		}
		if inQuote {
			return nil, fmt.Errorf("line %d: unterminated quote", ln)
		}
		flush()
		if len(out) > 0 {
			out[len(out)-1].nl = true
		}
	}
	return out, nil
}

type parser struct {
	toks []token
	i    int
}

func (p *parser) block(inner bool) ([]*Node, error) {
	var nodes []*Node
	for p.i < len(p.toks) {
		t := p.toks[p.i]
		if t.s == "}" {
			if !inner {
				return nil, fmt.Errorf("%s: unexpected }", where(t.file, t.line))
			}
			p.i++
			return nodes, nil
		}
		if t.s == "{" {
			// A bare block (keepalived allows "{" on its own line after
			// the keyword): attach it to the previous statement.
			if len(nodes) == 0 {
				return nil, fmt.Errorf("%s: { without a keyword", where(t.file, t.line))
			}
			p.i++
			kids, err := p.block(true)
			if err != nil {
				return nil, err
			}
			last := nodes[len(nodes)-1]
			last.Children, last.Block = append(last.Children, kids...), true
			continue
		}
		n := &Node{Key: t.s, Line: t.line, File: t.file}
		p.i++
		for !t.nl && p.i < len(p.toks) {
			t = p.toks[p.i]
			if t.s == "}" {
				break
			}
			if t.s == "{" {
				p.i++
				kids, err := p.block(true)
				if err != nil {
					return nil, err
				}
				n.Children, n.Block = kids, true
				break
			}
			n.Args = append(n.Args, t.s)
			p.i++
		}
		nodes = append(nodes, n)
	}
	if inner {
		return nil, fmt.Errorf("unexpected end of file: a { is not closed")
	}
	return nodes, nil
}
