// Command keybroker is the keybroker broker: it verifies TPM attestations and
// releases credentials that only the attested TPM can open.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/cli"
)

const long = `keybroker releases secrets only to machines that prove, with their TPM,
what they booted: it verifies TPM attestations and releases credentials that
only the attested TPM can open.`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	root := cli.NewRoot("keybroker", "Release secrets only to machines that prove what they booted", long,
		serveCmd(),
		cli.NewGroup("receipts", "Read the broker's decision receipts", receiptsListCmd()),
		cli.NewGroup("policy", "Check policies and try them on nodes' evidence", policyCheckCmd(), policyEvalCmd()),
		cli.NewGroup("evidence", "Read nodes' last verified evidence", evidenceShowCmd()),
		demoCmd(),
	)
	return cli.Execute(root, args, stdout, stderr)
}

type serveOpts struct {
	configPath, listen string
	logJSON            bool
}

func serveCmd() *cobra.Command {
	var o serveOpts
	cmd := &cobra.Command{
		Use:   "serve --config broker.hcl",
		Short: "Run the broker (gRPC over TLS)",
		Long: `Runs the broker: gRPC over TLS on the configuration's listen address, until
SIGINT or SIGTERM. SIGHUP reloads the policies; a refused reload keeps the
previous policies serving.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var p cli.Problems
			p.Required(cmd, "config")
			if err := p.Err(); err != nil {
				return err
			}
			return cli.Code(serve(o, cmd.ErrOrStderr()))
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.configPath, "config", "", "broker configuration file (HCL, required)")
	f.StringVar(&o.listen, "listen", "", "override the configuration's listen address")
	f.BoolVar(&o.logJSON, "log-json", false, "log as JSON instead of text")
	return cmd
}

func serve(o serveOpts, stderr io.Writer) int {
	var handler slog.Handler = slog.NewTextHandler(stderr, nil)
	if o.logJSON {
		handler = slog.NewJSONHandler(stderr, nil)
	}
	log := slog.New(handler)
	// Before anything can announce readiness: a SIGHUP right after start
	// must reload, not kill.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	cfg, err := broker.LoadConfig(o.configPath)
	if err != nil {
		fmt.Fprintf(stderr, "serve: invalid configuration:\n%v\n", err)
		return 1
	}
	if o.listen != "" {
		cfg.Listen = o.listen
	}
	r, err := broker.Start(cfg, log)
	if err != nil {
		fmt.Fprintf(stderr, "serve: %v\n", err)
		return 1
	}
	for {
		select {
		case err := <-r.Done():
			if err != nil {
				fmt.Fprintf(stderr, "serve: %v\n", err)
				return 1
			}
			return 0
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				// ReloadPolicies logs the outcome; a refused reload keeps
				// the previous policies serving.
				log.Info("reloading policies", "signal", sig.String())
				_ = r.ReloadPolicies()
				continue
			}
			log.Info("stopping", "signal", sig.String())
			r.Stop()
			return 0
		}
	}
}

type receiptsOpts struct {
	configPath, dataDir, ek string
	limit                   int
	asJSON                  bool
}

func receiptsListCmd() *cobra.Command {
	var o receiptsOpts
	cmd := &cobra.Command{
		Use:   "list (--config broker.hcl | --data-dir DIR)",
		Short: "List decision receipts, newest first",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.configPath == "" && o.dataDir == "" {
				return cli.Usagef("--config or --data-dir is required")
			}
			return cli.Code(receiptsList(o, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.configPath, "config", "", "broker configuration file (its data_dir holds the store)")
	f.StringVar(&o.dataDir, "data-dir", "", "the broker's data directory (instead of --config)")
	f.StringVar(&o.ek, "ek", "", "only receipts for this EK hash")
	f.IntVar(&o.limit, "limit", 50, "at most this many receipts, newest first")
	f.BoolVar(&o.asJSON, "json", false, "print JSON, one receipt per line")
	return cmd
}

func receiptsList(o receiptsOpts, stdout, stderr io.Writer) int {
	where := &broker.Config{DataDir: o.dataDir}
	if o.configPath != "" {
		cfg, err := broker.LoadConfig(o.configPath)
		if err != nil {
			fmt.Fprintf(stderr, "receipts: invalid configuration:\n%v\n", err)
			return 1
		}
		where = cfg
	}
	rs, err := broker.ListReceipts(context.Background(), where, store.ListOpts{Limit: o.limit, EKHash: o.ek})
	if err != nil {
		fmt.Fprintf(stderr, "receipts: %v\n", err)
		return 1
	}
	if o.asJSON {
		enc := json.NewEncoder(stdout)
		for _, r := range rs {
			if err := enc.Encode(r); err != nil {
				fmt.Fprintf(stderr, "receipts: %v\n", err)
				return 1
			}
		}
		return 0
	}
	printReceipts(stdout, rs)
	return 0
}

func printReceipts(w io.Writer, rs []store.Receipt) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RECEIPT\tTIME\tEK\tDECISION\tPOLICIES\tRELEASED")
	for _, r := range rs {
		decision := "allowed"
		if !r.Allowed {
			decision = "denied: " + r.Check
		}
		if r.DenyListed {
			decision += " (deny-listed)"
		}
		var released []string
		for _, it := range r.Released {
			released = append(released, fmt.Sprintf("%s(%s serial %s)", it.Name, it.Mode, it.Serial))
		}
		ekShort := r.EKHash
		if len(ekShort) > 16 {
			ekShort = ekShort[:16]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%v\n", r.ID, r.Time.UTC().Format(time.RFC3339), ekShort, decision, r.Policies, released)
		for _, f := range r.Failures {
			fmt.Fprintf(tw, "\t\t\t\t\t  - %s\n", f)
		}
	}
	tw.Flush()
}
