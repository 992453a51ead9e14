// Command keybroker is the keybroker broker: it verifies TPM attestations and
// releases credentials that only the attested TPM can open.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/cli"
)

const usage = `keybroker: release secrets only to machines that prove, with their TPM, what they booted.

Usage:
  keybroker serve --config broker.hcl     run the broker (gRPC over TLS)
  keybroker receipts list --config broker.hcl [--ek HASH] [--limit N] [--json]
  keybroker policy check [--facts] FILE|DIR...
                                          validate policies; list the facts they can use
  keybroker policy eval --config broker.hcl --policy FILE|DIR... [--node EKHASH | --evidence FILE] [--json]
                                          try policies on nodes' last verified evidence
  keybroker evidence show --config broker.hcl --node EKHASH
                                          a node's last verified evidence, as JSON
  keybroker demo [--keep DIR]             broker + agent on the embedded TPM simulator

Run 'keybroker COMMAND --help' for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	return cli.Dispatch("command", usage, map[string]cli.Command{
		"serve":    func(args []string, _, stderr io.Writer) int { return serve(args, stderr) },
		"receipts": receiptsCmd,
		"policy":   policyCmd,
		"evidence": evidenceCmd,
		"demo":     demo,
	}, args, stdout, stderr)
}

// receiptsCmd runs `keybroker receipts list`.
func receiptsCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "list" {
		fmt.Fprint(stderr, "usage: keybroker receipts list --config broker.hcl [--ek HASH] [--limit N] [--json]\n")
		return 2
	}
	return receiptsList(args[1:], stdout, stderr)
}

func serve(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "broker configuration file (HCL, required)")
	listen := fs.String("listen", "", "override the configuration's listen address")
	logJSON := fs.Bool("log-json", false, "log as JSON instead of text")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *configPath == "" {
		fmt.Fprintln(stderr, "serve: --config is required")
		fs.Usage()
		return 2
	}
	var handler slog.Handler = slog.NewTextHandler(stderr, nil)
	if *logJSON {
		handler = slog.NewJSONHandler(stderr, nil)
	}
	log := slog.New(handler)
	// Before anything can announce readiness: a SIGHUP right after start
	// must reload, not kill.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	cfg, err := broker.LoadConfig(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "serve: invalid configuration:\n%v\n", err)
		return 1
	}
	if *listen != "" {
		cfg.Listen = *listen
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

func receiptsList(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("receipts list", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "broker configuration file (its data_dir holds the store)")
	dataDir := fs.String("data-dir", "", "the broker's data directory (instead of --config)")
	ek := fs.String("ek", "", "only receipts for this EK hash")
	limit := fs.Int("limit", 50, "at most this many receipts, newest first")
	asJSON := fs.Bool("json", false, "print JSON, one receipt per line")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	dir := *dataDir
	if *configPath != "" {
		cfg, err := broker.LoadConfig(*configPath)
		if err != nil {
			fmt.Fprintf(stderr, "receipts: invalid configuration:\n%v\n", err)
			return 1
		}
		dir = cfg.DataDir
	}
	if dir == "" {
		fmt.Fprintln(stderr, "receipts: --config or --data-dir is required")
		return 2
	}
	rs, err := broker.ListReceipts(context.Background(), dir, store.ListOpts{Limit: *limit, EKHash: *ek})
	if err != nil {
		fmt.Fprintf(stderr, "receipts: %v\n", err)
		return 1
	}
	if *asJSON {
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
