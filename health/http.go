package health

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"sync"
	"time"

	"github.com/anycastd/anycastd/configs"
)

// httpProbe makes one request and checks the status (and the body).
//
// Without redirects to follow (the default) a check is one connection
// driven by hand with net/http's own wire format: the request, written
// once at build time, is sent as is and the answer is read with
// http.ReadResponse. An http.Transport per target (one connection per
// check, a pool that must not be used) cost 3.7 x keepalived's CPU per
// check and 8 x its memory at 2,000 targets in the VM lab; the
// Transport's goroutines and buffers per request were most of it. The
// client stays for redirects, which only it follows.
type httpProbe struct {
	url    string
	method string
	host   string
	status [][2]int
	body   *regexp.Regexp
	client *http.Client

	addr  string // host:port to connect to
	ap    netip.AddrPort
	conv  *conversation // the direct path on a Monitor's connector
	tls   *tls.Config   // https
	wire  []byte        // the request as sent
	req   *http.Request
	plain bool // no redirects to follow: the direct path
}

func newHTTP(c configs.Check, t Target) (*httpProbe, error) {
	p := &httpProbe{method: c.Method, host: c.Host}
	if p.method == "" {
		p.method = http.MethodGet
	}
	for _, s := range c.Status {
		lo, hi, ok := configs.ParseStatusRange(s)
		if !ok {
			return nil, fmt.Errorf("status %q is not a code or range", s)
		}
		p.status = append(p.status, [2]int{lo, hi})
	}
	if len(p.status) == 0 {
		p.status = [][2]int{{200, 299}}
	}
	if c.Body != "" {
		re, err := regexp.Compile(c.Body)
		if err != nil {
			return nil, fmt.Errorf("body: %w", err)
		}
		p.body = re
	}
	if c.ThroughVIP && p.host == "" && t.VIP.IsValid() {
		p.host = t.VIP.String()
	}
	path := c.Path
	if path == "" {
		path = "/"
	}
	scheme := "http"
	tr := &http.Transport{
		// One connection per check: a probe must see a new connection
		// fail, not a pooled one succeed.
		DisableKeepAlives: true,
		Proxy:             nil,
		DialContext:       (&net.Dialer{}).DialContext,
	}
	if c.Type == configs.CheckHTTPS {
		scheme = "https"
		cfg := &tls.Config{InsecureSkipVerify: c.Insecure, ServerName: c.ServerName}
		if cfg.ServerName == "" && c.ThroughVIP && t.VIP.IsValid() {
			cfg.ServerName = t.VIP.String()
		}
		if cfg.ServerName == "" && c.Host != "" {
			cfg.ServerName = c.Host
		}
		if c.CACert != "" {
			pem, err := os.ReadFile(c.CACert)
			if err != nil {
				return nil, fmt.Errorf("ca_cert: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("ca_cert %s: no certificate in it", c.CACert)
			}
			cfg.RootCAs = pool
		}
		if c.ClientCert != "" {
			cert, err := tls.LoadX509KeyPair(c.ClientCert, c.ClientKey)
			if err != nil {
				return nil, fmt.Errorf("client certificate: %w", err)
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		tr.TLSClientConfig = cfg
	}
	p.url = fmt.Sprintf("%s://%s%s", scheme, t.Addr, path)
	p.client = &http.Client{Transport: tr}
	if !c.FollowRedirects {
		p.client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		req, err := p.request(context.Background())
		if err != nil {
			return nil, err
		}
		req.Close = true // "Connection: close": one connection per check
		var wire bytes.Buffer
		if err := req.Write(&wire); err != nil {
			return nil, fmt.Errorf("request: %w", err)
		}
		p.plain, p.req, p.wire, p.addr, p.ap = true, req, wire.Bytes(), t.Addr.String(), t.Addr
		p.conv = &conversation{send: p.wire, judge: p.judge}
		if tr.TLSClientConfig != nil {
			// As the Transport does: the URL's host names the server
			// unless the check does.
			p.tls = tr.TLSClientConfig.Clone()
			if p.tls.ServerName == "" {
				p.tls.ServerName = t.Addr.Addr().String()
			}
		}
	}
	return p, nil
}

func (p *httpProbe) request(ctx context.Context) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, p.method, p.url, nil)
	if err != nil {
		return nil, err
	}
	if p.host != "" {
		req.Host = p.host
	}
	req.Header.Set("User-Agent", "anycastd-health")
	return req, nil
}

var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

// direct is a check on a connection of its own (see httpProbe). The
// connection's deadline is the check's: running out of it is the check's
// deadline exceeded, as the client says it.
func (p *httpProbe) direct(ctx context.Context) (*http.Response, func(), error) {
	resp, done, err := p.exchange(ctx)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("%w (%w)", context.DeadlineExceeded, err)
	}
	return resp, done, err
}

