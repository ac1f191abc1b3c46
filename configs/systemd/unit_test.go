// Package systemd holds the systemd unit of anycastd and its test.
package systemd

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The unit passes systemd's own checks (where systemd-analyze exists).
func TestUnitVerifies(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	unit, _ := filepath.Abs("anycastd.service")
	out, err := exec.Command(sa, "verify", "--man=no", unit).CombinedOutput()
	// verify complains about the missing binary on a build machine;
	// anything else is a mistake in the unit.
	var problems []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l == "" || strings.Contains(l, "/usr/local/sbin/anycastd") || strings.Contains(l, "anycastd.env") {
			continue
		}
		problems = append(problems, l)
	}
	if len(problems) > 0 {
		t.Errorf("systemd-analyze verify (%v):\n%s", err, strings.Join(problems, "\n"))
	}
}
