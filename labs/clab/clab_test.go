package clab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseErrors(t *testing.T) {
	const good = `name: t1
topology:
  nodes:
    a: {kind: linux, image: x, binds: ["conf/a.conf:/etc/a.conf:ro"]}
    b: {kind: linux}
  links:
    - endpoints: ["a:eth1", "b:eth1"]
`
	if _, err := Parse([]byte(good)); err != nil {
		t.Fatalf("good topology: %v", err)
	}
	for _, tc := range []struct {
		name, doc, want string
	}{
		{"unknown field", "name: t1\nmgmt: {network: x}\ntopology: {nodes: {a: {kind: linux}}}\n", "mgmt"},
		{"unknown node field", "name: t1\ntopology: {nodes: {a: {kind: linux, ports: [80]}}}\n", "ports"},
		{"bad name", "name: T_1\ntopology: {nodes: {a: {kind: linux}}}\n", `name "T_1"`},
		{"no nodes", "name: t1\ntopology: {}\n", "no nodes"},
		{"kind", "name: t1\ntopology: {nodes: {a: {kind: ceos}}}\n", `kind "ceos"`},
		{"empty node", "name: t1\ntopology: {nodes: {a: }}\n", "node a: empty"},
		{"bind", "name: t1\ntopology: {nodes: {a: {kind: linux, binds: [relative/only]}}}\n", "bind"},
		{"bind mode", "name: t1\ntopology: {nodes: {a: {kind: linux, binds: [\"x:/y:z\"]}}}\n", `mode "z"`},
		{"one endpoint", "name: t1\ntopology: {nodes: {a: {kind: linux}}, links: [{endpoints: [\"a:eth1\"]}]}\n", "two endpoints"},
		{"endpoint form", "name: t1\ntopology: {nodes: {a: {kind: linux}, b: {kind: linux}}, links: [{endpoints: [\"a\", \"b:eth1\"]}]}\n", "node:interface"},
		{"missing node", "name: t1\ntopology: {nodes: {a: {kind: linux}}, links: [{endpoints: [\"a:eth1\", \"c:eth1\"]}]}\n", `no node "c"`},
		{"iface too long", "name: t1\ntopology: {nodes: {a: {kind: linux}, b: {kind: linux}}, links: [{endpoints: [\"a:eth1234567890123\", \"b:eth1\"]}]}\n", "usable interface"},
		{"lo", "name: t1\ntopology: {nodes: {a: {kind: linux}, b: {kind: linux}}, links: [{endpoints: [\"a:lo\", \"b:eth1\"]}]}\n", "usable interface"},
		{"used twice", "name: t1\ntopology: {nodes: {a: {kind: linux}, b: {kind: linux}, c: {kind: linux}}, links: [{endpoints: [\"a:eth1\", \"b:eth1\"]}, {endpoints: [\"a:eth1\", \"c:eth1\"]}]}\n", "used twice"},
	} {
		_, err := Parse([]byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}

// TestLabFilesParse keeps every topology in labs/ loadable, with its binds
// present.
func TestLabFilesParse(t *testing.T) {
	files, _ := filepath.Glob("../*.clab.yml")
	if len(files) == 0 {
		t.Fatal("no labs/*.clab.yml")
	}
	for _, f := range files {
		topo, err := Load(f)
		if err != nil {
			t.Error(err)
			continue
		}
		for _, name := range topo.NodeNames() {
			for _, b := range topo.Topology.Nodes[name].Binds {
				host, _, _, _ := parseBind(b)
				if !filepath.IsAbs(host) {
					host = filepath.Join(topo.Dir, host)
				}
				if _, err := os.Stat(host); err != nil {
					t.Errorf("%s: node %s: %v", f, name, err)
				}
			}
		}
	}
}
