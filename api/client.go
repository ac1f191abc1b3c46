package api

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
)

// DefaultSocket is the daemon's API socket unless configured otherwise.
const DefaultSocket = "/run/anycastd/anycastd.sock"

// maxAnswer bounds what the client reads of one answer.
const maxAnswer = 64 << 20

// Endpoint says how to reach a daemon: its unix socket, or its TLS API.
type Endpoint struct {
	// Socket is the API socket's path (used when Server is empty).
	Socket string
	// Server is a daemon's TLS API, https://host:port.
	Server string
	// CAFile is the CA that signed the server's certificate; CertFile
	// and KeyFile the client's certificate; TokenFile holds a bearer
	// token. All optional, for Server only.
	CAFile, CertFile, KeyFile, TokenFile string
	// Timeout bounds each call; zero: no limit but the context's.
	Timeout time.Duration
}

// Client calls one daemon's API.
type Client struct {
	http  *http.Client
	base  string
	where string
	token string
}

// OptionError is an Endpoint that cannot be used: a malformed server
// address, or a certificate or token file that cannot be read.
type OptionError struct {
	Option string
	Err    error
}

func (e *OptionError) Error() string { return e.Option + ": " + e.Err.Error() }
func (e *OptionError) Unwrap() error { return e.Err }

// UnreachableError is a call that got no answer from the daemon.
type UnreachableError struct {
	Where string
	Err   error
}

func (e *UnreachableError) Error() string {
	hint := ""
	if errors.Is(e.Err, os.ErrNotExist) || errors.Is(e.Err, os.ErrPermission) || strings.Contains(e.Err.Error(), "connection refused") {
		hint = " (is anycastd running, and are you root?)"
	}
	return fmt.Sprintf("cannot reach anycastd at %s: %v%s", e.Where, e.Err, hint)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// Error is the daemon's answer to a call it refused or failed.
type Error struct {
	Status   int
	Response ErrorResponse
}

func (e *Error) Error() string {
	if len(e.Response.Problems) == 0 {
		return e.Response.Error
	}
	return e.Response.Error + ":\n  " + strings.Join(e.Response.Problems, "\n  ")
}

// NewClient returns a client for the daemon at e. It reads the
// certificate and token files now; it does not connect.
func NewClient(e Endpoint) (*Client, error) {
	if e.Server == "" {
		sock := e.Socket
		if sock == "" {
			sock = DefaultSocket
		}
		tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}
		return &Client{http: &http.Client{Transport: tr, Timeout: e.Timeout}, base: "http://anycastd", where: sock}, nil
	}
	if !strings.HasPrefix(e.Server, "https://") {
		return nil, &OptionError{Option: "server", Err: fmt.Errorf("%q: must be https://host:port", e.Server)}
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if e.CAFile != "" {
		pem, err := os.ReadFile(e.CAFile)
		if err != nil {
			return nil, &OptionError{Option: "cacert", Err: err}
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, &OptionError{Option: "cacert", Err: fmt.Errorf("%s: no PEM certificate in it", e.CAFile)}
		}
	}
	if e.CertFile != "" || e.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(e.CertFile, e.KeyFile)
		if err != nil {
			return nil, &OptionError{Option: "cert/key", Err: err}
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	c := &Client{http: &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: e.Timeout},
		base: strings.TrimSuffix(e.Server, "/"), where: e.Server}
	if e.TokenFile != "" {
		b, err := os.ReadFile(e.TokenFile)
		if err != nil {
			return nil, &OptionError{Option: "token-file", Err: err}
		}
		c.token = strings.TrimSpace(string(b))
	}
	return c, nil
}

// Call makes one API request: in (if not nil) is sent as JSON, and the
// answer is decoded into out (if not nil). The errors: *UnreachableError
// when no answer came, *Error when the daemon answered with an error.
func (c *Client) Call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return &UnreachableError{Where: c.where, Err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return &UnreachableError{Where: c.where, Err: fmt.Errorf("read answer: %w", err)}
	}
	if resp.StatusCode/100 != 2 {
		ae := &Error{Status: resp.StatusCode}
		if json.Unmarshal(data, &ae.Response) != nil || ae.Response.Error == "" {
			ae.Response.Error = fmt.Sprintf("%s %s: %s", method, path, resp.Status)
		}
		return ae
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("undecodable answer from %s: %w", c.where, err)
	}
	return nil
}