func (p *httpProbe) exchange(ctx context.Context) (*http.Response, func(), error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return nil, nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	br := readers.Get().(*bufio.Reader)
	done := func() {
		stop()
		conn.Close()
		br.Reset(nil)
		readers.Put(br)
	}
	if p.tls != nil {
		tc := tls.Client(conn, p.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			done()
			return nil, nil, err
		}
		conn = tc
	}
	if _, err := conn.Write(p.wire); err != nil {
		done()
		return nil, nil, err
	}
	br.Reset(conn)
	resp, err := http.ReadResponse(br, p.req)
	if err != nil {
		done()
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return nil, nil, fmt.Errorf("read the answer: %w", err)
	}
	return resp, done, nil
}

func (p *httpProbe) Check(ctx context.Context) Result {
	var resp *http.Response
	if p.plain {
		r, done, err := p.direct(ctx)
		if err != nil {
			return Result{Err: err}
		}
		defer done()
		resp = r
	} else {
		req, err := p.request(ctx)
		if err != nil {
			return Result{Err: err}
		}
		if resp, err = p.client.Do(req); err != nil {
			var ue interface{ Unwrap() error }
			if errors.As(err, &ue) && ue.Unwrap() != nil {
				err = ue.Unwrap() // drop the method and URL: the target says them
			}
			return Result{Err: err}
		}
	}
	defer resp.Body.Close()
	res := p.verdict(resp.StatusCode)
	if !res.OK {
		return res
	}
	detail := res.Detail
	if p.body != nil {
		b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return Result{Detail: detail, Err: fmt.Errorf("read body: %w", err)}
		}
		if !p.body.Match(b) {
			return Result{Detail: detail, Err: fmt.Errorf("body does not match %q", p.body)}
		}
	}
	return Result{OK: true, Detail: detail}
}

// verdict judges an answer's status code.
func (p *httpProbe) verdict(code int) Result {
	detail := fmt.Sprintf("HTTP %d", code)
	for _, r := range p.status {
		if code >= r[0] && code <= r[1] {
			return Result{OK: true, Detail: detail}
		}
	}
	return Result{Detail: detail, Err: fmt.Errorf("status %d is not one of %s", code, p.statusText())}
}

// onConnector is how a Monitor runs the check on its connector: the
// direct path's request, and its answer read as far as the headers and
// judged by status. A check over TLS, one that matches the body or
// follows redirects, or one to an address with a zone runs through Check.
func (p *httpProbe) onConnector() (netip.AddrPort, *conversation, bool) {
	if p.conv == nil || p.tls != nil || p.body != nil || p.ap.Addr().Zone() != "" {
		return netip.AddrPort{}, nil, false
	}
	return p.ap, p.conv, true
}

var headersEnd = []byte("\r\n\r\n")

// judge is the conversation's judge: once the headers are in (or the
// answer ended), they are read by http.ReadResponse, as on the direct
// path, and the status judged; the body is not read (as Check does not
// without a body to match).
func (p *httpProbe) judge(got []byte, end error) (Result, bool) {
	if !bytes.Contains(got, headersEnd) {
		if end == nil {
			return Result{}, false
		}
		if !errors.Is(end, io.EOF) {
			return Result{Err: fmt.Errorf("read the answer: %w", end)}, true
		}
	}
	br := readers.Get().(*bufio.Reader)
	br.Reset(bytes.NewReader(got))
	defer func() { br.Reset(nil); readers.Put(br) }()
	resp, err := http.ReadResponse(br, p.req)
	if err != nil {
		return Result{Err: fmt.Errorf("read the answer: %w", err)}, true
	}
	return p.verdict(resp.StatusCode), true
}

func (p *httpProbe) statusText() string {
	s := ""
	for i, r := range p.status {
		if i > 0 {
			s += ","
		}
		if r[0] == r[1] {
			s += fmt.Sprint(r[0])
		} else {
			s += fmt.Sprintf("%d-%d", r[0], r[1])
		}
	}
	return s
}
