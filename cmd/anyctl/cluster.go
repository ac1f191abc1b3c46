package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/anycastd/anycastd/api"
	"github.com/anycastd/anycastd/configs"
	"github.com/pmezard/go-difflib/difflib"
	"github.com/spf13/cobra"
)

// output is the -o flag of read commands.
type output struct{ format string }

func (o *output) flag(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&o.format, "output", "o", "table", "table (for people) or json (for scripts)")
}

func (o *output) check() error {
	if o.format != "table" && o.format != "json" {
		return &exitError{code: exitUsage, err: fmt.Errorf("-o %q: not table or json", o.format)}
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// readCmd is a command that GETs one API path and renders it.
func readCmd[T any](c *conn, use, short, long, path string, render func(io.Writer, T, time.Time), exit func(T) error) *cobra.Command {
	var o output
	cmd := &cobra.Command{
		Use: use, Short: short, Long: long, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.check(); err != nil {
				return err
			}
			var v T
			if err := c.call(cmd.Context(), http.MethodGet, path, nil, &v); err != nil {
				return err
			}
			if o.format == "json" {
				if err := writeJSON(cmd.OutOrStdout(), v); err != nil {
					return err
				}
			} else {
				render(cmd.OutOrStdout(), v, time.Now())
			}
			if exit != nil {
				return exit(v)
			}
			return nil
		},
	}
	o.flag(cmd)
	return cmd
}

func newClusterCmds(c *conn) []*cobra.Command {
	members := readCmd(c, "members", "List the directors: role, health, config, announcements",
		`Shows every director in this director's gossip view: its address, liveness,
role (active: announces; standby: eligible beyond max_active; ineligible:
unhealthy, drained or gone), health with the reason, drained, applied config
version, announced VIPs, routing peers up/total and age.

Exit code 1 if a member is unhealthy, runs another config, or failed
(dead); a member that left on purpose (left) is shown for a while and is
not a failure.`,
		"/v1/members", renderMembers, func(r api.MembersResponse) error {
			var bad []string
			for _, m := range r.Members {
				if m.State == "left" {
					continue
				}
				if m.State != "alive" || !m.Healthy || m.Bad != "" {
					bad = append(bad, m.Name)
				}
			}
			versions := map[string]bool{}
			for _, m := range r.Members {
				if m.State == "alive" {
					versions[cfgName(m.ConfigVersion, m.ConfigHash)] = true
				}
			}
			if len(bad) > 0 {
				return &exitError{code: exitFailed, err: fmt.Errorf("not all members are healthy: %s", strings.Join(bad, ", "))}
			}
			if len(versions) > 1 {
				return &exitError{code: exitFailed, err: fmt.Errorf("members run different configs: %s", strings.Join(serviceNames(versions), ", "))}
			}
			return nil
		})
	status := readCmd(c, "status", "Show this director: role, health checks, config, VIPs, routing peers",
		"Shows this director's state. Exit code 1 if it is unhealthy, behind the cluster's config or drained.",
		"/v1/status", renderStatus, func(s api.StatusResponse) error {
			if !s.Eligible || s.Reason != "" {
				return &exitError{code: exitFailed, err: fmt.Errorf("this director does not announce: %s", s.Reason)}
			}
			return nil
		})
	services := readCmd(c, "services", "Show the virtual services, their backends, health and IPVS state",
		`Shows every virtual service of the applied cluster config with its backends:
configured weight, weight in IPVS, health here (with the last probe's
result), active and inactive connections.`,
		"/v1/services", renderServices, nil)
	announcements := readCmd(c, "announcements", "Show the routing sessions and what is announced",
		"", "/v1/announcements", func(w io.Writer, a api.AnnouncementsResponse, now time.Time) {
			renderStatus(w, api.StatusResponse{VIPs: a.VIPs, Peers: a.Peers, Mode: a.Mode}, now)
		}, nil)
	announcements.Hidden = false

	var reason string
	drain := &cobra.Command{
		Use:   "drain",
		Short: "Take this director out of service gracefully (kept across restarts)",
		Long: `Drains this director: it announces its VIPs with GRACEFUL_SHUTDOWN for
routing.bgp.graceful_shutdown so the upstream moves flows away, then
withdraws them; a standby takes its place. IPVS entries stay, so existing
connections continue. The flag survives a restart; undrain clears it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var d api.DrainView
			if err := c.call(cmd.Context(), http.MethodPost, "/v1/drain", api.DrainRequest{Reason: reason}, &d); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "drained (%s); watch `anyctl status` until the VIPs are withdrawn\n", orDash(d.Reason))
			warnNotSaved(cmd, d)
			return nil
		},
	}
	drain.Flags().StringVar(&reason, "reason", "", "why, shown to the other operators")
	undrain := &cobra.Command{
		Use:   "undrain",
		Short: "Put this director back in service",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var d api.DrainView
			if err := c.call(cmd.Context(), http.MethodPost, "/v1/undrain", nil, &d); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "undrained; it announces again once healthy and in the active set")
			warnNotSaved(cmd, d)
			return nil
		},
	}
	return []*cobra.Command{members, status, services, announcements, drain, undrain, newApplyCmd(c), newConfigCmd(c)}
}

func newConfigCmd(c *conn) *cobra.Command {
	return &cobra.Command{
		Use:   "config",
		Short: "Print the cluster's applied services config (JSON)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var cur api.ConfigResponse
			if err := c.call(cmd.Context(), http.MethodGet, "/v1/config", nil, &cur); err != nil {
				return err
			}
			return writeJSON(cmd.OutOrStdout(), cur)
		},
	}
}

func newApplyCmd(c *conn) *cobra.Command {
	var (
		file string
		yes  bool
		now  bool
	)
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Make a file's services the cluster's config (shows the diff first)",
		Long: `Reads the services of FILE (a whole anycastd config, or one with only
services: and optionally health:), validates them, shows how they differ from
the cluster's config and, once confirmed (or with --yes), sends them to this
director, which versions, signs and replicates them to every director.

The change is rolled out in stages: to one warm standby first (no traffic at
risk), then to one active director, then to the rest. Each stage holds for
the checks' rise/fall time, until the directors it reached report that the
kernel took every service and no backend, no VIP and not their own health is
worse off than under the previous services. A stage that makes something
worse stops the rollout and the cluster goes back to the previous services by
itself (exit 1, with the reason). apply follows the stages until the end;
interrupted, the rollout goes on (anyctl config shows it). --now applies the
services on every director at once, for emergencies (and ends a rollout in
progress).

The change is made against the config version shown: if someone else changed
the cluster meanwhile, it is refused (exit 1) and nothing changes; run it
again to see the new diff. Remember to update the config files too: a
director only proposes its file's services when the file itself changes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return &exitError{code: exitUsage, err: fmt.Errorf("-f FILE is required")}
			}
			data, err := os.ReadFile(file)
			if err != nil {
				return &exitError{code: exitFailed, err: err}
			}
			services, err := configs.ParseServices(data)
			if err != nil {
				configs.WriteReport(cmd.ErrOrStderr(), file, err)
				return &exitError{code: exitFailed, err: fmt.Errorf("%s is invalid; nothing applied", file)}
			}
			var cur api.ConfigResponse
			if err := c.call(cmd.Context(), http.MethodGet, "/v1/config", nil, &cur); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			changed := writeServicesDiff(out, cur, services)
			if !changed {
				fmt.Fprintf(out, "no change: the cluster already runs these services (%s)\n", cfgName(cur.Version, cur.Hash))
				return nil
			}
			if !yes {
				fmt.Fprintf(out, "Apply to the cluster (now %s)? [y/N] ", cfgName(cur.Version, cur.Hash))
				line, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
				if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
					return &exitError{code: exitFailed, err: fmt.Errorf("not applied")}
				}
			}
			var res api.ConfigResponse
			req := api.ApplyRequest{BaseVersion: cur.Version, BaseHash: cur.Hash, Services: services, Now: now}
			if err := c.call(cmd.Context(), http.MethodPost, "/v1/config", req, &res); err != nil {
				var ae *api.Error
				if errors.As(err, &ae) && ae.Status == http.StatusConflict {
					// Another change won: show it against this one.
					var won api.ConfigResponse
					if c.call(cmd.Context(), http.MethodGet, "/v1/config", nil, &won) == nil {
						fmt.Fprintf(out, "NOT APPLIED: %s\nthe cluster runs %s by %s; its difference from your file:\n", ae.Response.Error, cfgName(won.Version, won.Hash), orDash(won.Author))
						writeServicesDiff(out, won, services)
					}
				}
				return err
			}
			if res.Rollout != nil && res.Rollout.Outcome == "" {
				return followRollout(cmd.Context(), c, out, res, cur)
			}
			if len(res.Pending) > 0 {
				return &exitError{code: exitFailed, err: fmt.Errorf("applied here as %s, but not confirmed yet by %s: see `anyctl members`",
					cfgName(res.Version, res.Hash), strings.Join(res.Pending, ", "))}
			}
			fmt.Fprintf(out, "applied: every director runs %s now (was %s)\n", cfgName(res.Version, res.Hash), cfgName(cur.Version, cur.Hash))
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "config file with the services")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask")
	cmd.Flags().BoolVar(&now, "now", false, "apply on every director at once, without stages (emergencies)")
	return cmd
}

