// Command anyctl is the operator's CLI for anycastd: it shows and drives the
// director cluster through the local API, and works on config files offline
// (validate, keygen).
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes, stable for scripts.
const (
	exitOK     = 0
	exitFailed = 1 // the command ran and found a problem (invalid config, ...)
	exitUsage  = 2 // bad flags or arguments
	// 3 is not used (kept free: scripts may have read it as "unknown").
	// exitUnavailable (4): the daemon could not be reached.
)

// exitError carries an exit code out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes anyctl with args and returns the process exit code.
func run(args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil && ee.err.Error() != "" {
			fmt.Fprintln(stderr, "anyctl:", ee.err)
		}
		return ee.code
	}
	// cobra's own errors: unknown command or flag, wrong number of args.
	fmt.Fprintln(stderr, "anyctl:", err)
	return exitUsage
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "anyctl",
		Short:         "Show and drive an anycastd director cluster",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	c := &conn{}
	c.flags(root)
	root.AddCommand(newClusterCmds(c)...)
	root.AddCommand(
		newValidateCmd(),
		newKeygenCmd(),
		newRealServerCmd(),
		newProbeCmd(),
		newImportCmd(),
		newVersionCmd(),
	)
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print anyctl's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "anyctl %s\n", version)
			return nil
		},
	}
}
