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
	conv   *conversation
}

func newTCP(c configs.Check, t Target) *tcpProbe {
	p := &tcpProbe{ap: t.Addr, addr: t.Addr.String(), send: []byte(c.Send), expect: []byte(c.Expect)}
	p.conv = &conversation{send: p.send, judge: p.judge}
	return p
}

// onConnector is how a Monitor runs the check on its connector rather
// than through Check: a connect, and for a check that expects an answer,
// what it sends and the answer judged as Check judges it. A check that
// sends without expecting, or to an address with a zone, runs through
// Check.
func (p *tcpProbe) onConnector() (netip.AddrPort, *conversation, bool) {
	if p.ap.Addr().Zone() != "" || len(p.expect) == 0 && len(p.send) > 0 {
		return netip.AddrPort{}, nil, false
	}
	if len(p.expect) == 0 {
		return p.ap, nil, true
	}
	return p.ap, p.conv, true
}

// judge is the conversation's judge: the expected bytes anywhere in the
// answer.
func (p *tcpProbe) judge(got []byte, end error) (Result, bool) {
	if bytes.Contains(got, p.expect) {
		return Result{OK: true, Detail: fmt.Sprintf("got %q", p.expect)}, true
	}
	if end == nil {
		return Result{}, false
	}
	return fail("expected %q, got %q: %w", p.expect, got, end), true
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
