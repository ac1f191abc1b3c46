package ipvs

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
)

// expireNodestPath is net.ipv4.vs.expire_nodest_conn.
const expireNodestPath = "/proc/sys/net/ipv4/vs/expire_nodest_conn"

// withNodestHold runs apply with expire_nodest_conn held at 0 (see
// Kernel.Apply). The hold is a refinement, never a reason for the plan to
// fail: a service reported failed withdraws its VIP. If the sysctl cannot
// be set, the plan runs as it would without it; if it cannot be set back,
// it stays 0 (a removed backend's connections then stall instead of being
// reset) until the daemon's next start. Both are logged, not returned.
func withNodestHold(f *os.File, log *slog.Logger, apply func() error) error {
	restore, err := holdNodestConns(f)
	if err != nil {
		if log != nil {
			log.Warn("IPVS: moving destinations without holding expire_nodest_conn: their connections may be reset", "err", err)
		}
		return apply()
	}
	applyErr := apply()
	if err := restore(); err != nil && log != nil {
		log.Error("IPVS: " + err.Error())
	}
	return applyErr
}

// holdNodestConns sets the expire_nodest_conn file f to 0 if it is 1 and
// returns the function that sets it back (a no-op when it was not 1).
func holdNodestConns(f *os.File) (restore func() error, err error) {
	buf := make([]byte, 16)
	n, err := f.ReadAt(buf, 0)
	if n == 0 {
		return nil, fmt.Errorf("read net.ipv4.vs.expire_nodest_conn: %w", err)
	}
	if strings.TrimSpace(string(buf[:n])) != "1" {
		return func() error { return nil }, nil
	}
	if _, err := f.WriteAt([]byte("0\n"), 0); err != nil {
		return nil, fmt.Errorf("set net.ipv4.vs.expire_nodest_conn 1 -> 0: %w", err)
	}
	return func() error {
		if _, err := f.WriteAt([]byte("1\n"), 0); err != nil {
			return fmt.Errorf("set net.ipv4.vs.expire_nodest_conn back to 1: %w (it stays 0 until the daemon's next start: a removed backend's connections then stall instead of being reset)", err)
		}
		return nil
	}, nil
}

// openInNetns opens a /proc/sys file of the network namespace at nsPath
// ("" for the caller's) for reading and writing. A sysctl file belongs to
// the namespace of the thread that opened it, so the open runs on a thread
// of its own moved into that namespace; if it cannot be moved back, it is
// left locked, and Go ends it with its goroutine.
func openInNetns(nsPath, path string) (*os.File, error) {
	if nsPath == "" {
		return os.OpenFile(path, os.O_RDWR, 0)
	}
	type result struct {
		f   *os.File
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		f, back, err := openOnThreadIn(nsPath, path)
		if back {
			runtime.UnlockOSThread()
		}
		done <- result{f, err}
	}()
	r := <-done
	return r.f, r.err
}

// openOnThreadIn opens path with the calling (locked) thread in the
// namespace at nsPath; back tells whether the thread is in its own
// namespace again.
func openOnThreadIn(nsPath, path string) (f *os.File, back bool, err error) {
	target, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, true, err
	}
	defer target.Close()
	orig, err := netns.Get()
	if err != nil {
		return nil, true, err
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		return nil, true, err
	}
	f, err = os.OpenFile(path, os.O_RDWR, 0)
	if serr := netns.Set(orig); serr != nil {
		if f != nil {
			f.Close()
		}
		return nil, false, fmt.Errorf("back to the original network namespace: %w", serr)
	}
	return f, true, err
}
