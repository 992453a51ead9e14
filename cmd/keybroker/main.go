// Command keybroker is the keybroker broker: it verifies TPM attestations and
// releases credentials that only the attested TPM can open.
package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/broker"
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
		cli.NewGroup("receipts", "Read, export and verify the broker's decision receipts", receiptsListCmd(), receiptsExportCmd(),
			receiptsVerifyCmd(), receiptsCheckpointKeyCmd()),
		cli.NewGroup("nodes", "List, show, forget and allow the nodes the broker knows", nodesListCmd(), nodesShowCmd(), nodesForgetCmd(), nodesAllowCmd()),
		cli.NewGroup("policy", "Check policies and try them on nodes' evidence", policyCheckCmd(), policyEvalCmd()),
		cli.NewGroup("evidence", "Read nodes' last verified evidence", evidenceShowCmd()),
		cli.NewGroup("audit", "Read nodes' verified records of issued identities", auditShowCmd()),
		cli.NewGroup("ear", "Publish the key that verifies the broker's attestation results", earJWKSCmd()),
		cli.NewGroup("pcr-policy", "Approve, list and revoke PCR states for pcr_policy \"authorized\" releases", pcrPolicyApproveCmd(), pcrPolicyListCmd(),
			pcrPolicyRevokeCmd(), pcrPolicyKeysCmd()),
		demoCmd(),
		loadgenCmd(),
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
previous policies serving.

The broker's live heap is small (tens of megabytes at 10,000 nodes) and
every release allocates: unless the GOGC environment variable is set, its
garbage collector runs at GOGC=400, about a tenth less CPU per release for
a larger heap between collections. GOGC and GOMEMLIMIT work as for any Go
program.`,
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

// serveGCPercent is the broker's GOGC when the environment sets none.
const serveGCPercent = 400

// serveGC sets the broker's GOGC to serveGCPercent unless the
// environment (getenv) sets GOGC.
func serveGC(getenv func(string) string) {
	if getenv("GOGC") == "" {
		debug.SetGCPercent(serveGCPercent)
	}
}

func serve(o serveOpts, stderr io.Writer) int {
	serveGC(os.Getenv)
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
