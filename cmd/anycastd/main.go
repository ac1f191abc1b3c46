// Command anycastd is the director daemon: it programs IPVS for the virtual
// services in its config, health-checks the real servers, announces the VIPs
// upstream and gossips with the other directors.
//
// Signals: SIGHUP reloads the config file (as does a change of the file
// itself); SIGTERM or SIGINT drains (GRACEFUL_SHUTDOWN, withdraw), leaves
// the cluster and exits, leaving the IPVS table in place; a second one
// skips the graceful-shutdown hold.
package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/anycastd/anycastd/configs"
	"github.com/anycastd/anycastd/director"
	sd "github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// DefaultConfig is where the daemon looks for its config file.
const DefaultConfig = "/etc/anycastd/anycastd.yaml"

// flagKeys maps the daemon's config-overriding flags to config keys; they
// take precedence over ANYCASTD_* variables, which take precedence over the
// file.
var flagKeys = map[string]string{
	"node-name":   "node.name",
	"state-dir":   "node.state_dir",
	"gossip-bind": "cluster.bind",
	"gossip-port": "cluster.port",
	"seed":        "cluster.seeds",
	"socket":      "api.socket",
	"dataplane":   "node.dataplane",
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, os.LookupEnv))
}

func run(args []string, stdout, stderr io.Writer, env func(string) (string, bool)) int {
	var (
		file        string
		checkConfig bool
		restoreHost bool
		logLevel    string
		logFormat   string
		watch       time.Duration
	)
	cmd := &cobra.Command{
		Use:           "anycastd",
		Short:         "anycast IPVS director daemon",
		Version:       version,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var sigs chan os.Signal
			if !checkConfig && !restoreHost {
				// Caught from the very start to the very end: a reload
				// (SIGHUP) or a stop that arrives while the daemon starts
				// or finishes stopping must be handled or ignored, never
				// kill it with the default action (systemd would see a
				// daemon killed by a signal, a failure).
				sigs = make(chan os.Signal, 8)
				signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
				defer signal.Ignore(syscall.SIGHUP)
			}
			cfg, err := configs.Load(file, configs.WithEnv(env), configs.WithFlags(cmd.Flags(), flagKeys))
			if checkConfig {
				return configs.WriteReport(stdout, file, err)
			}
			if restoreHost {
				if err != nil {
					configs.WriteReport(stderr, file, err)
					return errors.New("invalid config: its node.state_dir holds the journal, nothing restored")
				}
				return restore(cfg, stdout)
			}
			if err != nil {
				configs.WriteReport(stderr, file, err)
				return errors.New("invalid config, not starting")
			}
			log, err := newLogger(stderr, logLevel, logFormat)
			if err != nil {
				return err
			}
			load := func() (*configs.Config, error) {
				return configs.Load(file, configs.WithEnv(env), configs.WithFlags(cmd.Flags(), flagKeys))
			}
			return daemon(cfg, load, file, watch, log, sigs)
		},
	}
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	cmd.SetArgs(args)
	f := cmd.Flags()
	f.StringVarP(&file, "config", "c", DefaultConfig, "config file (YAML)")
	f.BoolVar(&checkConfig, "check-config", false, "load and validate the config (file, ANYCASTD_* environment, flags), print the result and exit")
	f.BoolVar(&restoreHost, "restore-host", false, "undo the host changes this director made (VIPs bound, sysctls set; journaled in node.state_dir), print them and exit; with the daemon stopped, to remove anycastd. The IPVS table is left as it is")
	f.String("node-name", "", "override node.name")
	f.String("state-dir", "", "override node.state_dir")
	f.String("gossip-bind", "", "override cluster.bind")
	f.Int("gossip-port", 0, "override cluster.port")
	f.StringSlice("seed", nil, "override cluster.seeds (repeat or comma-separate)")
	f.String("socket", "", "override api.socket")
	f.String("dataplane", "", "override node.dataplane (kernel or memory)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "text or json")
	f.DurationVar(&watch, "watch", 2*time.Second, "how often to look for a changed config file (0: only on SIGHUP)")
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(stderr, "anycastd:", err)
		return 1
	}
	return 0
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: not debug, info, warn or error", level)
	}
	o := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	}
	return nil, fmt.Errorf("--log-format %q: not text or json", format)
}

