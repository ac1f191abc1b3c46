package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/director"
)

type pki struct {
	dir  string
	ca   *x509.Certificate
	caKy *ecdsa.PrivateKey
}

func (p *pki) issue(t *testing.T, name string, isCA bool, ips []net.IP, usage x509.ExtKeyUsage) (certPath, keyPath string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: ips,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: isCA}
	if !isCA {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{usage}
	}
	parent, signer := tmpl, key
	if p.ca != nil {
		parent, signer = p.ca, p.caKy
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	if isCA {
		p.ca, _ = x509.ParseCertificate(der)
		p.caKy = key
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certPath, keyPath = filepath.Join(p.dir, name+".crt"), filepath.Join(p.dir, name+".key")
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return
}

func TestTLSAPI(t *testing.T) {
	p := &pki{dir: t.TempDir()}
	caCrt, _ := p.issue(t, "ca", true, nil, 0)
	srvCrt, srvKey := p.issue(t, "server", false, []net.IP{net.ParseIP("127.0.0.1")}, x509.ExtKeyUsageServerAuth)
	cliCrt, cliKey := p.issue(t, "client", false, nil, x509.ExtKeyUsageClientAuth)
	other := &pki{dir: t.TempDir()}
	other.issue(t, "ca", true, nil, 0)
	badCrt, badKey := other.issue(t, "client", false, nil, x509.ExtKeyUsageClientAuth)
	token := filepath.Join(p.dir, "token")
	os.WriteFile(token, []byte("s3cret-token-0123456789\n"), 0o600)

	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	cfg, err := configs.Parse([]byte(fmt.Sprintf(`node: {name: d1, state_dir: %s, dataplane: memory}
cluster: {bind: 127.0.0.1, insecure: true}
routing: {mode: kernel, kernel: {table: 100}}
api:
  socket: %s
  tcp: {listen: "%s", cert: %s, key: %s, client_ca: %s, token_file: %s}
services: []
`, filepath.Join(dir, "state"), filepath.Join(dir, "api.sock"), addr, srvCrt, srvKey, caCrt, token)))
	if err != nil {
		t.Fatal(err)
	}
	n, err := director.New(director.Options{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	server := "https://" + addr
	call := func(args ...string) (string, int) {
		out, errOut, code := runCLI(append([]string{"members", "--server", server, "--cacert", caCrt, "-o", "json"}, args...)...)
		return out + errOut, code
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if out, code := call("--cert", cliCrt, "--key", cliKey); strings.Contains(out, `"self": "d1"`) {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("client certificate refused: %d %s", code, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, _ := call("--token-file", token); !strings.Contains(out, `"self": "d1"`) {
		t.Errorf("token refused: %s", out)
	}
	if out, code := call(); code != exitFailed || !strings.Contains(out, "client certificate or a bearer token is required") {
		t.Errorf("no credentials: %d %s", code, out)
	}
	if out, code := call("--cert", badCrt, "--key", badKey); code == exitOK {
		t.Errorf("a certificate from another CA was accepted: %s", out)
	}
	os.WriteFile(filepath.Join(p.dir, "wrong"), []byte("not-the-token-0123456789"), 0o600)
	if out, code := call("--token-file", filepath.Join(p.dir, "wrong")); code != exitFailed {
		t.Errorf("wrong token: %d %s", code, out)
	}

	// Case 20 of the fail-safe issue: unauthenticated clients held
	// keep-alive connections forever (400 for 40 s, +400 fds). After a
	// 401 the server closes; a connection that never sends a request is
	// closed after the header timeout.
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(caCrt)
	pool.AppendCertsFromPEM(caPEM)
	dial := func() *tls.Conn {
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	c := dial()
	fmt.Fprintf(c, "GET /v1/members HTTP/1.1\r\nHost: x\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusUnauthorized || !resp.Close {
		t.Fatalf("unauthenticated request: %v %+v; want 401 and Connection: close", err, resp)
	}
	io.Copy(io.Discard, resp.Body)
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("connection kept open after a 401: %v", err)
	}
	idle := dial()
	idle.SetReadDeadline(time.Now().Add(15 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("an idle unauthenticated connection was not closed by the server: %v", err)
	}
}