// rolloutPoll is how often apply looks at a rollout's progress.
var rolloutPoll = 250 * time.Millisecond

// followRollout prints a staged rollout's stages and the reached
// directors' verdicts as they come, until it ends: rolled out (nil) or
// rolled back, or ended by another change (exit 1).
func followRollout(ctx context.Context, c *conn, out io.Writer, started, was api.ConfigResponse) error {
	r := started.Rollout
	fmt.Fprintf(out, "rollout %s started: a warm standby first, then one active director, then the rest; each stage holds %s\n",
		cfgName(started.Version, started.Hash), r.Hold.Round(time.Millisecond))
	reached := 0
	verdicts := map[string]string{}
	tick := time.NewTicker(rolloutPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintf(out, "stopped following: the rollout goes on (anyctl config shows it)\n")
			return &exitError{code: exitFailed, err: ctx.Err()}
		case <-tick.C:
		}
		var cur api.ConfigResponse
		if err := c.call(ctx, http.MethodGet, "/v1/config", nil, &cur); err != nil {
			return err
		}
		cr := cur.Rollout
		switch {
		case cr != nil && cr.ID > r.ID:
			// Ours ended (or was ended) and another rollout began
			// between two looks: how ours went is not known here.
			return &exitError{code: exitFailed, err: fmt.Errorf("another rollout (%s by %s) began before this one's end was seen here: its outcome is unknown (anyctl config, the daemons' logs)",
				cfgName(cur.Version, cur.Hash), orDash(cur.Author))}
		case cr == nil || cr.ID != r.ID:
			return &exitError{code: exitFailed, err: fmt.Errorf("the rollout was ended by a change made at once (--now, or a director's config file): the cluster runs %s by %s",
				cfgName(cur.Version, cur.Hash), orDash(cur.Author))}
		}
		if len(cr.Reached) > reached {
			verb := "run"
			if len(cr.Reached)-reached == 1 {
				verb = "runs"
			}
			fmt.Fprintf(out, "  stage %s: %s now %s the new services\n", cr.Stage, strings.Join(cr.Reached[reached:], ", "), verb)
			reached = len(cr.Reached)
		}
		for _, name := range cr.Reached {
			rep, ok := cr.Reports[name]
			if !ok || verdicts[name] == rep.State {
				continue
			}
			verdicts[name] = rep.State
			switch rep.State {
			case "holding":
				fmt.Fprintf(out, "    %s: holding until %s\n", name, rep.Until.Local().Format(time.TimeOnly))
			case "ok":
				fmt.Fprintf(out, "    %s: nothing worse off\n", name)
			default:
				fmt.Fprintf(out, "    %s: WORSE: %s\n", name, strings.Join(rep.Problems, "; "))
			}
		}
		switch cr.Outcome {
		case "rolled_out":
			fmt.Fprintf(out, "rolled out: every director runs %s (was %s)\n", cfgName(cur.Version, cur.Hash), cfgName(was.Version, was.Hash))
			return nil
		case "rolled_back":
			fmt.Fprintf(out, "ROLLED BACK: %s\nthe cluster runs the previous services again as %s\n", cr.Reason, cfgName(cur.Version, cur.Hash))
			return &exitError{code: exitFailed, err: fmt.Errorf("rolled back: %s", cr.Reason)}
		}
	}
}

