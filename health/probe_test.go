package health

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anycastd/anycastd/configs"
	"github.com/miekg/dns"
)

func target(t *testing.T, hostport string) Target {
	t.Helper()
	ap, err := netip.ParseAddrPort(hostport)
	if err != nil {
		t.Fatal(err)
	}
	return Target{Addr: ap}
}

// closedPort returns a loopback address nobody listens on.
func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func check(typ string, mod func(*configs.Check)) configs.Check {
	c := configs.Check{Type: typ, Timeout: 500 * time.Millisecond, Interval: time.Second, Rise: 2, Fall: 3}
	switch typ {
	case configs.CheckHTTP, configs.CheckHTTPS:
		c.Method, c.Path, c.Status = "GET", "/", []string{"200-299"}
	case configs.CheckDNS:
		c.QueryType, c.Transport, c.Rcode = "A", "udp", "NOERROR"
	}
	if mod != nil {
		mod(&c)
	}
	return c
}

type probeCase struct {
	name   string
	check  configs.Check
	target string
	ok     bool
	errHas string // part of the error when !ok
	// timedOut: the error is a timeout (Check and the connector word
	// it differently), in place of errHas.
	timedOut bool
}

// runCases runs each case through Check, as anyctl probe and the checks
// the connector cannot run do, and, where the probe can, on a connector,
// as a Monitor runs it: both must come to the case's verdict.
func runCases(t *testing.T, cases []probeCase) {
	t.Helper()
	conn := runningConnector(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(tc.check, target(t, tc.target))
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			expect := func(how string, r Result) {
				t.Helper()
				if r.OK != tc.ok {
					t.Fatalf("%s: OK = %v, want %v (err %v, detail %q)", how, r.OK, tc.ok, r.Err, r.Detail)
				}
				switch {
				case tc.ok:
				case tc.timedOut:
					if !timedOut(r.Err) {
						t.Errorf("%s: error %v should be a timeout", how, r.Err)
					}
				case r.Err == nil || !strings.Contains(r.Err.Error(), tc.errHas):
					t.Errorf("%s: error %v should contain %q", how, r.Err, tc.errHas)
				}
			}
			r := Run(context.Background(), p, tc.check.Timeout)
			expect("Check", r)
			if cp, ok := p.(connectorProbe); ok {
				if addr, conv, ok := cp.onConnector(); ok {
					got := make(chan Result, 1)
					conn.start(addr, tc.check.Timeout, conv, func(r Result) { got <- r }, func() { got <- Result{Err: errors.New("undone")} })
					c := <-got
					expect("connector", c)
					if c.Detail != r.Detail {
						t.Errorf("connector: detail %q, Check's %q", c.Detail, r.Detail)
					}
				}
			}
		})
	}
}

func TestTCPProbe(t *testing.T) {
	addr := serve(t, func(c net.Conn) {
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		switch string(buf[:n]) {
		case "PING\r\n":
			c.Write([]byte("+PONG\r\n"))
		case "SLOW\r\n":
			time.Sleep(2 * time.Second)
		case "BYE\r\n":
		default:
			c.Write([]byte("-ERR unknown\r\n"))
		}
	})
	runCases(t, []probeCase{
		{"connect", check("tcp", nil), addr, true, "", false},
		{"refused", check("tcp", nil), closedPort(t), false, "connection refused", false},
		{"send and expect", check("tcp", func(c *configs.Check) { c.Send, c.Expect = "PING\r\n", "+PONG" }), addr, true, "", false},
		{"wrong reply", check("tcp", func(c *configs.Check) { c.Send, c.Expect = "HELLO\r\n", "+PONG" }), addr, false, `expected "+PONG", got "-ERR unknown\r\n"`, false},
		{"slow server", check("tcp", func(c *configs.Check) { c.Send, c.Expect = "SLOW\r\n", "+PONG" }), addr, false, "", true},
		{"closes", check("tcp", func(c *configs.Check) { c.Send, c.Expect = "BYE\r\n", "+PONG" }), addr, false, `got "": EOF`, false},
	})
}

