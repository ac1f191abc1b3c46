package director

import (
	"fmt"
	"net/netip"
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

// RealServerUp prepares this host as a real server behind directors
// forwarding by mode ("dr" or "tun"): the VIPs bound without answering ARP
// for them (see ipvs.Host.SetupRealServer), every change journaled in
// journal so that RealServerDown undoes it. It returns what it did, also
// on error.
func RealServerUp(journal, mode string, vips []netip.Addr) ([]string, error) {
	m := ipvs.RealServerMode(mode)
	if m != ipvs.RealServerDR && m != ipvs.RealServerTUN {
		return nil, fmt.Errorf("real-server mode %q: want dr or tun", mode)
	}
	h, err := ipvs.OpenHost(journal)
	if err != nil {
		return nil, err
	}
	return h.SetupRealServer(m, vips)
}

// RealServerDown undoes what RealServerUp journaled in journal, newest
// first; nothing journaled is no error and no output.
func RealServerDown(journal string) ([]string, error) {
	h, err := ipvs.OpenHost(journal)
	if err != nil {
		return nil, err
	}
	if len(h.Changes()) == 0 {
		return nil, nil
	}
	return h.Restore()
}
