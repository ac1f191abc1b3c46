package health

import (
	"net"
	"net/netip"
	"testing"
)

// flapServer is a loopback TCP listener that can be stopped and started
// again on the same port.
type flapServer struct {
	t    *testing.T
	addr netip.AddrPort
	ln   net.Listener
}

func newFlapServer(t *testing.T) *flapServer {
	s := &flapServer{t: t}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = netip.MustParseAddrPort(ln.Addr().String())
	s.serve(ln)
	t.Cleanup(s.stop)
	return s
}

func (s *flapServer) serve(ln net.Listener) {
	s.ln = ln
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

func (s *flapServer) stop() {
	if s.ln != nil {
		s.ln.Close()
		s.ln = nil
	}
}

func (s *flapServer) start() {
	ln, err := net.Listen("tcp", s.addr.String())
	if err != nil {
		s.t.Fatal(err)
	}
	s.serve(ln)
}
