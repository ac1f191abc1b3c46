// Package clab builds containerlab topologies (*.clab.yml) out of network
// namespaces and veth pairs, without Docker, so that the same topology files
// a containerlab user deploys run as root on any Linux box.
//
// Each node gets a network namespace named clab-LAB-NODE (containerlab's
// container name) and a private mount namespace where its binds are
// mounted at their container paths. Links become veth pairs named as in
// the file. A node's exec commands run inside both namespaces, in order.
// Images are not used: the host's programs run in the node.
//
// Supported: name; topology.nodes.*.{kind: linux, image, exec, binds, env};
// topology.links[].endpoints. Anything else is an error, not ignored.
package clab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Topology is a parsed .clab.yml file.
type Topology struct {
	Name     string `yaml:"name"`
	Topology struct {
		Nodes map[string]*Node `yaml:"nodes"`
		Links []Link           `yaml:"links"`
	} `yaml:"topology"`

	// Dir is the directory of the file; binds are relative to it.
	Dir string `yaml:"-"`
}

// Node is one node of a topology.
type Node struct {
	Kind  string            `yaml:"kind"`
	Image string            `yaml:"image"`
	Exec  []string          `yaml:"exec"`
	Binds []string          `yaml:"binds"`
	Env   map[string]string `yaml:"env"`
}

// Link connects two node interfaces.
type Link struct {
	Endpoints []string `yaml:"endpoints"`
}

// Endpoint is one end of a link: a node and an interface.
type Endpoint struct{ Node, Iface string }

// Endpoints parses the link's two "node:iface" ends.
func (l Link) Ends() ([2]Endpoint, error) {
	var out [2]Endpoint
	if len(l.Endpoints) != 2 {
		return out, fmt.Errorf("a link has two endpoints, not %d", len(l.Endpoints))
	}
	for i, e := range l.Endpoints {
		n, ifc, ok := strings.Cut(e, ":")
		if !ok || n == "" || ifc == "" {
			return out, fmt.Errorf("endpoint %q is not node:interface", e)
		}
		out[i] = Endpoint{n, ifc}
	}
	return out, nil
}

