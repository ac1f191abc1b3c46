package health

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/anycastd/anycastd/configs"
)

// tcpProbe connects, optionally sends bytes and expects bytes back.
type tcpProbe struct {
	ap     netip.AddrPort
	addr   string
	send   []byte
	expect []byte
}

func newTCP(c configs.Check, t Target) *tcpProbe {
	return &tcpProbe{ap: t.Addr, addr: t.Addr.String(), send: []byte(c.Send), expect: []byte(c.Expect)}
}

// connectOnly tells a check that only connects (no send, no expect), which
// a Monitor runs on its connector rather than through Check.
func (p *tcpProbe) connectOnly() bool {
	return len(p.send) == 0 && len(p.expect) == 0 && p.ap.Addr().Zone() == ""
}

func (p *tcpProbe) Check(ctx context.Context) Result {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return Result{Err: err}
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if len(p.send) > 0 {
		if _, err := conn.Write(p.send); err != nil {
			return fail("send: %w", err)
		}
	}
	if len(p.expect) == 0 {
		return Result{OK: true, Detail: "connected"}
	}
	got, err := readUntil(conn, p.expect)
	if err != nil {
		return fail("expected %q, got %q: %w", p.expect, got, err)
	}
	return Result{OK: true, Detail: fmt.Sprintf("got %q", p.expect)}
}

// readUntil reads until want appears in what was read, up to 64 KiB.
func readUntil(conn net.Conn, want []byte) ([]byte, error) {
	buf := make([]byte, 0, 512)
	tmp := make([]byte, 512)
	for len(buf) < 64<<10 {
		n, err := conn.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if bytes.Contains(buf, want) {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
	return buf, fmt.Errorf("not found in the first 64 KiB")
}
