package main

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"

	"github.com/spf13/cobra"
)

func newKeygenCmd() *cobra.Command {
	var size int
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Print a new random gossip key for cluster.keys",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if size != 16 && size != 24 && size != 32 {
				return &exitError{code: exitUsage, err: fmt.Errorf("--bytes %d: an AES key is 16, 24 or 32 bytes", size)}
			}
			k := make([]byte, size)
			if _, err := rand.Read(k); err != nil {
				return &exitError{code: exitFailed, err: fmt.Errorf("read random bytes: %w", err)}
			}
			fmt.Fprintln(cmd.OutOrStdout(), base64.StdEncoding.EncodeToString(k))
			return nil
		},
	}
	cmd.Flags().IntVar(&size, "bytes", 32, "key size: 16, 24 or 32 bytes (AES-128, -192, -256)")
	return cmd
}
