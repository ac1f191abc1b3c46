package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/anycastd/anycastd/director"
	"github.com/spf13/cobra"
)

// DefaultSocket is the daemon's API socket unless configured otherwise.
const DefaultSocket = "/run/anycastd/anycastd.sock"

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
	def := DefaultSocket
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

type client struct {
	http  *http.Client
	base  string
	where string
	token string
}

// call connects (socket or --server) and makes one API call.
func (c *conn) call(ctx context.Context, method, path string, body, out any) error {
	cl, err := c.client()
	if err != nil {
		return err
	}
	return cl.call(ctx, method, path, body, out)
}

func (c *conn) client() (*client, error) {
	if c.server == "" {
		sock := c.socket
		tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}
		return &client{http: &http.Client{Transport: tr, Timeout: c.timeout}, base: "http://anycastd", where: sock}, nil
	}
	if !strings.HasPrefix(c.server, "https://") {
		return nil, &exitError{code: exitUsage, err: fmt.Errorf("--server %q: must be https://host:port", c.server)}
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.caFile != "" {
		pem, err := os.ReadFile(c.caFile)
		if err != nil {
			return nil, &exitError{code: exitUsage, err: fmt.Errorf("--cacert: %w", err)}
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, &exitError{code: exitUsage, err: fmt.Errorf("--cacert %s: no PEM certificate in it", c.caFile)}
		}
	}
	if c.certFile != "" || c.keyFile != "" {
		cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
		if err != nil {
			return nil, &exitError{code: exitUsage, err: fmt.Errorf("--cert/--key: %w", err)}
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	cl := &client{http: &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: c.timeout},
		base: strings.TrimSuffix(c.server, "/"), where: c.server}
	if c.token != "" {
		b, err := os.ReadFile(c.token)
		if err != nil {
			return nil, &exitError{code: exitUsage, err: fmt.Errorf("--token-file: %w", err)}
		}
		cl.token = strings.TrimSpace(string(b))
	}
	return cl, nil
}

// apiError is an error answer of the daemon.
type apiError struct {
	status int
	resp   director.ErrorResponse
}

func (e *apiError) Error() string {
	if len(e.resp.Problems) == 0 {
		return e.resp.Error
	}
	return e.resp.Error + ":\n  " + strings.Join(e.resp.Problems, "\n  ")
}

// call does one API request and decodes the answer into out.
func (cl *client) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, cl.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if cl.token != "" {
		req.Header.Set("Authorization", "Bearer "+cl.token)
	}
	resp, err := cl.http.Do(req)
	if err != nil {
		hint := ""
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) || strings.Contains(err.Error(), "connection refused") {
			hint = " (is anycastd running, and are you root?)"
		}
		return &exitError{code: exitUnavailable, err: fmt.Errorf("cannot reach anycastd at %s: %v%s", cl.where, err, hint)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return &exitError{code: exitUnavailable, err: fmt.Errorf("read answer from %s: %w", cl.where, err)}
	}
	if resp.StatusCode/100 != 2 {
		ae := &apiError{status: resp.StatusCode}
		if json.Unmarshal(data, &ae.resp) != nil || ae.resp.Error == "" {
			ae.resp.Error = fmt.Sprintf("%s %s: %s", method, path, resp.Status)
		}
		return &exitError{code: exitFailed, err: ae}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return &exitError{code: exitFailed, err: fmt.Errorf("undecodable answer from %s: %w", cl.where, err)}
	}
	return nil
}
