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

// TestDeployFailureCleansUp: a node whose exec fails makes Deploy return
// that error and remove what it built, instead of panicking on the nil lab
// its error return had already set (it did, and left the namespaces).
func TestDeployFailureCleansUp(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	topo, err := Parse([]byte(`name: clabfail
topology:
  nodes:
    a: {kind: linux}
    b: {kind: linux, exec: ["exit 3"]}
  links:
    - endpoints: ["a:eth1", "b:eth1"]
`))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Destroy(topo) })
	lab, err := Deploy(topo)
	if err == nil || lab != nil || !strings.Contains(err.Error(), `node b exec[0] "exit 3"`) {
		t.Fatalf("Deploy: lab %v, error %v; want no lab and node b's exec error", lab, err)
	}
	for _, n := range []string{"a", "b"} {
		if _, err := os.Stat(filepath.Join("/run/netns", topo.Netns(n))); !os.IsNotExist(err) {
			t.Errorf("namespace %s left behind (%v)", topo.Netns(n), err)
		}
	}
}
