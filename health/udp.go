package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/anycastd/anycastd/configs"
)

// udpProbe sends a datagram and waits for a reply. A connected UDP socket
// receives the ICMP port unreachable as ECONNREFUSED: down at once.
type udpProbe struct {
	addr   string
	send   []byte
	expect []byte
}

func newUDP(c configs.Check, t Target) *udpProbe {
	return &udpProbe{addr: t.Addr.String(), send: []byte(c.Send), expect: []byte(c.Expect)}
}

func (p *udpProbe) Check(ctx context.Context) Result {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", p.addr)
	if err != nil {
		return Result{Err: err}
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if _, err := conn.Write(p.send); err != nil {
		return Result{Err: fmt.Errorf("send: %w", err)}
	}
	buf := make([]byte, 64<<10)
	n, err := conn.Read(buf)
	if errors.Is(err, syscall.ECONNREFUSED) {
		return Result{Err: errors.New("port unreachable (ICMP)")}
	}
	if err != nil {
		return Result{Err: fmt.Errorf("no reply: %w", err)}
	}
	if len(p.expect) > 0 && !bytes.Contains(buf[:n], p.expect) {
		return fail("reply %q does not contain %q", buf[:min(n, 64)], p.expect)
	}
	return Result{OK: true, Detail: fmt.Sprintf("%d-byte reply", n)}
}
