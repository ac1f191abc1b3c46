package main

import (
	"fmt"
	"os"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/configs/keepalived"
	"github.com/spf13/cobra"
)

func newImportCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "import",
		Short: "Translate another load balancer's configuration into an anycastd config",
	}
	var out string
	ka := &cobra.Command{
		Use:   "keepalived FILE",
		Short: "Translate keepalived.conf (virtual_server, virtual_server_group, vrrp_instance)",
		Long: `Reads keepalived.conf and writes the equivalent anycastd config: each
virtual_server (and group) becomes a service with its scheduler, forwarding
method, persistence, quorum and real servers, its TCP_CHECK, HTTP_GET,
SSL_GET or MISC_CHECK the service's health check (delay_loop, connect_timeout,
retries); vrrp_instance blocks become routing.vrrp instances. include
statements are followed as keepalived follows them (wildcards, {a,b},
relative to the including file). Everything it cannot translate is listed
with its file and line (on stderr and as comments in the output), never
dropped silently. The result is validated as anycastd
would load it; exit 1 if it is not valid.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			nodes, skipped, err := keepalived.ParseFile(args[0])
			if err != nil {
				return &exitError{code: exitFailed, err: err}
			}
			res := keepalived.Translate(nodes)
			res.Skipped = append(skipped, res.Skipped...)
			doc, err := keepalived.Render(res, args[0])
			if err != nil {
				return &exitError{code: exitFailed, err: err}
			}
			for _, s := range res.Skipped {
				if s.File == "" {
					fmt.Fprintf(cmd.ErrOrStderr(), "%s:%s\n", args[0], s)
				} else {
					fmt.Fprintf(cmd.ErrOrStderr(), "%s\n", s)
				}
			}
			if _, err := configs.Parse([]byte(doc)); err != nil {
				configs.WriteReport(cmd.ErrOrStderr(), "the imported config", err)
				return &exitError{code: exitFailed, err: fmt.Errorf("the translation of %s does not validate; fix what is listed and import again", args[0])}
			}
			if out == "" || out == "-" {
				fmt.Fprint(cmd.OutOrStdout(), doc)
				return nil
			}
			if err := os.WriteFile(out, []byte(doc), 0o600); err != nil {
				return &exitError{code: exitFailed, err: err}
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s (%d services, %d statements not translated)\n", out, len(res.Services), len(res.Skipped))
			return nil
		},
	}
	ka.Flags().StringVarP(&out, "output", "o", "-", "where to write the config (- for stdout)")
	cmd.AddCommand(ka)
	return cmd
}
