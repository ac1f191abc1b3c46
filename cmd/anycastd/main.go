// Command anycastd is the director daemon: it programs IPVS for the virtual
// services in its config, health-checks the real servers, announces the VIPs
// upstream and gossips with the other directors.
//
// This build loads and checks configuration (--check-config); the control
// loop that runs the director is added with the director package.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/anycastd/anycastd/configs"
	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// DefaultConfig is where the daemon looks for its config file.
const DefaultConfig = "/etc/anycastd/anycastd.yaml"

// flagKeys maps the daemon's config-overriding flags to config keys; they
// take precedence over ANYCASTD_* variables, which take precedence over the
// file.
var flagKeys = map[string]string{
	"node-name":   "node.name",
	"state-dir":   "node.state_dir",
	"gossip-bind": "cluster.bind",
	"gossip-port": "cluster.port",
	"seed":        "cluster.seeds",
	"socket":      "api.socket",
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, os.LookupEnv))
}

func run(args []string, stdout, stderr io.Writer, env func(string) (string, bool)) int {
	var (
		file        string
		checkConfig bool
	)
	cmd := &cobra.Command{
		Use:           "anycastd",
		Short:         "anycast IPVS director daemon",
		Version:       version,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := configs.Load(file, configs.WithEnv(env), configs.WithFlags(cmd.Flags(), flagKeys))
			if checkConfig {
				return configs.WriteReport(stdout, file, err)
			}
			if err != nil {
				configs.WriteReport(stderr, file, err)
				return errors.New("invalid config, not starting")
			}
			_ = cfg
			return errors.New("this build has no director control loop yet; only --check-config is available")
		},
	}
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	cmd.SetArgs(args)
	f := cmd.Flags()
	f.StringVarP(&file, "config", "c", DefaultConfig, "config file (YAML)")
	f.BoolVar(&checkConfig, "check-config", false, "load and validate the config (file, ANYCASTD_* environment, flags), print the result and exit")
	f.String("node-name", "", "override node.name")
	f.String("state-dir", "", "override node.state_dir")
	f.String("gossip-bind", "", "override cluster.bind")
	f.Int("gossip-port", 0, "override cluster.port")
	f.StringSlice("seed", nil, "override cluster.seeds (repeat or comma-separate)")
	f.String("socket", "", "override api.socket")
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(stderr, "anycastd:", err)
		return 1
	}
	return 0
}
