package director

import (
	"path/filepath"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/ipvs"
)

// RestoreHost undoes the host changes the director with this config made
// (the VIPs it bound, the sysctls it set), newest first, from the journal
// in node.state_dir, and returns what it did. For removing anycastd from a
// director, with the daemon stopped; the IPVS table is not touched.
func RestoreHost(cfg *configs.Config) ([]string, error) {
	h, err := ipvs.OpenHost(filepath.Join(cfg.Node.StateDir, "host.json"))
	if err != nil {
		return nil, err
	}
	return h.Restore()
}