var (
	labNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,30}$`)
	ifaceRE   = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)
)

// Load reads and checks a topology file.
func Load(path string) (*Topology, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	t, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	t.Dir, _ = filepath.Abs(filepath.Dir(path))
	return t, nil
}

// Parse reads a topology document. Fields this runner does not implement
// are errors.
func Parse(data []byte) (*Topology, error) {
	var t Topology
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&t); err != nil {
		return nil, fmt.Errorf("not a topology this runner supports: %w", err)
	}
	var errs []error
	if !labNameRE.MatchString(t.Name) {
		errs = append(errs, fmt.Errorf("name %q: lower-case letters, digits and '-', at most 31", t.Name))
	}
	if len(t.Topology.Nodes) == 0 {
		errs = append(errs, errors.New("topology.nodes: no nodes"))
	}
	for name, n := range t.Topology.Nodes {
		if n == nil {
			errs = append(errs, fmt.Errorf("node %s: empty", name))
			continue
		}
		if !labNameRE.MatchString(name) {
			errs = append(errs, fmt.Errorf("node %q: lower-case letters, digits and '-'", name))
		}
		if n.Kind != "linux" {
			errs = append(errs, fmt.Errorf("node %s: kind %q is not supported (linux)", name, n.Kind))
		}
		for _, b := range n.Binds {
			if _, _, _, err := parseBind(b); err != nil {
				errs = append(errs, fmt.Errorf("node %s: %w", name, err))
			}
		}
	}
	used := map[Endpoint]bool{}
	for i, l := range t.Topology.Links {
		ends, err := l.Ends()
		if err != nil {
			errs = append(errs, fmt.Errorf("links[%d]: %w", i, err))
			continue
		}
		for _, e := range ends {
			if _, ok := t.Topology.Nodes[e.Node]; !ok {
				errs = append(errs, fmt.Errorf("links[%d]: no node %q", i, e.Node))
			}
			if !ifaceRE.MatchString(e.Iface) || e.Iface == "lo" {
				errs = append(errs, fmt.Errorf("links[%d]: %q is not a usable interface name", i, e.Iface))
			}
			if used[e] {
				errs = append(errs, fmt.Errorf("links[%d]: %s:%s is used twice", i, e.Node, e.Iface))
			}
			used[e] = true
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &t, nil
}

// parseBind splits "host:container[:ro|rw]".
func parseBind(b string) (host, container string, ro bool, err error) {
	parts := strings.Split(b, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || !filepath.IsAbs(parts[1]) {
		return "", "", false, fmt.Errorf("bind %q is not host:/container/path[:ro]", b)
	}
	if len(parts) == 3 {
		switch parts[2] {
		case "ro":
			ro = true
		case "rw":
		default:
			return "", "", false, fmt.Errorf("bind %q: mode %q is not ro or rw", b, parts[2])
		}
	}
	return parts[0], parts[1], ro, nil
}

// NodeNames returns the node names, sorted.
func (t *Topology) NodeNames() []string {
	names := make([]string, 0, len(t.Topology.Nodes))
	for n := range t.Topology.Nodes {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Netns is the network namespace of a node.
func (t *Topology) Netns(node string) string { return "clab-" + t.Name + "-" + node }

// runtimeDir holds the mount namespace files of the labs.
const runtimeDir = "/run/anycastd-lab"

func (t *Topology) mntFile(node string) string {
	return filepath.Join(runtimeDir, t.Name, node+".mnt")
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Lab is a deployed topology.
type Lab struct {
	Topo    *Topology
	created []string // host paths made for bind targets, to remove
	procs   []*Process
}

// Deploy builds the topology. Whatever a previous, interrupted run of the
// same lab left is destroyed first. On failure everything built so far is
// removed again.
func Deploy(t *Topology) (lab *Lab, err error) {
	Destroy(t)
	// built, not the named result: each "return nil, err" below sets that
	// to nil before this cleanup runs.
	built := &Lab{Topo: t}
	lab = built
	defer func() {
		if err != nil {
			built.Destroy()
			lab = nil
		}
	}()
	if err := ensureRuntimeDir(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(runtimeDir, t.Name), 0o755); err != nil {
		return nil, err
	}
	for _, name := range t.NodeNames() {
		if err := built.addNode(name); err != nil {
			return nil, fmt.Errorf("node %s: %w", name, err)
		}
	}
	for i, l := range t.Topology.Links {
		ends, _ := l.Ends()
		a, b := ends[0], ends[1]
		if err := run("ip", "link", "add", a.Iface, "netns", t.Netns(a.Node), "type", "veth",
			"peer", "name", b.Iface, "netns", t.Netns(b.Node)); err != nil {
			return nil, fmt.Errorf("links[%d]: %w", i, err)
		}
		for _, e := range ends {
			if err := run("ip", "-n", t.Netns(e.Node), "link", "set", e.Iface, "up"); err != nil {
				return nil, fmt.Errorf("links[%d]: %w", i, err)
			}
		}
	}
	for _, name := range t.NodeNames() {
		for i, cmd := range t.Topology.Nodes[name].Exec {
			if out, err := built.Exec(name, cmd); err != nil {
				return nil, fmt.Errorf("node %s exec[%d] %q: %v\n%s", name, i, cmd, err, out)
			}
		}
	}
	return lab, nil
}

// ensureRuntimeDir makes runtimeDir a private mount point, which binding
// mount namespace files into it requires.
func ensureRuntimeDir() error {
	if err := os.MkdirAll(runtimeDir, 0o755); err != nil {
		return err
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if !bytes.Contains(mounts, []byte(" "+runtimeDir+" ")) {
		if err := run("mount", "--bind", runtimeDir, runtimeDir); err != nil {
			return err
		}
	}
	return run("mount", "--make-private", runtimeDir)
}

func (l *Lab) addNode(name string) error {
	t := l.Topo
	n := t.Topology.Nodes[name]
	if err := run("ip", "netns", "add", t.Netns(name)); err != nil {
		return err
	}
	if err := run("ip", "-n", t.Netns(name), "link", "set", "lo", "up"); err != nil {
		return err
	}
	mnt := t.mntFile(name)
	if err := os.WriteFile(mnt, nil, 0o600); err != nil {
		return err
	}
	if err := run("unshare", "--mount="+mnt, "--propagation", "private", "true"); err != nil {
		return err
	}
	for _, b := range n.Binds {
		host, container, ro, _ := parseBind(b)
		if !filepath.IsAbs(host) {
			host = filepath.Join(t.Dir, host)
		}
		st, err := os.Stat(host)
		if err != nil {
			return fmt.Errorf("bind %s: %w", b, err)
		}
		if err := l.makeTarget(container, st.IsDir()); err != nil {
			return fmt.Errorf("bind %s: %w", b, err)
		}
		if err := run("nsenter", "--mount="+mnt, "--", "mount", "--bind", host, container); err != nil {
			return err
		}
		if ro {
			if err := run("nsenter", "--mount="+mnt, "--", "mount", "-o", "remount,bind,ro", container); err != nil {
				return err
			}
		}
	}
	return nil
}

// makeTarget creates a bind's mount point on the host if it is missing
// (nodes share the host's file system below their binds), remembering
// what it made so Destroy removes it.
func (l *Lab) makeTarget(path string, dir bool) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	// Create missing parents one by one, top down, recording each.
	var missing []string
	for p := filepath.Dir(path); p != "/"; p = filepath.Dir(p) {
		if _, err := os.Stat(p); err == nil {
			break
		}
		missing = append([]string{p}, missing...)
	}
	for _, p := range missing {
		if err := os.Mkdir(p, 0o755); err != nil {
			return err
		}
		l.created = append(l.created, p)
	}
	if dir {
		if err := os.Mkdir(path, 0o755); err != nil {
			return err
		}
	} else if err := os.WriteFile(path, nil, 0o644); err != nil {
		return err
	}
	l.created = append(l.created, path)
	return nil
}

// Exec runs a shell command in a node (network and mount namespace, with
// the node's env) and returns its combined output.
func (l *Lab) Exec(node, cmd string) (string, error) {
	c := l.Command(node, "sh", "-c", cmd)
	out, err := c.CombinedOutput()
	return string(out), err
}

// Command prepares a command to run inside a node.
func (l *Lab) Command(node string, name string, args ...string) *exec.Cmd {
	t := l.Topo
	full := []string{"--net=/run/netns/" + t.Netns(node), "--mount=" + t.mntFile(node), "--", "env"}
	if n := t.Topology.Nodes[node]; n != nil {
		keys := make([]string, 0, len(n.Env))
		for k := range n.Env {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			full = append(full, k+"="+n.Env[k])
		}
	}
	full = append(full, name)
	full = append(full, args...)
	return exec.Command("nsenter", full...)
}

// Destroy kills every process in the lab's nodes and removes the nodes,
// links, mount namespaces and the bind targets it created. Idempotent.
func (l *Lab) Destroy() error {
	for _, p := range l.procs {
		p.Kill()
	}
	Destroy(l.Topo)
	var errs []error
	for _, p := range slices.Backward(l.created) {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	l.created = nil
	// BIRD killed with its node leaves its control socket and pid file;
	// the labs name them /run/bird-LAB-NODE.{ctl,pid}.
	for _, ext := range []string{"ctl", "pid"} {
		matches, _ := filepath.Glob(fmt.Sprintf("/run/bird-%s-*.%s", l.Topo.Name, ext))
		for _, m := range matches {
			os.Remove(m)
		}
	}
	return errors.Join(errs...)
}

// Destroy removes whatever a lab of this topology left: processes,
// namespaces (with their veths), mount namespace files.
func Destroy(t *Topology) {
	for _, name := range t.NodeNames() {
		ns := t.Netns(name)
		if pids, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
			for _, p := range strings.Fields(string(pids)) {
				exec.Command("kill", "-9", p).Run()
			}
		}
		exec.Command("ip", "netns", "del", ns).Run()
		mnt := t.mntFile(name)
		exec.Command("umount", mnt).Run()
		os.Remove(mnt)
	}
	os.Remove(filepath.Join(runtimeDir, t.Name))
	if entries, err := os.ReadDir(runtimeDir); err == nil && len(entries) == 0 {
		exec.Command("umount", runtimeDir).Run()
	}
}
