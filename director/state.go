package director

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/anycastd/anycastd/internal/atomicfile"
)

// What the node keeps in its state dir: the lock, the drain flag.

// ErrDrainNotSaved is Drain's error when the drain took effect but could
// not be saved for the next start (it is saved again on every turn).
var ErrDrainNotSaved = errors.New("in effect, but not saved")

// Drain sets or clears the operator's drain flag (kept across restarts).
// The flag takes effect at once, whatever the disk says: when it cannot be
// saved, Drain returns ErrDrainNotSaved (wrapped) and the loop saves it
// again on every turn until it can.
func (n *Node) Drain(drained bool, reason string) error {
	n.mu.Lock()
	if n.drain.Drained == drained {
		n.mu.Unlock()
		return n.saveDrain()
	}
	d := drainState{Drained: drained, Reason: reason, Since: n.opts.Now()}
	n.drain, n.drainUnsaved = d, &d
	n.mu.Unlock()
	if drained {
		n.log.Warn("drained by the operator", "reason", reason)
	} else {
		n.log.Info("undrained by the operator")
	}
	n.Wake()
	return n.saveDrain()
}

// saveDrain writes the operator's last drain change if it is not saved
// yet. The drain of a stopping daemon is not the operator's and is never
// saved.
func (n *Node) saveDrain() error {
	n.drainSaveMu.Lock()
	defer n.drainSaveMu.Unlock()
	n.mu.Lock()
	d := n.drainUnsaved
	path := filepath.Join(n.cfg.Node.StateDir, "drain.json")
	n.mu.Unlock()
	if d == nil {
		return nil
	}
	b, _ := json.Marshal(d)
	err := atomicfile.Write(path, b, 0o600)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.drainUnsaved != d {
		return nil // a newer change is on its way
	}
	if err != nil {
		msg := fmt.Sprintf("%v: %v", ErrDrainNotSaved, err)
		if n.drainSaveErr != msg {
			n.log.Error("the drain flag could not be saved; it is in effect and saved again on every turn", "err", err)
		}
		n.drainSaveErr = msg
		return fmt.Errorf("%w: %v", ErrDrainNotSaved, err)
	}
	n.drainUnsaved, n.drainSaveErr = nil, ""
	return nil
}

type drainState struct {
	Drained bool      `json:"drained"`
	Reason  string    `json:"reason,omitempty"`
	Since   time.Time `json:"since"`
}

// lockStateDir takes the state dir's lock: two daemons on one state dir
// overwrite each other's files (one reverted a cluster-wide apply on its
// next start). The lock is the kernel's (flock), so it goes with the
// process however it ends.
func lockStateDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state dir lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(f.Name())
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("state dir %s is in use by another anycastd (%s): one state dir per daemon", dir, cmp.Or(strings.TrimSpace(string(holder)), "pid unknown"))
		}
		return nil, fmt.Errorf("state dir lock: %w", err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(fmt.Sprintf("pid %d\n", os.Getpid())), 0)
	return f, nil
}

func (n *Node) statePath(name string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return filepath.Join(n.cfg.Node.StateDir, name)
}

func readJSON[T any](path string) (*T, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("%s is corrupt: %w", path, err)
	}
	return &v, nil
}
