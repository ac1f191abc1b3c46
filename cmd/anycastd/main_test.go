package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckConfig(t *testing.T) {
	noEnv := func(string) (string, bool) { return "", false }
	cases := []struct {
		name   string
		args   []string
		env    map[string]string
		code   int
		stdout string
	}{
		{"valid", []string{"--check-config", "-c", "../../configs/examples/ecmp.yaml"}, nil, 0,
			"ok ../../configs/examples/ecmp.yaml\n"},
		{"invalid", []string{"--check-config", "-c", "../../configs/testdata/many-mistakes.yaml"}, nil, 1,
			"../../configs/testdata/many-mistakes.yaml: 11 errors\n"},
		{"flag breaks it", []string{"--check-config", "-c", "../../configs/examples/single.yaml", "--node-name", "bad name"}, nil, 1,
			"../../configs/examples/single.yaml: 1 error\n"},
		{"env breaks it", []string{"--check-config", "-c", "../../configs/examples/single.yaml"},
			map[string]string{"ANYCASTD_CLUSTER_PORT": "99999"}, 1, "../../configs/examples/single.yaml: 1 error\n"},
		{"flag beats env", []string{"--check-config", "-c", "../../configs/examples/single.yaml", "--gossip-port", "7000"},
			map[string]string{"ANYCASTD_CLUSTER_PORT": "99999"}, 0, "ok ../../configs/examples/single.yaml\n"},
		{"missing file", []string{"--check-config", "-c", "/nonexistent/anycastd.yaml"}, nil, 1,
			"/nonexistent/anycastd.yaml: 1 error\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := noEnv
			if tc.env != nil {
				env = func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }
			}
			var out, errOut bytes.Buffer
			code := run(tc.args, &out, &errOut, env)
			if code != tc.code {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, out.String(), errOut.String())
			}
			if !strings.HasPrefix(out.String(), tc.stdout) {
				t.Errorf("stdout starts %q, want %q", out.String(), tc.stdout)
			}
		})
	}
}

func TestInvalidConfigDoesNotStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(path, []byte("node: {name: x}\nservices: [{name: a}]\n"), 0o600)
	var out, errOut bytes.Buffer
	if code := run([]string{"-c", path}, &out, &errOut, func(string) (string, bool) { return "", false }); code == 0 {
		t.Fatal("started with an invalid config")
	}
	if !strings.Contains(errOut.String(), "services[0].vip: required") || !strings.Contains(errOut.String(), "not starting") {
		t.Errorf("stderr should list the problems and say it is not starting:\n%s", errOut.String())
	}
}

func TestRestoreHost(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	args := []string{"--restore-host", "-c", "../../configs/examples/single.yaml", "--state-dir", dir, "--socket", sock}
	noEnv := func(string) (string, bool) { return "", false }
	journal := filepath.Join(dir, "host.json")
	// A journal of an address on an interface that is gone: restoring it
	// touches nothing on this machine.
	os.WriteFile(journal, []byte(`[{"kind":"address","name":"acd-gone0","addr":"192.0.2.1/32"}]`), 0o600)

	// While the daemon runs (its API socket answers), nothing is done.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := run(args, &out, &errOut, noEnv); code == 0 || !strings.Contains(errOut.String(), "anycastd is running") {
		t.Errorf("restore with the daemon running: exit %d, stderr %q", code, errOut.String())
	}
	if _, err := os.Stat(journal); err != nil {
		t.Fatalf("the journal must be left while the daemon runs: %v", err)
	}
	l.Close()
	os.Remove(sock)

	out.Reset()
	errOut.Reset()
	if code := run(args, &out, &errOut, noEnv); code != 0 {
		t.Fatalf("restore: exit %d\n%s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "unchanged: acd-gone0 is gone") {
		t.Errorf("restore output %q", out.String())
	}
	if _, err := os.Stat(journal); !os.IsNotExist(err) {
		t.Errorf("journal after a full restore: %v", err)
	}
	out.Reset()
	if code := run(args, &out, &errOut, noEnv); code != 0 || out.String() != "nothing to restore\n" {
		t.Errorf("second restore: exit %d, %q", code, out.String())
	}

	// An invalid config: nothing restored.
	errOut.Reset()
	if code := run([]string{"--restore-host", "-c", "../../configs/testdata/many-mistakes.yaml"}, &out, &errOut, noEnv); code == 0 ||
		!strings.Contains(errOut.String(), "nothing restored") {
		t.Errorf("invalid config: exit %d, %q", code, errOut.String())
	}
}
