package main

import (
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/ipvs"
	"github.com/spf13/cobra"
)

func newRealServerCmd() *cobra.Command {
	var stateDir string
	cmd := &cobra.Command{
		Use:   "realserver",
		Short: "Prepare this host as a real server behind DR or TUN directors",
		Long: `Does what the classic LVS real-server script does, and records every change
so that "down" puts the host back as it was. Run it on each real server.`,
	}
	cmd.PersistentFlags().StringVar(&stateDir, "state-dir", configs.DefaultStateDir, "where the record of changes is kept")
	journal := func() string { return filepath.Join(stateDir, "realserver.json") }

	var vips []string
	var mode string
	up := &cobra.Command{
		Use:   "up --vip VIP [--vip VIP...] [--mode dr|tun]",
		Short: "Bind the VIPs locally without answering ARP for them",
		Long: `dr: each VIP as a /32 (/128) on lo; tun: on the IPIP device tunl0 (IPv4),
with rp_filter off on tunl0 and all. Both: arp_ignore=1 and arp_announce=2 on
lo and all. Idempotent: what is already set is reported unchanged.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(vips) == 0 {
				return &exitError{code: exitUsage, err: fmt.Errorf("realserver up: at least one --vip is required")}
			}
			var addrs []netip.Addr
			for _, v := range vips {
				a, err := netip.ParseAddr(v)
				if err != nil || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
					return &exitError{code: exitUsage, err: fmt.Errorf("--vip %q is not a unicast IP address", v)}
				}
				addrs = append(addrs, a.Unmap())
			}
			if mode != "dr" && mode != "tun" {
				return &exitError{code: exitUsage, err: fmt.Errorf("--mode %q: want dr or tun", mode)}
			}
			msgs, err := realServerUp(journal(), ipvs.RealServerMode(mode), addrs)
			for _, msg := range msgs {
				fmt.Fprintln(cmd.OutOrStdout(), msg)
			}
			if err != nil {
				return &exitError{code: exitFailed, err: fmt.Errorf("%w (what was done is recorded; 'anyctl realserver down' undoes it)", err)}
			}
			return nil
		},
	}
	up.Flags().StringSliceVar(&vips, "vip", nil, "virtual IP this real server serves (repeat or comma-separate)")
	up.Flags().StringVar(&mode, "mode", "dr", "forwarding of the directors: dr or tun")

	down := &cobra.Command{
		Use:   "down",
		Short: "Undo everything 'realserver up' changed",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			msgs, err := realServerDown(journal())
			if err == nil && len(msgs) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "nothing to undo")
				return nil
			}
			for _, msg := range msgs {
				fmt.Fprintln(cmd.OutOrStdout(), msg)
			}
			if err != nil {
				return &exitError{code: exitFailed, err: err}
			}
			return nil
		},
	}
	cmd.AddCommand(up, down)
	return cmd
}

// realServerUp prepares this host as a real server behind directors
// forwarding by mode: the VIPs bound without answering ARP for them (see
// ipvs.Host.SetupRealServer), every change journaled in journal so that
// realServerDown undoes it. It returns what it did, also on error.
func realServerUp(journal string, mode ipvs.RealServerMode, vips []netip.Addr) ([]string, error) {
	h, err := ipvs.OpenHost(journal)
	if err != nil {
		return nil, err
	}
	return h.SetupRealServer(mode, vips)
}

// realServerDown undoes what realServerUp journaled in journal, newest
// first; nothing journaled is no error and no output.
func realServerDown(journal string) ([]string, error) {
	h, err := ipvs.OpenHost(journal)
	if err != nil {
		return nil, err
	}
	if len(h.Changes()) == 0 {
		return nil, nil
	}
	return h.Restore()
}
