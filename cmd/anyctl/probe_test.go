package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestProbeCommand(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			fmt.Fprintln(w, "ok")
			return
		}
		http.Error(w, "maintenance", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()

	cases := []struct {
		name string
		args []string
		code int
		out  string // regexp the output must match
		err  string // part of stderr
	}{
		{"http up", []string{"probe", "--type", "http", "--target", addr, "--path", "/healthz"}, exitOK,
			`^http 127\.0\.0\.1:\d+ GET /healthz: UP in [0-9.]+(µs|ms|s) \(HTTP 200\)\n$`, ""},
		{"http wrong status", []string{"probe", "--type", "http", "--target", addr, "--path", "/x"}, exitFailed,
			`DOWN in .*: status 503 is not one of 200-299\n$`, ""},
		{"tcp refused", []string{"probe", "--target", closed}, exitFailed, `^tcp 127\.0\.0\.1:\d+: DOWN in .*connection refused\n$`, ""},
		{"exec output", []string{"probe", "--type", "exec", "--target", addr, "--", "sh", "-c", "echo degraded; exit 2"}, exitFailed,
			`exec 127\.0\.0\.1:\d+ sh -c echo degraded; exit 2: DOWN in .*: exit status 2\n  \| degraded\n$`, ""},
		{"count summary", []string{"probe", "--type", "http", "--target", addr, "--path", "/healthz", "--count", "3", "--interval", "1ms"}, exitOK,
			`http 127\.0\.0\.1:\d+: 3/3 up, latency min .* median .* max .*\n$`, ""},
		{"bad status flag", []string{"probe", "--type", "http", "--target", addr, "--status", "2xx"}, exitUsage,
			`^$`, `--status[0]: "2xx" is not a status code or range`},
		{"flag of another type", []string{"probe", "--type", "tcp", "--target", addr, "--path", "/x"}, exitUsage,
			`^$`, "--path: only used by http/https checks, not tcp"},
		{"no target", []string{"probe", "--type", "tcp"}, exitUsage, `^$`, "--target ADDR:PORT is required"},
		{"bad target", []string{"probe", "--target", "localhost"}, exitUsage, `^$`, `--target "localhost": not ADDR:PORT`},
		{"exec without command", []string{"probe", "--type", "exec", "--target", addr}, exitUsage, `^$`, "--command: required"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runCLI(tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, out, errOut)
			}
			if !regexp.MustCompile(tc.out).MatchString(out) {
				t.Errorf("stdout %q does not match %q", out, tc.out)
			}
			if !strings.Contains(errOut, tc.err) {
				t.Errorf("stderr %q lacks %q", errOut, tc.err)
			}
		})
	}
}

func TestProbeServiceFromConfig(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer up.Close()
	upPort := up.Listener.Addr().(*net.TCPAddr).Port
	cfg := fmt.Sprintf(`node: {name: t}
cluster: {insecure: true}
routing: {mode: kernel, kernel: {table: 100}}
services:
  - name: web
    vip: 198.51.100.10
    port: %d
    backends: [{address: 127.0.0.1}, {address: 127.0.0.2}]
    health: {type: http, path: /, timeout: 500ms}
`, upPort)
	path := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(path, []byte(cfg), 0o600)

	out, _, code := runCLI("probe", "--config", path, "--service", "web", "-o", "json")
	var runs []probeRun
	if err := json.Unmarshal([]byte(out), &runs); err != nil {
		t.Fatalf("json: %v\n%s", err, out)
	}
	// 127.0.0.2 has no server on that port.
	if code != exitFailed || len(runs) != 2 || !runs[0].OK || runs[1].OK || runs[0].Service != "web" {
		t.Errorf("exit %d runs %+v", code, runs)
	}
	out, _, code = runCLI("probe", "--config", path, "--service", "web", "--backend", "127.0.0.1")
	if code != exitOK || strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "web: http 127.0.0.1:") {
		t.Errorf("one backend: exit %d\n%s", code, out)
	}
	if _, errOut, code := runCLI("probe", "--config", path, "--service", "nope"); code != exitUsage || !strings.Contains(errOut, `no service "nope"`) {
		t.Errorf("unknown service: %d %s", code, errOut)
	}
}
