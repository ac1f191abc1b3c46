package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/anycastd/anycastd/api"
	"github.com/spf13/cobra"
)

// exitUnavailable: the daemon could not be reached.
const exitUnavailable = 4

// conn are the flags that say how to reach a daemon.
type conn struct {
	socket   string
	server   string
	caFile   string
	certFile string
	keyFile  string
	token    string
	timeout  time.Duration
}

func (c *conn) flags(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	def := api.DefaultSocket
	if s := os.Getenv("ANYCTL_SOCKET"); s != "" {
		def = s
	}
	f.StringVar(&c.socket, "socket", def, "the daemon's API socket (env ANYCTL_SOCKET)")
	f.StringVar(&c.server, "server", os.Getenv("ANYCTL_SERVER"), "a daemon's TLS API instead of the socket, https://host:port (env ANYCTL_SERVER)")
	f.StringVar(&c.caFile, "cacert", "", "CA that signed the server's certificate (--server)")
	f.StringVar(&c.certFile, "cert", "", "client certificate (--server)")
	f.StringVar(&c.keyFile, "key", "", "client key (--server)")
	f.StringVar(&c.token, "token-file", "", "file with a bearer token (--server)")
	f.DurationVar(&c.timeout, "timeout", 10*time.Second, "how long to wait for the daemon")
}

// call connects (socket or --server) and makes one API call, with the
// exit code its failure calls for.
func (c *conn) call(ctx context.Context, method, path string, body, out any) error {
	cl, err := api.NewClient(api.Endpoint{Socket: c.socket, Server: c.server, CAFile: c.caFile,
		CertFile: c.certFile, KeyFile: c.keyFile, TokenFile: c.token, Timeout: c.timeout})
	if oe := (*api.OptionError)(nil); errors.As(err, &oe) {
		return &exitError{code: exitUsage, err: fmt.Errorf("--%s: %w", oe.Option, oe.Err)}
	} else if err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	err = cl.Call(ctx, method, path, body, out)
	if ue := (*api.UnreachableError)(nil); errors.As(err, &ue) {
		return &exitError{code: exitUnavailable, err: err}
	} else if err != nil {
		return &exitError{code: exitFailed, err: err}
	}
	return nil
}