func TestHTTPProbe(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			io.WriteString(w, "status: green\n")
		case "/unavailable":
			http.Error(w, "maintenance", http.StatusServiceUnavailable)
		case "/slow":
			time.Sleep(2 * time.Second)
		case "/redirect":
			http.Redirect(w, r, "/ok", http.StatusFound)
		case "/vhost":
			if r.Host != "www.example.com" {
				http.Error(w, "unknown host "+r.Host, http.StatusNotFound)
			}
		case "/post":
			if r.Method != http.MethodHead {
				http.Error(w, "HEAD only", http.StatusMethodNotAllowed)
			}
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	path := func(p string, more ...func(*configs.Check)) configs.Check {
		return check("http", func(c *configs.Check) {
			c.Path = p
			for _, m := range more {
				m(c)
			}
		})
	}
	runCases(t, []probeCase{
		{"up", path("/ok"), addr, true, "", false},
		{"wrong status", path("/unavailable"), addr, false, "status 503 is not one of 200-299", false},
		{"status list", path("/unavailable", func(c *configs.Check) { c.Status = []string{"200", "503"} }), addr, true, "", false},
		{"body matches", path("/ok", func(c *configs.Check) { c.Body = `status: (green|yellow)` }), addr, true, "", false},
		{"wrong body", path("/ok", func(c *configs.Check) { c.Body = `status: red` }), addr, false, `body does not match "status: red"`, false},
		{"timeout", path("/slow"), addr, false, "", true},
		{"refused", path("/ok"), closedPort(t), false, "connection refused", false},
		{"redirect not followed", path("/redirect"), addr, false, "status 302", false},
		{"redirect followed", path("/redirect", func(c *configs.Check) { c.FollowRedirects = true }), addr, true, "", false},
		{"host header", path("/vhost", func(c *configs.Check) { c.Host = "www.example.com" }), addr, true, "", false},
		{"wrong host", path("/vhost"), addr, false, "status 404", false},
		{"method", path("/post", func(c *configs.Check) { c.Method = "HEAD" }), addr, true, "", false},
		{"not HTTP", path("/"), rawServer(t, "SSH-2.0-OpenSSH_9.2\r\n\r\n"), false, "malformed HTTP response", false},
		{"closed without an answer", path("/"), rawServer(t, ""), false, "read the answer: unexpected EOF", false},
		{"headers cut short", path("/"), rawServer(t, "HTTP/1.1 200 OK\r\nContent-"), false, "read the answer: malformed MIME header", false},
	})
}

// rawServer answers every connection with answer, as soon as the request
// is in, and closes it.
func rawServer(t *testing.T, answer string) string {
	return serve(t, func(c net.Conn) {
		buf := make([]byte, 4096)
		c.Read(buf)
		io.WriteString(c, answer)
	})
}

// serve runs handle on every connection to a loopback listener (closing
// the connection after it) until the test ends; it returns the address.
func serve(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// TestWhichChecksRunOnTheConnector: a Monitor runs tcp checks (but those
// that send without expecting) and plain HTTP checks on its connector;
// TLS, a body to match and redirects to follow go through Check.
func TestWhichChecksRunOnTheConnector(t *testing.T) {
	cases := []struct {
		name  string
		check configs.Check
		on    bool
		talks bool
	}{
		{"tcp connect", check("tcp", nil), true, false},
		{"tcp send and expect", check("tcp", func(c *configs.Check) { c.Send, c.Expect = "PING\r\n", "+PONG" }), true, true},
		{"tcp expect a banner", check("tcp", func(c *configs.Check) { c.Expect = "SSH-" }), true, true},
		{"tcp send only", check("tcp", func(c *configs.Check) { c.Send = "QUIT\r\n" }), false, false},
		{"http", check("http", nil), true, true},
		{"http with a body to match", check("http", func(c *configs.Check) { c.Body = "ok" }), false, false},
		{"http following redirects", check("http", func(c *configs.Check) { c.FollowRedirects = true }), false, false},
		{"https", check("https", func(c *configs.Check) { c.Insecure = true }), false, false},
		{"udp", check("udp", nil), false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(tc.check, target(t, "127.0.0.1:80"))
			if err != nil {
				t.Fatal(err)
			}
			on, talks := false, false
			if cp, ok := p.(connectorProbe); ok {
				var conv *conversation
				_, conv, on = cp.onConnector()
				talks = conv != nil
			}
			if on != tc.on || talks != tc.talks {
				t.Errorf("on the connector %v (talks %v), want %v (%v)", on, talks, tc.on, tc.talks)
			}
		})
	}
}