// daemon runs the director until a signal on sigs stops it (caught by the
// caller since before the config was read).
func daemon(cfg *configs.Config, load func() (*configs.Config, error), file string, watch time.Duration, log *slog.Logger, sigs <-chan os.Signal) error {
	log = log.With("node", cfg.Node.Name)
	n, err := director.New(director.Options{Config: cfg, Build: version, Log: log})
	if err != nil {
		return err
	}
	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	apiCtx, stopAPI := context.WithCancel(context.Background())
	defer stopAPI()
	apiErr := make(chan error, 1)
	go func() { apiErr <- n.Serve(apiCtx) }()

	var reloadMu sync.Mutex
	lastSum := fileSum(file)
	reload := func(why string) {
		reloadMu.Lock()
		defer reloadMu.Unlock()
		lastSum = fileSum(file)
		nc, err := load()
		if err != nil {
			var problems []string
			for _, fe := range configs.FieldErrors(err) {
				problems = append(problems, fe.Error())
			}
			if len(problems) == 0 {
				problems = []string{err.Error()}
			}
			log.Error("config reload refused: the file is invalid, nothing changed", "why", why, "file", file,
				"errors", len(problems), "problems", strings.Join(problems, "; "))
			return
		}
		if err := n.Reload(nc); err != nil {
			log.Error("config reload failed, nothing changed", "why", why, "err", err)
		}
	}
	go func() {
		stopping := false
		done := runCtx.Done()
		aerr := apiErr
		var tick <-chan time.Time
		if watch > 0 {
			t := time.NewTicker(watch)
			defer t.Stop()
			tick = t.C
		}
		for {
			select {
			case <-done:
				if !stopping {
					return
				}
				done = nil
			case err := <-aerr:
				// The API could not start (or died): an operator would
				// have no way to drive this director. Stop it.
				aerr <- err // for the wait below
				if !stopping {
					stopping = true
					log.Error("API failed; stopping", "err", err)
					stop()
				}
				aerr = nil
			case <-tick:
				reloadMu.Lock()
				changed := fileSum(file) != lastSum
				reloadMu.Unlock()
				if changed {
					reload("file changed")
				}
				continue
			case s := <-sigs:
				switch {
				case s == syscall.SIGHUP:
					reload("SIGHUP")
				case !stopping:
					stopping = true
					log.Info("signal: stopping gracefully (send it again to skip the graceful-shutdown hold)", "signal", s.String())
					stop()
				default:
					log.Warn("second signal: withdrawing now", "signal", s.String())
					n.Abort()
				}
			}
		}
	}()

	go systemdNotify(runCtx, n, log)
	apiDone := apiErr
	runErr := n.Run(runCtx)
	_, _ = sd.SdNotify(false, sd.SdNotifyStopping)
	stopAPI()
	if err := <-apiDone; err != nil && runErr == nil {
		runErr = err
	}
	if runErr != nil {
		log.Error("stopped on an error", "err", runErr)
		return runErr
	}
	log.Info("stopped; the IPVS table is left in place")
	return nil
}

// systemdNotify tells systemd (Type=notify) when the director is ready,
// and, if the unit has WatchdogSec, pets the watchdog while the control
// loop keeps turning: a hung loop gets the daemon restarted. Outside
// systemd it does nothing.
func systemdNotify(ctx context.Context, n *director.Node, log *slog.Logger) {
	select {
	case <-n.Ready():
	case <-ctx.Done():
		return
	}
	if ok, err := sd.SdNotify(false, sd.SdNotifyReady); err != nil {
		log.Warn("systemd notify", "err", err)
	} else if ok {
		log.Info("told systemd: ready")
	}
	interval, err := sd.SdWatchdogEnabled(false)
	if err != nil || interval == 0 {
		return
	}
	t := time.NewTicker(interval / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n.Alive(3 * n.Resync()) {
				sd.SdNotify(false, sd.SdNotifyWatchdog)
			} else {
				log.Error("the control loop has not turned for a while: not petting the watchdog")
			}
		}
	}
}

// restore is --restore-host: refused while the daemon runs (it would bind
// the VIPs again on its next turn).
func restore(cfg *configs.Config, stdout io.Writer) error {
	if c, err := net.DialTimeout("unix", cfg.API.Socket, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("anycastd is running (its API answers on %s): stop it first", cfg.API.Socket)
	}
	done, err := director.RestoreHost(cfg)
	for _, d := range done {
		fmt.Fprintln(stdout, d)
	}
	if err != nil {
		return fmt.Errorf("restore: %w (what failed stays in the journal; run again)", err)
	}
	if len(done) == 0 {
		fmt.Fprintln(stdout, "nothing to restore")
	}
	return nil
}

// fileSum is a fingerprint of the config file's content ("" unreadable),
// to notice edits, including an editor's or a config manager's replace.
func fileSum(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(b)
	return string(sum[:])
}
