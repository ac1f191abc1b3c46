package main

import (
	"bytes"
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
