package api

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serve answers on a unix socket in a temporary dir and returns its path.
func serve(t *testing.T, h http.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestClientCall(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/drain", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "no json", http.StatusBadRequest)
			return
		}
		w.Write([]byte(`{"drained":true,"reason":"maintenance"}`))
	})
	mux.HandleFunc("POST /v1/config", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnprocessableEntity)
		w.Write([]byte(`{"error":"invalid services config (2 problems)","problems":["services[0].vip: required","services[1].port: 0"]}`))
	})
	mux.HandleFunc("GET /v1/teapot", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	mux.HandleFunc("GET /v1/garbage", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("{")) })
	c, err := NewClient(Endpoint{Socket: serve(t, mux), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	var d DrainView
	if err := c.Call(ctx, http.MethodPost, "/v1/drain", DrainRequest{Reason: "maintenance"}, &d); err != nil || !d.Drained || d.Reason != "maintenance" {
		t.Errorf("drain: %+v, %v", d, err)
	}

	err = c.Call(ctx, http.MethodPost, "/v1/config", ApplyRequest{}, nil)
	var ae *Error
	if !errors.As(err, &ae) || ae.Status != http.StatusUnprocessableEntity || len(ae.Response.Problems) != 2 {
		t.Fatalf("refused apply: %#v", err)
	}
	if want := "invalid services config (2 problems):\n  services[0].vip: required\n  services[1].port: 0"; err.Error() != want {
		t.Errorf("error text %q, want %q", err, want)
	}

	// An error answer without the error body still says what failed.
	if err := c.Call(ctx, http.MethodGet, "/v1/teapot", nil, nil); !errors.As(err, &ae) || err.Error() != "GET /v1/teapot: 418 I'm a teapot" {
		t.Errorf("teapot: %v", err)
	}
	if err := c.Call(ctx, http.MethodGet, "/v1/garbage", nil, &d); err == nil || !strings.Contains(err.Error(), "undecodable answer") {
		t.Errorf("garbage: %v", err)
	}
}

func TestClientUnreachable(t *testing.T) {
	c, err := NewClient(Endpoint{Socket: filepath.Join(t.TempDir(), "none.sock")})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Call(context.Background(), http.MethodGet, "/v1/status", nil, nil)
	var ue *UnreachableError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "cannot reach anycastd at ") || !strings.Contains(err.Error(), "is anycastd running") {
		t.Errorf("no daemon: %v", err)
	}
}

func TestClientOptions(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		e      Endpoint
		option string
	}{
		{Endpoint{Server: "http://d1:9443"}, "server"},
		{Endpoint{Server: "https://d1:9443", CAFile: filepath.Join(dir, "nope.pem")}, "cacert"},
		{Endpoint{Server: "https://d1:9443", CertFile: filepath.Join(dir, "c.pem"), KeyFile: filepath.Join(dir, "k.pem")}, "cert/key"},
		{Endpoint{Server: "https://d1:9443", TokenFile: filepath.Join(dir, "token")}, "token-file"},
	} {
		_, err := NewClient(tc.e)
		var oe *OptionError
		if !errors.As(err, &oe) || oe.Option != tc.option {
			t.Errorf("%+v: %v, want an error about %s", tc.e, err, tc.option)
		}
	}
}