func TestHTTPThroughVIPSetsHost(t *testing.T) {
	var got string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got = r.Host }))
	defer srv.Close()
	tg := target(t, strings.TrimPrefix(srv.URL, "http://"))
	tg.VIP = netip.MustParseAddr("198.51.100.10")
	p, err := New(check("http", func(c *configs.Check) { c.ThroughVIP = true }), tg)
	if err != nil {
		t.Fatal(err)
	}
	if r := Run(context.Background(), p, time.Second); !r.OK || got != "198.51.100.10" {
		t.Fatalf("through_vip: ok %v err %v, Host %q", r.OK, r.Err, got)
	}
}

// writeCert writes a certificate (and key) for the given names, signed by
// itself, and returns the file names.
func writeCert(t *testing.T, dir, name string) (certFile, keyFile string, cert tls.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	cert, err = tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, cert
}

func TestHTTPSProbe(t *testing.T) {
	dir := t.TempDir()
	// httptest's self-signed certificate is for 127.0.0.1 and example.com.
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	ca := filepath.Join(dir, "server-ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600)
	addr := strings.TrimPrefix(srv.URL, "https://")

	// A server that wants a client certificate.
	clientCert, clientKey, clientTLS := writeCert(t, dir, "client")
	pool := x509.NewCertPool()
	pool.AddCert(clientTLS.Leaf)
	mtls := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	mtls.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	mtls.StartTLS()
	defer mtls.Close()
	mtlsAddr := strings.TrimPrefix(mtls.URL, "https://")

	https := func(mod func(*configs.Check)) configs.Check { return check("https", mod) }
	runCases(t, []probeCase{
		{"verify off", https(func(c *configs.Check) { c.Insecure = true }), addr, true, "", false},
		{"unknown authority", https(nil), addr, false, "certificate", false},
		{"with CA and server name", https(func(c *configs.Check) { c.CACert, c.ServerName = ca, "example.com" }), addr, true, "", false},
		{"wrong server name", https(func(c *configs.Check) { c.CACert, c.ServerName = ca, "www.example.org" }), addr, false, "www.example.org", false},
		{"client certificate", https(func(c *configs.Check) { c.Insecure, c.ClientCert, c.ClientKey = true, clientCert, clientKey }), mtlsAddr, true, "", false},
		{"client certificate missing", https(func(c *configs.Check) { c.Insecure = true }), mtlsAddr, false, "certificate", false},
		{"plain http server", https(func(c *configs.Check) { c.Insecure = true }), closedPort(t), false, "connection refused", false},
	})
}

func TestUDPProbe(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if string(buf[:n]) == "silent" {
				continue
			}
			pc.WriteTo(append([]byte("echo:"), buf[:n]...), from)
		}
	}()
	addr := pc.LocalAddr().String()
	// A UDP port nobody listens on: the kernel answers ICMP port unreachable.
	dead, _ := net.ListenPacket("udp", "127.0.0.1:0")
	deadAddr := dead.LocalAddr().String()
	dead.Close()
	udp := func(send, expect string) configs.Check {
		return check("udp", func(c *configs.Check) { c.Send, c.Expect = send, expect })
	}
	runCases(t, []probeCase{
		{"reply", udp("hello", ""), addr, true, "", false},
		{"expected reply", udp("hello", "echo:hello"), addr, true, "", false},
		{"wrong reply", udp("hello", "pong"), addr, false, `does not contain "pong"`, false},
		{"no reply", udp("silent", ""), addr, false, "no reply", false},
		{"port unreachable", udp("hello", ""), deadAddr, false, "port unreachable", false},
	})
}