// writeServicesDiff prints, per service, what apply would change, and
// reports whether anything would.
func writeServicesDiff(w io.Writer, cur api.ConfigResponse, next []configs.Service) bool {
	render := func(s configs.Service) string {
		b, _ := json.MarshalIndent(s, "", "  ")
		return string(b) + "\n"
	}
	old := map[string]configs.Service{}
	for _, s := range cur.Services {
		old[s.Name] = s
	}
	seen := map[string]bool{}
	changed := false
	for _, s := range next {
		seen[s.Name] = true
		o, ok := old[s.Name]
		a, b := "", render(s)
		if ok {
			a = render(o)
		}
		if a == b {
			continue
		}
		changed = true
		what := "changed"
		if !ok {
			what = "new"
		}
		fmt.Fprintf(w, "service %s: %s\n", s.Name, what)
		d, _ := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{A: difflib.SplitLines(a), B: difflib.SplitLines(b),
			FromFile: "cluster/" + s.Name, ToFile: "file/" + s.Name, Context: 2})
		fmt.Fprint(w, d)
	}
	for _, s := range cur.Services {
		if !seen[s.Name] {
			changed = true
			fmt.Fprintf(w, "service %s: removed (%s, %d backends)\n", s.Name, s.VIP, len(s.Backends))
		}
	}
	// Only the order changed: that matters (mh, sh).
	if !changed && len(cur.Services) == len(next) {
		for i := range next {
			if cur.Services[i].Name != next[i].Name {
				fmt.Fprintln(w, "the order of the services changed")
				return true
			}
		}
	}
	return changed
}

// warnNotSaved tells the operator that a drain change is in effect but
// would not survive a restart yet.
func warnNotSaved(cmd *cobra.Command, d api.DrainView) {
	if d.SaveError != "" {
		fmt.Fprintf(cmd.ErrOrStderr(), "WARNING: %s; a restart before it is saved would forget it (the director retries the save)\n", d.SaveError)
	}
}
