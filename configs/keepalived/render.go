package keepalived

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// durationKeys are the config keys that hold durations: written as "5s",
// not as nanoseconds.
var durationKeys = map[string]bool{"interval": true, "timeout": true, "drain_timeout": true, "advert_interval": true,
	"preempt_delay": true, "ttl": true}

// keepZero are keys whose zero value means something (a backend at weight
// 0 takes no new connections; preempt defaults to true).
var keepZero = map[string]bool{"weight": true, "preempt": true}

// Render writes the translation as an anycastd config document, with a
// header that says where it came from and what to review, and the list of
// what was not translated as comments.
func Render(res Result, source string) (string, error) {
	doc := map[string]any{}
	var order []string
	routing := map[string]any{}
	if res.VRRP != nil {
		routing["mode"] = "vrrp"
		routing["vrrp"] = res.VRRP
	} else {
		// keepalived without VRRP leaves routing to the network; kernel
		// mode is the nearest: an external routing daemon announces.
		routing["mode"] = "kernel"
		routing["kernel"] = map[string]any{"table": 100}
	}
	doc["cluster"] = map[string]any{"insecure": true}
	doc["routing"] = routing
	doc["services"] = res.Services
	order = []string{"cluster", "routing", "services"}

	var out bytes.Buffer
	fmt.Fprintf(&out, "# anycastd config imported from %s by anyctl import keepalived.\n", source)
	fmt.Fprintf(&out, "# Review it before use: node.name defaults to the host name; replace\n")
	fmt.Fprintf(&out, "# cluster.insecure with keys from `anyctl keygen`; check routing.\n")
	if len(res.Skipped) > 0 {
		fmt.Fprintf(&out, "#\n# Not translated (%d):\n", len(res.Skipped))
		for _, s := range res.Skipped {
			fmt.Fprintf(&out, "#   %s\n", s)
		}
	}
	for _, k := range order {
		j, err := json.Marshal(map[string]any{k: doc[k]})
		if err != nil {
			return "", err
		}
		var n yaml.Node
		if err := yaml.Unmarshal(j, &n); err != nil {
			return "", err
		}
		tidy(&n, "")
		style(&n)
		b, err := yaml.Marshal(&n)
		if err != nil {
			return "", err
		}
		out.WriteString("\n")
		out.Write(b)
	}
	return out.String(), nil
}

// tidy drops zero values (so that defaults apply) and turns nanosecond
// durations into duration strings.
func tidy(n *yaml.Node, key string) bool {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			tidy(c, "")
		}
		return true
	case yaml.MappingNode:
		var keep []*yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if tidy(v, k.Value) {
				keep = append(keep, k, v)
			}
		}
		n.Content = keep
		return len(keep) > 0
	case yaml.SequenceNode:
		var keep []*yaml.Node
		for _, c := range n.Content {
			if tidy(c, "") || c.Kind == yaml.MappingNode {
				keep = append(keep, c)
			}
		}
		n.Content = keep
		return len(keep) > 0
	case yaml.ScalarNode:
		if durationKeys[key] && n.Tag == "!!int" {
			ns, _ := strconv.ParseInt(n.Value, 10, 64)
			if ns == 0 {
				return false
			}
			n.Value, n.Tag = time.Duration(ns).String(), "!!str"
			return true
		}
		if keepZero[key] {
			return true
		}
		switch n.Tag {
		case "!!int", "!!float":
			return n.Value != "0"
		case "!!bool":
			return n.Value == "true"
		case "!!str":
			return n.Value != ""
		case "!!null":
			return false
		}
	}
	return true
}

// style prints short lists of scalars inline, and everything else as
// blocks (JSON's flow style is the default after decoding JSON).
func style(n *yaml.Node) {
	n.Style = 0
	if n.Kind == yaml.SequenceNode {
		scalars := true
		for _, c := range n.Content {
			scalars = scalars && c.Kind == yaml.ScalarNode
		}
		if scalars {
			n.Style = yaml.FlowStyle
		}
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!str" && strings.ContainsAny(n.Value, ":#") {
		n.Style = yaml.DoubleQuotedStyle
	}
	for _, c := range n.Content {
		style(c)
	}
}
