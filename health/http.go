package health

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"

	"github.com/anycastd/anycastd/configs"
)

// httpProbe makes one request and checks the status (and the body).
type httpProbe struct {
	url    string
	method string
	host   string
	status [][2]int
	body   *regexp.Regexp
	client *http.Client
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
	}
	return p, nil
}

func (p *httpProbe) Check(ctx context.Context) Result {
	req, err := http.NewRequestWithContext(ctx, p.method, p.url, nil)
	if err != nil {
		return Result{Err: err}
	}
	if p.host != "" {
		req.Host = p.host
	}
	req.Header.Set("User-Agent", "anycastd-health")
	resp, err := p.client.Do(req)
	if err != nil {
		var ue interface{ Unwrap() error }
		if errors.As(err, &ue) && ue.Unwrap() != nil {
			err = ue.Unwrap() // drop the method and URL: the target says them
		}
		return Result{Err: err}
	}
	defer resp.Body.Close()
	detail := fmt.Sprintf("HTTP %d", resp.StatusCode)
	ok := false
	for _, r := range p.status {
		if resp.StatusCode >= r[0] && resp.StatusCode <= r[1] {
			ok = true
		}
	}
	if !ok {
		return Result{Detail: detail, Err: fmt.Errorf("status %d is not one of %s", resp.StatusCode, p.statusText())}
	}
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
