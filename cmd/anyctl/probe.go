package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/health"
	"github.com/spf13/cobra"
)

// probeRun is one probe of one target, as anyctl prints it.
type probeRun struct {
	Service   string  `json:"service,omitempty"`
	Type      string  `json:"type"`
	Target    string  `json:"target"`
	OK        bool    `json:"ok"`
	LatencyMS float64 `json:"latency_ms"`
	Detail    string  `json:"detail,omitempty"`
	Error     string  `json:"error,omitempty"`
	Output    string  `json:"output,omitempty"`
	latency   time.Duration
}

func newProbeCmd() *cobra.Command {
	var (
		c          configs.Check
		targetS    string
		vipS       string
		cfgFile    string
		service    string
		backend    string
		count      int
		interval   time.Duration
		output     string
		forwarding string
	)
	cmd := &cobra.Command{
		Use:   "probe (--type T --target ADDR:PORT [options] | --config FILE --service NAME [--backend ADDR]) [-- COMMAND ARGS]",
		Short: "Run a health check once and print the result, its latency and the error",
		Long: `Runs a check the way anycastd runs it, from this host, and prints the
result, the latency and the error: the tool to reach for when a backend is
marked down. Either describe the check with flags, or name a service of a
config file to run its check against its backends (or one of them).

The command of an exec check follows "--". Exit status: 0 when every probe
succeeded, 1 when one failed, 2 for bad usage.`,
		Example: `  anyctl probe --type http --target 10.0.2.11:80 --path /healthz --host www.example.com
  anyctl probe --type https --target 10.0.2.11:443 --server-name www.example.com --insecure
  anyctl probe --type dns --target 10.0.2.21:53 --query health.example.com --rcode NOERROR
  anyctl probe --type exec --target 10.0.2.11:80 -- /usr/local/bin/check-app --quiet
  anyctl probe --config /etc/anycastd/anycastd.yaml --service web --count 5`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "json" {
				return usage("-o %q: want table or json", output)
			}
			if count < 1 {
				return usage("--count %d: at least 1", count)
			}
			type job struct {
				service string
				check   configs.Check
				target  health.Target
			}
			var jobs []job
			if cfgFile != "" || service != "" {
				if cfgFile == "" || service == "" {
					return usage("--config and --service go together")
				}
				if cmd.Flags().Changed("type") || targetS != "" {
					return usage("--type/--target describe a check on the command line; with --service the config describes it")
				}
				cfg, err := configs.Load(cfgFile)
				if err != nil {
					configs.WriteReport(cmd.ErrOrStderr(), cfgFile, err)
					return &exitError{code: exitFailed, err: fmt.Errorf("cannot use %s", cfgFile)}
				}
				i := slices.IndexFunc(cfg.Services, func(s configs.Service) bool { return s.Name == service })
				if i < 0 {
					return usage("no service %q in %s", service, cfgFile)
				}
				s := cfg.Services[i]
				for _, b := range s.Backends {
					if backend != "" && b.Address.String() != backend && netip.AddrPortFrom(b.Address, uint16(b.Port)).String() != backend {
						continue
					}
					jobs = append(jobs, job{s.Name, s.Health, health.CheckTarget(s, b)})
				}
				if len(jobs) == 0 {
					return usage("service %s has no backend %q", service, backend)
				}
			} else {
				if targetS == "" {
					return usage("--target ADDR:PORT is required (or --config with --service)")
				}
				ap, err := netip.ParseAddrPort(targetS)
				if err != nil {
					return usage("--target %q: not ADDR:PORT (IPv6 in brackets)", targetS)
				}
				c.Command = args
				configs.CheckDefaults(&c)
				if err := configs.ValidateCheck("check", &c, forwarding); err != nil {
					var msgs []string
					for _, fe := range configs.FieldErrors(err) {
						msgs = append(msgs, strings.Replace(fe.Error(), "check.", "--", 1))
					}
					return usage("%s", strings.Join(msgs, "; "))
				}
				t := health.Target{Addr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}
				if vipS != "" {
					v, err := netip.ParseAddr(vipS)
					if err != nil {
						return usage("--vip %q: not an IP address", vipS)
					}
					t.VIP = v
				}
				jobs = append(jobs, job{"", c, t})
			}

			var runs []probeRun
			failed := false
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			for n := range count {
				if n > 0 {
					time.Sleep(interval)
				}
				for _, j := range jobs {
					r, err := health.Once(ctx, j.check, j.target)
					if err != nil {
						return &exitError{code: exitFailed, err: err}
					}
					run := probeRun{Service: j.service, Type: j.check.Type, Target: j.target.Addr.String(), OK: r.OK,
						LatencyMS: float64(r.Latency.Microseconds()) / 1000, Detail: r.Detail, Output: r.Output, latency: r.Latency}
					if r.Err != nil {
						run.Error = r.Err.Error()
					}
					failed = failed || !r.OK
					runs = append(runs, run)
					if output == "table" {
						printProbe(cmd.OutOrStdout(), run, j.check)
					}
				}
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				enc.Encode(runs)
			} else if count > 1 {
				printSummary(cmd.OutOrStdout(), runs)
			}
			if failed {
				return &exitError{code: exitFailed}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.Type, "type", "tcp", "check type: tcp, http, https, udp, dns, exec")
	f.StringVar(&targetS, "target", "", "address and port to probe, e.g. 10.0.2.11:80")
	f.StringVar(&vipS, "vip", "", "the service's VIP (with --through-vip: Host header and TLS name)")
	f.BoolVar(&c.ThroughVIP, "through-vip", false, "check as a client of the VIP would (DR/TUN real servers)")
	f.StringVar(&forwarding, "forwarding", "dr", "forwarding of the service the check belongs to (for --through-vip)")
	f.DurationVar(&c.Timeout, "timeout", 2*time.Second, "give up after this long")
	f.StringVar(&c.Send, "send", "", "tcp/udp: bytes to send")
	f.StringVar(&c.Expect, "expect", "", "tcp/udp: bytes the reply must contain")
	f.StringVar(&c.Method, "method", "", "http(s): method (default GET)")
	f.StringVar(&c.Path, "path", "", "http(s): path (default /)")
	f.StringVar(&c.Host, "host", "", "http(s): Host header")
	f.StringSliceVar(&c.Status, "status", nil, "http(s): accepted status codes or ranges (default 200-299)")
	f.StringVar(&c.Body, "body", "", "http(s): regular expression the body must match")
	f.BoolVar(&c.FollowRedirects, "follow-redirects", false, "http(s): follow redirects")
	f.StringVar(&c.ServerName, "server-name", "", "https: TLS server name")
	f.BoolVar(&c.Insecure, "insecure", false, "https: do not verify the certificate")
	f.StringVar(&c.CACert, "ca-cert", "", "https: CA certificate file to verify with")
	f.StringVar(&c.ClientCert, "client-cert", "", "https: client certificate file")
	f.StringVar(&c.ClientKey, "client-key", "", "https: client key file")
	f.StringVar(&c.Query, "query", "", "dns: name to look up")
	f.StringVar(&c.QueryType, "query-type", "", "dns: record type (default A)")
	f.StringVar(&c.Transport, "transport", "", "dns: udp or tcp (default udp)")
	f.StringVar(&c.Rcode, "rcode", "", "dns: expected rcode (default NOERROR)")
	f.StringVar(&c.Answer, "answer", "", "dns: text an answer must contain")
	f.StringVar(&cfgFile, "config", "", "config file with the service (with --service)")
	f.StringVar(&service, "service", "", "run this service's check against its backends")
	f.StringVar(&backend, "backend", "", "with --service: only this backend (ADDR or ADDR:PORT)")
	f.IntVar(&count, "count", 1, "probe this many times")
	f.DurationVar(&interval, "interval", time.Second, "with --count: time between rounds")
	f.StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

func usage(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

func printProbe(w io.Writer, r probeRun, c configs.Check) {
	what := r.Type + " " + r.Target
	switch c.Type {
	case configs.CheckHTTP, configs.CheckHTTPS:
		what += " " + c.Method + " " + c.Path
	case configs.CheckDNS:
		what += " " + c.Query + " " + strings.ToUpper(c.QueryType)
	case configs.CheckExec:
		what += " " + strings.Join(c.Command, " ")
	}
	if r.Service != "" {
		what = r.Service + ": " + what
	}
	lat := r.latency.Round(10 * time.Microsecond)
	if r.OK {
		fmt.Fprintf(w, "%s: UP in %s (%s)\n", what, lat, r.Detail)
	} else {
		fmt.Fprintf(w, "%s: DOWN in %s: %s\n", what, lat, r.Error)
	}
	if r.Output != "" {
		for l := range strings.SplitSeq(r.Output, "\n") {
			fmt.Fprintf(w, "  | %s\n", l)
		}
	}
}

func printSummary(w io.Writer, runs []probeRun) {
	by := map[string][]probeRun{}
	var order []string
	for _, r := range runs {
		k := r.Service + " " + r.Type + " " + r.Target
		if _, ok := by[k]; !ok {
			order = append(order, k)
		}
		by[k] = append(by[k], r)
	}
	for _, k := range order {
		rs := by[k]
		up := 0
		lats := make([]time.Duration, 0, len(rs))
		for _, r := range rs {
			if r.OK {
				up++
			}
			lats = append(lats, r.latency)
		}
		slices.Sort(lats)
		fmt.Fprintf(w, "%s: %d/%d up, latency min %s median %s max %s\n", strings.TrimSpace(k), up, len(rs),
			lats[0].Round(10*time.Microsecond), lats[len(lats)/2].Round(10*time.Microsecond), lats[len(lats)-1].Round(10*time.Microsecond))
	}
}
