package configs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	yaml "go.yaml.in/yaml/v3"
)

// maxDepth is how deeply a config's mappings and lists may nest: the
// deepest real path is a handful of levels. Deeper input is refused
// before viper sees it (it takes time cubic in the depth).
const maxDepth = 32

// checkYAML looks at the document's shape before viper reads it, for what
// viper would accept silently or slowly: more than one document, nesting
// deeper than maxDepth, a key given twice, a key with a dot (viper reads `health.interval:`
// as a path), keys of one mapping that differ only by case (viper folds
// case: `name` and `Name` would merge). Each problem has its line.
func checkYAML(data []byte) []*FieldError {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // empty: viper and validation say what is missing
		}
		return []*FieldError{{Msg: fmt.Sprintf("not a valid YAML document: %v", err)}}
	}
	var out []*FieldError
	var second yaml.Node
	if err := dec.Decode(&second); err == nil {
		out = append(out, &FieldError{Msg: fmt.Sprintf("line %d: a second YAML document: a config is one document (remove the ---)", second.Line)})
	} else if !errors.Is(err, io.EOF) {
		out = append(out, &FieldError{Msg: fmt.Sprintf("after the first YAML document: %v", err)})
	}
	var walk func(n *yaml.Node, path string, depth int) bool
	walk = func(n *yaml.Node, path string, depth int) bool {
		if depth > maxDepth {
			short := path
			if parts := strings.SplitN(path, ".", 4); len(parts) == 4 {
				short = strings.Join(parts[:3], ".") + "..."
			}
			out = append(out, &FieldError{Path: short, Msg: fmt.Sprintf("line %d: nested deeper than %d levels", n.Line, maxDepth)})
			return false
		}
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				if !walk(c, path, depth) {
					return false
				}
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				if !walk(c, fmt.Sprintf("%s[%d]", path, i), depth+1) {
					return false
				}
			}
		case yaml.MappingNode:
			seen := map[string]string{}
			lines := map[string]int{}
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				key := k.Value
				kp := join(path, key)
				if k.Kind == yaml.ScalarNode && k.Tag != "!!merge" {
					switch {
					case lines[key] != 0:
						out = append(out, &FieldError{Path: kp, Msg: fmt.Sprintf("line %d: given twice (first at line %d)", k.Line, lines[key])})
					case strings.Contains(key, "."):
						out = append(out, &FieldError{Path: kp, Msg: fmt.Sprintf("line %d: a key with a dot: write it nested (%s)", k.Line, nested(key))})
					case seen[strings.ToLower(key)] != "" && seen[strings.ToLower(key)] != key:
						out = append(out, &FieldError{Path: kp, Msg: fmt.Sprintf("line %d: %q and %q differ only by case: keys are lower case, and one would overwrite the other", k.Line, seen[strings.ToLower(key)], key)})
					}
					if seen[strings.ToLower(key)] == "" {
						seen[strings.ToLower(key)] = key
					}
					if lines[key] == 0 {
						lines[key] = k.Line
					}
				}
				if !walk(v, kp, depth+1) {
					return false
				}
			}
		case yaml.AliasNode:
			// Resolved by the parser, which bounds aliasing itself.
		}
		return true
	}
	walk(&root, "", 0)
	return out
}

// nested shows a dotted key as the nesting it stands for.
func nested(key string) string {
	parts := strings.Split(key, ".")
	return strings.Join(parts, ": {") + ": ..." + strings.Repeat("}", len(parts)-1)
}
