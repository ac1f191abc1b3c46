package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/director"
)

// startDirector runs one director in this process (memory dataplane, the
// real BGP speaker with a neighbour on loopback that never answers) with
// its API on a socket, and returns the socket.
func startDirector(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	cfg, err := configs.Parse([]byte(fmt.Sprintf(`node: {name: d1, state_dir: %s, dataplane: memory}
cluster: {bind: 127.0.0.1, insecure: true}
routing:
  mode: bgp
  bgp: {asn: 65001, router_id: 127.0.0.1, listen_port: -1, graceful_shutdown: 200ms, neighbors: [{address: 127.0.0.99, asn: 65000}]}
api: {socket: %s}
services:
  - name: dns
    vip: 192.0.2.2
    protocol: udp
    port: 53
    health: {type: none}
    backends: [{address: 10.9.9.9}]
`, filepath.Join(dir, "state"), sock)))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Cluster.Port = 0
	n, err := director.New(director.Options{Config: cfg, Build: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone, apiDone := make(chan error, 1), make(chan error, 1)
	go func() { runDone <- n.Run(ctx) }()
	go func() { apiDone <- n.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-runDone
		<-apiDone
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _, code := runCLI("status", "--socket", sock)
		if code == exitOK && strings.Contains(out, "192.0.2.2  announced") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("director not announcing: %d\n%s", code, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return sock
}

func TestClusterCommandsAgainstADirector(t *testing.T) {
	sock := startDirector(t)
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, %v: want 0600", fi.Mode().Perm(), err)
	}

	// The member list shows what the director published in gossip, which
	// its publisher does after the change (status reads the director
	// itself): wait for it rather than race it (CI saw "config none",
	// peers "-" a moment after status said announced).
	var out, errOut string
	var code int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out, errOut, code = runCLI("members", "--socket", sock)
		if code == exitOK && strings.Contains(out, "0/1") || time.Now().After(deadline) {
			break
		}
	}
	if code != exitOK || !strings.Contains(out, "d1*") || !strings.Contains(out, "active") || !strings.Contains(out, "0/1") {
		t.Errorf("members: %d %q\n%s", code, errOut, out)
	}
	out, _, code = runCLI("members", "--socket", sock, "-o", "json")
	if code != exitOK || !strings.Contains(out, `"role": "active"`) {
		t.Errorf("members -o json: %d\n%s", code, out)
	}
	if _, errOut, code = runCLI("members", "--socket", sock, "-o", "yaml"); code != exitUsage || !strings.Contains(errOut, "not table or json") {
		t.Errorf("-o yaml: %d %q", code, errOut)
	}
	out, _, code = runCLI("services", "--socket", sock)
	if code != exitOK || !strings.Contains(out, "10.9.9.9:53") {
		t.Errorf("services: %d\n%s", code, out)
	}

	// apply: diff shown, refused without --yes, applied with it.
	file := filepath.Join(t.TempDir(), "services.yaml")
	os.WriteFile(file, []byte(`services:
  - name: dns
    vip: 192.0.2.2
    protocol: udp
    port: 53
    health: {type: none}
    backends: [{address: 10.9.9.9}, {address: 10.9.9.10}]
`), 0o644)
	out, _, code = runCLI("apply", "-f", file, "--socket", sock)
	if code != exitFailed || !strings.Contains(out, "service dns: changed") || !strings.Contains(out, `+      "address": "10.9.9.10",`) {
		t.Errorf("apply without an answer: %d\n%s", code, out)
	}
	out, _, code = runCLI("apply", "-f", file, "--socket", sock, "--yes")
	if code != exitOK || !strings.Contains(out, "rollout v2/") || !strings.Contains(out, "stage active: d1 now runs the new services") || !regexp.MustCompile(`rolled out: every director runs v\d+/`).MatchString(out) {
		t.Errorf("apply --yes (staged): %d\n%s", code, out)
	}
	out, _, code = runCLI("apply", "-f", file, "--socket", sock, "--yes")
	if code != exitOK || !strings.Contains(out, "no change") {
		t.Errorf("apply again: %d\n%s", code, out)
	}
	// --now: at once, no stages.
	os.WriteFile(file, []byte(`services:
  - name: dns
    vip: 192.0.2.2
    protocol: udp
    port: 53
    health: {type: none}
    backends: [{address: 10.9.9.9}, {address: 10.9.9.10}, {address: 10.9.9.11}]
`), 0o644)
	out, _, code = runCLI("apply", "-f", file, "--socket", sock, "--yes", "--now")
	if code != exitOK || !strings.Contains(out, "applied: every director runs v") || strings.Contains(out, "stage") {
		t.Errorf("apply --now: %d\n%s", code, out)
	}
	// An invalid file changes nothing and names the problem.
	os.WriteFile(file, []byte("services:\n  - name: dns\n    vip: 192.0.2.2\n    port: 0\n    backends: []\n"), 0o644)
	_, errOut, code = runCLI("apply", "-f", file, "--socket", sock, "--yes")
	if code != exitFailed || !strings.Contains(errOut, "services[0]") {
		t.Errorf("invalid apply: %d %q", code, errOut)
	}

	// drain / undrain.
	if out, _, code = runCLI("drain", "--reason", "test", "--socket", sock); code != exitOK {
		t.Errorf("drain: %d %s", code, out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _, code = runCLI("status", "--socket", sock)
		if code == exitFailed && regexp.MustCompile(`(?m)^Drained:\s+yes`).MatchString(out) && strings.Contains(out, "192.0.2.2  withdrawn") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not withdrawn after drain: %d\n%s", code, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, _, code = runCLI("undrain", "--socket", sock); code != exitOK {
		t.Errorf("undrain: %d", code)
	}
}

func TestUnreachableDaemon(t *testing.T) {
	_, errOut, code := runCLI("members", "--socket", filepath.Join(t.TempDir(), "nothing.sock"))
	if code != exitUnavailable || !strings.Contains(errOut, "cannot reach anycastd") {
		t.Errorf("%d %q", code, errOut)
	}
	_, errOut, code = runCLI("status", "--server", "http://example.invalid")
	if code != exitUsage || !strings.Contains(errOut, "https://") {
		t.Errorf("%d %q", code, errOut)
	}
}
