package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	goldenfile "github.com/anycastd/anycastd/internal/golden"
)

// golden compares got with testdata/name, or rewrites it with -update.
// golden compares got with testdata/NAME (internal/golden; -update
// rewrites it).
func golden(t *testing.T, name, got string) {
	t.Helper()
	goldenfile.CheckFile(t, filepath.Join("testdata", name), []byte(got))
}

func runCLI(args ...string) (stdout, stderr string, code int) {
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return o.String(), e.String(), code
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name   string
		args   []string
		code   int
		golden string
		stderr string
	}{
		{"examples ok", []string{"validate", "../../configs/examples/single.yaml", "../../configs/examples/ecmp.yaml", "../../configs/examples/fallback.yaml"},
			exitOK, "validate-ok.golden", ""},
		{"many mistakes", []string{"validate", "../../configs/examples/single.yaml", "../../configs/testdata/many-mistakes.yaml"},
			exitFailed, "validate-bad.golden", "anyctl: 1 of 2 files invalid\n"},
		{"missing file", []string{"validate", "testdata/does-not-exist.yaml"},
			exitFailed, "validate-missing.golden", "anyctl: 1 of 1 files invalid\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runCLI(tc.args...)
			if code != tc.code {
				t.Errorf("exit code %d, want %d; stderr %q", code, tc.code, errOut)
			}
			if errOut != tc.stderr {
				t.Errorf("stderr %q, want %q", errOut, tc.stderr)
			}
			golden(t, tc.golden, out)
		})
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"validate"}, {"no-such-command"}, {"keygen", "--bytes", "7"}, {"validate", "--nope", "x"}} {
		_, errOut, code := runCLI(args...)
		if code != exitUsage {
			t.Errorf("anyctl %s: exit %d, want %d (usage)", strings.Join(args, " "), code, exitUsage)
		}
		if !strings.HasPrefix(errOut, "anyctl: ") {
			t.Errorf("anyctl %s: stderr %q should say what is wrong", strings.Join(args, " "), errOut)
		}
	}
}

func TestKeygen(t *testing.T) {
	out, _, code := runCLI("keygen")
	if code != exitOK || len(strings.TrimSpace(out)) != 44 {
		t.Fatalf("keygen: code %d, key %q (want 44 base64 chars)", code, out)
	}
	again, _, _ := runCLI("keygen")
	if again == out {
		t.Errorf("two keygen runs gave the same key")
	}
}

func TestImportKeepalived(t *testing.T) {
	out, errOut, code := runCLI("import", "keepalived", "../../configs/keepalived/testdata/lvs-dr.conf")
	if code != exitOK || !strings.Contains(out, "mode: vrrp") || !strings.Contains(errOut, "lvs-dr.conf:line 59: sorry_server") {
		t.Errorf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	f := filepath.Join(t.TempDir(), "imported.yaml")
	if _, errOut, code = runCLI("import", "keepalived", "../../configs/keepalived/testdata/lvs-dr.conf", "-o", f); code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if out, _, code := runCLI("validate", f); code != exitOK {
		t.Errorf("anyctl validate of the imported file: %d\n%s", code, out)
	}
	if _, errOut, code = runCLI("import", "keepalived", "testdata/does-not-exist.conf"); code != exitFailed || !strings.Contains(errOut, "no such file") {
		t.Errorf("missing file: %d %q", code, errOut)
	}
	// Includes are followed; what is not translated names its file.
	out, errOut, code = runCLI("import", "keepalived", "../../configs/keepalived/testdata/split/keepalived.conf")
	if code != exitOK || !strings.Contains(out, "virtual_mac: true") || !strings.Contains(out, "198.51.100.53") ||
		!strings.Contains(errOut, "split/keepalived.conf:line 9: include /nonexistent/anycastd-test/*.conf: matches no file") ||
		!strings.Contains(errOut, "split/conf.d/20-dns.conf:line 6: hysteresis 1") {
		t.Errorf("split config: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
}