func TestDNSProbe(t *testing.T) {
	mux := dns.NewServeMux()
	mux.HandleFunc("example.com.", func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Authoritative = true
		if q.Question[0].Name == "health.example.com." && q.Question[0].Qtype == dns.TypeA {
			rr, _ := dns.NewRR("health.example.com. 5 IN A 192.0.2.1")
			m.Answer = append(m.Answer, rr)
		} else if q.Question[0].Name != "health.example.com." {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})
	// The same port for UDP and TCP: a free UDP port may be taken for
	// TCP by someone else, so try a few.
	var pc net.PacketConn
	var ln net.Listener
	for try := 0; ln == nil; try++ {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err != nil {
			pc.Close()
			if try == 20 {
				t.Fatal(err)
			}
		}
	}
	udpSrv := &dns.Server{PacketConn: pc, Handler: mux}
	tcpSrv := &dns.Server{Listener: ln, Handler: mux}
	go udpSrv.ActivateAndServe()
	go tcpSrv.ActivateAndServe()
	defer udpSrv.Shutdown()
	defer tcpSrv.Shutdown()
	addr := pc.LocalAddr().String()
	q := func(mod func(*configs.Check)) configs.Check {
		return check("dns", func(c *configs.Check) {
			c.Query = "health.example.com."
			if mod != nil {
				mod(c)
			}
		})
	}
	runCases(t, []probeCase{
		{"udp", q(nil), addr, true, "", false},
		{"tcp", q(func(c *configs.Check) { c.Transport = "tcp" }), addr, true, "", false},
		{"answer", q(func(c *configs.Check) { c.Answer = "192.0.2.1" }), addr, true, "", false},
		{"wrong answer", q(func(c *configs.Check) { c.Answer = "192.0.2.99" }), addr, false, `no answer contains "192.0.2.99"`, false},
		{"wrong rcode", q(func(c *configs.Check) { c.Query = "missing.example.com." }), addr, false, "rcode NXDOMAIN, want NOERROR", false},
		{"expected nxdomain", q(func(c *configs.Check) { c.Query, c.Rcode = "missing.example.com.", "NXDOMAIN" }), addr, true, "", false},
		{"no server", q(func(c *configs.Check) { c.Transport = "tcp" }), closedPort(t), false, "connection refused", false},
	})
}

func TestExecProbe(t *testing.T) {
	// Forking a process can take long on a loaded CI machine: a timeout
	// that only a hang reaches.
	exe := func(argv ...string) configs.Check {
		return check("exec", func(c *configs.Check) { c.Command, c.Timeout, c.Interval = argv, 5*time.Second, 10*time.Second })
	}
	runCases(t, []probeCase{
		{"exit 0", exe("true"), "127.0.0.1:80", true, "", false},
		{"exit 1", exe("false"), "127.0.0.1:80", false, "exit status 1", false},
		{"target in env", exe("sh", "-c", `test "$ANYCASTD_TARGET_ADDR:$ANYCASTD_TARGET_PORT" = 127.0.0.1:8080`), "127.0.0.1:8080", true, "", false},
		{"missing program", exe("/nonexistent/check"), "127.0.0.1:80", false, "no such file", false},
	})

	p, _ := New(exe("sh", "-c", "echo backend degraded; exit 3"), target(t, "127.0.0.1:80"))
	r := Run(context.Background(), p, time.Second)
	if r.OK || r.Output != "backend degraded" || r.Detail != "exit 3" {
		t.Errorf("output kept for anyctl: ok %v output %q detail %q", r.OK, r.Output, r.Detail)
	}

	// A hanging command and its children are killed at the timeout.
	p, _ = New(exe("sh", "-c", "sleep 30 & sleep 30; wait"), target(t, "127.0.0.1:80"))
	start := time.Now()
	r = Run(context.Background(), p, 200*time.Millisecond)
	if r.OK || !strings.Contains(r.Err.Error(), "killed") {
		t.Errorf("hanging command: ok %v err %v", r.OK, r.Err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("the probe did not honour its timeout")
	}
}

func TestNewRefusesWhatItCannotBuild(t *testing.T) {
	tg := Target{Addr: netip.MustParseAddrPort("127.0.0.1:80")}
	for _, c := range []configs.Check{
		check("https", func(c *configs.Check) { c.CACert = "/nonexistent/ca.pem" }),
		check("https", func(c *configs.Check) { c.ClientCert, c.ClientKey = "/nonexistent/c.crt", "/nonexistent/c.key" }),
		check("http", func(c *configs.Check) { c.Body = "(" }),
		check("dns", func(c *configs.Check) { c.Query, c.QueryType = "a.example.", "BOGUS" }),
		{Type: "smtp"},
	} {
		if _, err := New(c, tg); err == nil {
			t.Errorf("New(%+v) should fail", c)
		}
	}
}
