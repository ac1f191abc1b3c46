package health

import (
	"context"
	"fmt"
	"strings"

	"github.com/anycastd/anycastd/configs"
	"github.com/miekg/dns"
)

// dnsProbe asks one question and checks the rcode (and an answer).
type dnsProbe struct {
	addr   string
	client *dns.Client
	msg    *dns.Msg
	rcode  int
	answer string
}

func newDNS(c configs.Check, t Target) (*dnsProbe, error) {
	qtype, ok := dns.StringToType[strings.ToUpper(c.QueryType)]
	if !ok {
		return nil, fmt.Errorf("query_type %q is not a DNS type", c.QueryType)
	}
	rcode, ok := dns.StringToRcode[strings.ToUpper(c.Rcode)]
	if !ok {
		return nil, fmt.Errorf("rcode %q is not a DNS rcode", c.Rcode)
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(c.Query), qtype)
	m.RecursionDesired = false
	return &dnsProbe{addr: t.Addr.String(), client: &dns.Client{Net: c.Transport}, msg: m, rcode: rcode, answer: c.Answer}, nil
}

func (p *dnsProbe) Check(ctx context.Context) Result {
	m := p.msg.Copy()
	m.Id = dns.Id()
	r, _, err := p.client.ExchangeContext(ctx, m, p.addr)
	if err != nil {
		return Result{Err: err}
	}
	detail := fmt.Sprintf("%s, %d answers", dns.RcodeToString[r.Rcode], len(r.Answer))
	if r.Rcode != p.rcode {
		return Result{Detail: detail, Err: fmt.Errorf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[p.rcode])}
	}
	if p.answer != "" {
		for _, rr := range r.Answer {
			if strings.Contains(rr.String(), p.answer) {
				return Result{OK: true, Detail: detail}
			}
		}
		return Result{Detail: detail, Err: fmt.Errorf("no answer contains %q", p.answer)}
	}
	return Result{OK: true, Detail: detail}
}
