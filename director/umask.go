package director

import "syscall"

// umask sets the process umask and returns the old one, so that the API
// socket is never, even for an instant, reachable by other users.
func umask(m int) int { return syscall.Umask(m) }
