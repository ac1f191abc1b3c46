package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/anycastd/anycastd/configs"
)

// maxOutput is how much of an exec check's output is kept.
const maxOutput = 4 << 10

// execProbe runs an operator's command; exit status 0 is up. The command
// gets the target in its environment (ANYCASTD_TARGET_ADDR, _PORT, _VIP)
// and runs in its own process group, killed whole on timeout.
type execProbe struct {
	argv []string
	env  []string
}

func newExec(c configs.Check, t Target) (*execProbe, error) {
	if len(c.Command) == 0 {
		return nil, errors.New("exec check without a command")
	}
	env := append(os.Environ(),
		"ANYCASTD_TARGET_ADDR="+t.Addr.Addr().String(),
		fmt.Sprintf("ANYCASTD_TARGET_PORT=%d", t.Addr.Port()))
	if t.VIP.IsValid() {
		env = append(env, "ANYCASTD_TARGET_VIP="+t.VIP.String())
	}
	return &execProbe{argv: c.Command, env: env}, nil
}

func (p *execProbe) Check(ctx context.Context) Result {
	cmd := exec.CommandContext(ctx, p.argv[0], p.argv[1:]...)
	cmd.Env = p.env
	var out bytes.Buffer
	cmd.Stdout = &limitWriter{w: &out, n: maxOutput}
	cmd.Stderr = cmd.Stdout
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// The whole group: a shell script's children too.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	output := strings.TrimSpace(out.String())
	var ee *exec.ExitError
	switch {
	case err == nil:
		return Result{OK: true, Detail: "exit 0", Output: output}
	case ctx.Err() != nil:
		return Result{Output: output, Err: fmt.Errorf("killed: %w", ctx.Err())}
	case errors.As(err, &ee):
		return Result{Detail: fmt.Sprintf("exit %d", ee.ExitCode()), Output: output, Err: fmt.Errorf("exit status %d", ee.ExitCode())}
	default:
		return Result{Output: output, Err: err}
	}
}

// limitWriter keeps the first n bytes and discards the rest.
type limitWriter struct {
	w *bytes.Buffer
	n int
}

func (l *limitWriter) Write(b []byte) (int, error) {
	if room := l.n - l.w.Len(); room > 0 {
		l.w.Write(b[:min(len(b), room)])
	}
	return len(b), nil
}
