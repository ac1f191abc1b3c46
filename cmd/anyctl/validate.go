package main

import (
	"fmt"

	"github.com/anycastd/anycastd/configs"
	"github.com/spf13/cobra"
)

func newValidateCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "validate FILE...",
		Short: "Check config files: every problem, with its path",
		Long: `Loads each file as anycastd would (defaults filled, the whole document
checked) and prints "ok FILE", or every problem with its field path.
Exits 1 if any file is invalid. Environment variables are not applied:
this checks the files themselves.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, files []string) error {
			bad := 0
			for _, f := range files {
				_, err := configs.Load(f)
				if configs.WriteReport(cmd.OutOrStdout(), f, err) != nil {
					bad++
				}
			}
			if bad > 0 {
				return &exitError{code: exitFailed, err: fmt.Errorf("%d of %d files invalid", bad, len(files))}
			}
			return nil
		},
	}
}
