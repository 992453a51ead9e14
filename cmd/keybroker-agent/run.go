package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/agent/metrics"
	"github.com/keybroker/keybroker/agent/workload"
	"github.com/keybroker/keybroker/internal/cli"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

type runOpts struct {
	node      nodeFlags
	broker    brokerFlags
	socket    string
	bundleOut string
	// sigstore says where the Sigstore bundles of workload executables
	// are, for signed selectors.
	sigstore workload.BundleLocations
	grace    time.Duration
	retryMax time.Duration
	logJSON  bool
	quiet    bool
	// metricsListen is where to serve Prometheus metrics; empty: none.
	metricsListen string
	// out and the kubeconfig paths: where the file credentials go (--out);
	// onChange runs after they changed.
	out, kubeconfig, bootKube, onChange string
	// cache keeps the credentials still sealed, with --out.
	cache    string
	resident residentFlags
	// identity: the record of handed-out SVIDs (--identity-log-dir).
	identity identityFlags
}

func runCmd() *cobra.Command {
	var o runOpts
	cmd := &cobra.Command{
		Use:   "run --broker HOST:PORT --ca CA.pem [--workload-socket PATH]",
		Short: "Attest, serve the SPIFFE Workload API and keep the identities current",
		Long: `Attests, then serves the SPIFFE Workload API on a unix socket and re-attests
at half the node SVID's life, until SIGINT or SIGTERM.

With --out it also keeps every credential released as a file current, as
bootstrap writes them (key.pem, cert.pem, chain.pem, <release>.json,
<release>.token, kubelet-client.pem and the kubeconfigs): each attestation
rewrites them atomically and runs --on-change when they changed, and the
agent re-attests at half the life of the earliest of the node SVID and the
files. A failed re-attestation leaves the files as they are, until they
expire, and is retried (--retry-max). When the broker releases no node SVID,
run with --out keeps the files current and serves no Workload API. With
--cache DIR (and --out) each attestation also rewrites
DIR/sealed-credentials.json as bootstrap --cache does, for reopen after a
reboot without the broker.

With --tpm-resident NAME for a tpm_resident x509_svid release, the node
SVID's key is created inside the TPM and the agent's mutual TLS to the
broker (workload SVIDs, JWT-SVIDs, bundles) signs its handshakes in the TPM,
opening it for each signature; bound to PCRs (NAME=sha256:0,7), the TPM
stops signing once the boot state changes, until an attestation the
policies allow creates a key for the new state.

With --identity-log-dir every SVID the Workload API hands out is first
recorded (SPIFFE ID, serial, the entry's selectors, the caller's executable
digest and uid), fsync'd and extended into --identity-log-pcr; the record
goes with each attestation and the broker replays it against the quoted PCR
(docs/identities.md). A handout that cannot be recorded is refused.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var p cli.Problems
			caPEM := o.broker.check(&p)
			in := o.node.check(&p)
			if o.grace < 0 {
				p.Addf("--grace must be ≥ 0, not %v", o.grace)
			}
			if o.retryMax < time.Second {
				p.Addf("--retry-max must be ≥ 1s, not %v", o.retryMax)
			}
			p.Check("metrics-listen", checkListenAddr(o.metricsListen))
			o.identity.check(&p)
			for _, d := range o.sigstore.Dirs {
				if !filepath.IsAbs(d) {
					p.Addf("--workload-sigstore-dir must be absolute, not %q", d)
				}
			}
			if o.out == "" && (o.kubeconfig != "" || o.bootKube != "" || o.onChange != "" || o.cache != "") {
				p.Addf("--kubeconfig, --bootstrap-kubeconfig, --on-change and --cache need --out")
			}
			in.residentNames, in.residentPCRs = o.resident.check(&p)
			if err := p.Err(); err != nil {
				return err
			}
			return cli.Code(runAgent(o, caPEM, in, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	f := cmd.Flags()
	o.broker.register(f)
	f.StringVar(&o.socket, "workload-socket", workload.DefaultSocket, "unix socket for the SPIFFE Workload API (absolute; directory created 0755, socket 0777); workloads set SPIFFE_ENDPOINT_SOCKET=unix://PATH")
	f.BoolVar(&o.sigstore.BesideExecutable, "workload-sigstore-beside-exe", true, "for signed:* workload selectors: look for the caller's Sigstore bundle next to its executable, <exe>.sigstore.json or <exe>.bundle (read through /proc/<pid>/root)")
	f.StringSliceVar(&o.sigstore.Dirs, "workload-sigstore-dir", nil, "for signed:* workload selectors: also look for Sigstore bundles in this directory (absolute), named by the executable's SHA-256: <64 hex>.sigstore.json or <64 hex>.bundle (repeatable)")
	f.StringVar(&o.bundleOut, "bundle-out", "", "also write the trust domain's SPIFFE bundle (JWKS) to this file, atomically, whenever it changes")
	f.DurationVar(&o.grace, "grace", 0, "keep serving the workload SVIDs already issued for this long after the node SVID expired without a successful re-attestation (never beyond each SVID's own expiry)")
	o.node.register(f, "give up on one attestation after this long")
	f.DurationVar(&o.retryMax, "retry-max", time.Minute, "longest wait between retries of a failed re-attestation or SVID rotation (the first is after 1s, doubling)")
	f.BoolVar(&o.logJSON, "log-json", false, "log as JSON instead of text")
	f.BoolVar(&o.quiet, "quiet", false, "do not print the steps of the first attestation")
	f.StringVar(&o.out, "out", "", "also write and keep current the credentials released as files in this directory (as bootstrap --out)")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "with --out: where to write a kubelet release's kubeconfig (default: --out/kubelet.kubeconfig)")
	f.StringVar(&o.bootKube, "bootstrap-kubeconfig", "", "with --out: where to write a bootstrap_token kubelet release's bootstrap kubeconfig (default: --out/bootstrap-kubelet.kubeconfig)")
	f.StringVar(&o.onChange, "on-change", "", "with --out: shell command to run after the files changed (e.g. 'systemctl reload nginx')")
	f.StringVar(&o.cache, "cache", "", "with --out: also keep the released credentials, still sealed, in this directory (sealed-credentials.json, 0600), rewritten at each attestation, for reopen after a reboot without the broker (created if missing)")
	o.resident.register(f, "a tpm_resident x509_svid's key (the node SVID) signs the agent's TLS handshakes with the broker inside the TPM; with --out, keys are written as bootstrap writes them")
	o.identity.register(f)
	f.StringVar(&o.metricsListen, "metrics-listen", "", "serve Prometheus metrics at GET /metrics on this HOST:PORT, over plain HTTP (default: off; keep it on loopback or a monitoring network)")
	return cmd
}

// runAgent is `keybroker-agent run`: attest, serve the Workload API, keep
// the identities current.
func runAgent(o runOpts, caPEM []byte, in nodeInputs, stdout, stderr io.Writer) int {
	var handler slog.Handler = slog.NewTextHandler(stderr, nil)
	if o.logJSON {
		handler = slog.NewJSONHandler(stderr, nil)
	}
	log := slog.New(handler)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	m, closeMetrics, err := startMetrics(o.metricsListen, log)
	if err != nil {
		fmt.Fprintf(stderr, "run: %v\n", err)
		return 1
	}
	defer closeMetrics()
	mgr, err := agent.NewSVIDManager(agent.BrokerTarget{Addr: o.broker.addr, CAPEM: caPEM, ServerName: o.broker.serverName},
		agent.WithGrace(o.grace), agent.WithSVIDLogger(log), agent.WithRetry(time.Second, o.retryMax), agent.WithBundleFile(o.bundleOut),
		agent.WithMetrics(m))
	if err != nil {
		fmt.Fprintf(stderr, "run: %v\n", err)
		return 1
	}
	conn, err := agent.Dial(o.broker.addr, caPEM, o.broker.serverName)
	if err != nil {
		fmt.Fprintf(stderr, "run failed at connect: %v\n", err)
		return 1
	}
	defer conn.Close()
	lis, err := workload.Listen(o.socket)
	if err != nil {
		fmt.Fprintf(stderr, "run: %v\n", err)
		return 1
	}
	defer lis.Close()

	tpm := &tpmSession{spec: o.node.tpm}
	tpm.opts = agent.NodeOpts{AK: o.node.ak, EKIntermediates: in.intermediates,
		TPMResident: in.residentNames, TPMResidentPCRs: in.residentPCRs, TPM: tpm.withRW, PolicyCounter: in.counter}
	defer tpm.close()
	idLog, err := openIdentityLog(o.identity, tpm, log)
	if err != nil {
		fmt.Fprintf(stderr, "run: %v\n", err)
		return 1
	}
	if idLog != nil {
		defer idLog.Close()
	}
	client := pb.NewBrokerClient(conn)
	var out *agent.FileOut
	if o.out != "" {
		out = &agent.FileOut{OutDir: o.out, Kubeconfig: o.kubeconfig, BootstrapKubeconfig: o.bootKube}
	}
	attest := func(runCtx context.Context, progress func(agent.Step, time.Duration, string)) (*agent.Attestation, error) {
		ctx, cancel := context.WithTimeout(runCtx, o.node.timeout)
		defer cancel()
		logBytes, err := agent.ReadEventLog(o.node.eventLog)
		if err != nil {
			return nil, err
		}
		var att *agent.Attestation
		err = tpm.with(func(node *agent.Node) error {
			var err error
			att, err = agent.Attest(ctx, client, node, agent.AttestOpts{EventLog: logBytes, Progress: progress, Metrics: m, Out: out, CacheDir: o.cache})
			return err
		})
		if err != nil || out == nil {
			return att, err
		}
		changed, err := agent.WriteFiles(att, *out)
		if err != nil {
			return nil, err
		}
		if changed && o.onChange != "" {
			if err := runOnChange(runCtx, o.onChange, o.out, att.Result.Serial, stdout, stderr); err != nil {
				log.Error("the credentials were written, but --on-change failed", "error", err)
			}
		}
		return att, nil
	}

	var progress func(agent.Step, time.Duration, string)
	if !o.quiet {
		progress = func(s agent.Step, took time.Duration, detail string) {
			fmt.Fprintf(stdout, "%-9s %8s  %s\n", s, took.Round(100*time.Microsecond), detail)
		}
	}
	att, err := attest(ctx, progress)
	if err != nil {
		var se *agent.StepError
		if errors.As(err, &se) {
			fmt.Fprintf(stderr, "run failed at %s: %v\n", se.Step, se.Err)
		} else {
			fmt.Fprintf(stderr, "run failed: %v\n", err)
		}
		return 1
	}
	if att.NodeSVID == nil {
		// --out, and no node SVID: keep the files current, no Workload API.
		lis.Close()
		log.Info("no node SVID released: the Workload API is not served; keeping the files current", "out", o.out,
			"files", len(att.Files), "valid_until", att.Result.NotAfter.UTC().Format(time.RFC3339))
		if err := agent.KeepFiles(ctx, att, func(ctx context.Context) (*agent.Attestation, error) { return attest(ctx, nil) },
			log, time.Second, o.retryMax); err != nil {
			log.Error("renewal stopped", "error", err)
			return 1
		}
		log.Info("stopped")
		return 0
	}
	if err := mgr.Update(ctx, att); err != nil {
		log.Error("unable to issue workload SVIDs; retrying", "error", err)
	}

	srv := workload.NewServer(mgr, append(recorderOption(idLog, tpm),
		workload.WithLogger(log), workload.WithBundles(o.sigstore),
		workload.WithInterceptors(m.UnaryServerInterceptor(), m.StreamServerInterceptor()))...)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	log.Info("workload API serving", "socket", o.socket, "SPIFFE_ENDPOINT_SOCKET", "unix://"+o.socket,
		"node_spiffe_id", att.NodeSVID.SVID.ID.String(), "entries", len(att.Entries))

	renewed := make(chan error, 1)
	go func() {
		renewed <- mgr.Run(ctx, func(ctx context.Context) (*agent.Attestation, error) { return attest(ctx, nil) })
	}()
	select {
	case err := <-served:
		stop()
		<-renewed
		if err != nil {
			log.Error("workload API stopped", "error", err)
			return 1
		}
	case err := <-renewed:
		stop()
		<-served
		if err != nil {
			log.Error("renewal stopped", "error", err)
			return 1
		}
	}
	log.Info("stopped")
	return 0
}

// startMetrics serves the agent's metrics on addr (--metrics-listen) until
// the returned function is called; with no addr it returns a nil Agent:
// no metrics are kept.
func startMetrics(addr string, log *slog.Logger) (*metrics.Agent, func(), error) {
	if addr == "" {
		return nil, func() {}, nil
	}
	m := metrics.New()
	ep, err := m.Serve(addr)
	if err != nil {
		return nil, nil, err
	}
	log.Info("metrics serving", "address", ep.Addr(), "path", "/metrics")
	return m, func() { ep.Close() }, nil
}
