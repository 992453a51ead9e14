package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/agent/workload"
	"github.com/keybroker/keybroker/internal/cli"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// runAgent is `keybroker-agent run`: attest, serve the Workload API, keep
// the identities current.
func runAgent(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	tpmSpec := tpmFlag(fs)
	brokerAddr := fs.String("broker", "", "broker address HOST:PORT (required)")
	caFile := fs.String("ca", "", "PEM file with the broker's CA bundle, pinned for TLS (required)")
	serverName := fs.String("server-name", "", "name to verify in the broker's certificate (default: the host in --broker)")
	socket := fs.String("workload-socket", workload.DefaultSocket, "unix socket for the SPIFFE Workload API (absolute; directory created 0755, socket 0777); workloads set SPIFFE_ENDPOINT_SOCKET=unix://PATH")
	bundleOut := fs.String("bundle-out", "", "also write the trust domain's SPIFFE bundle (JWKS) to this file, atomically, whenever it changes")
	grace := fs.Duration("grace", 0, "keep serving the workload SVIDs already issued for this long after the node SVID expired without a successful re-attestation (never beyond each SVID's own expiry)")
	akType := fs.String("ak", "rsa", "attestation key type: rsa (RSA-2048) or ecc (P-256)")
	eventLog := fs.String("event-log", "auto", "TCG binary event log to send with each attestation: auto (the kernel's, if present), none, or a file")
	ekIntermediates := fs.String("ek-intermediates", "", "PEM file with intermediate CA certificates to send with the EK certificate (at most 8)")
	timeout := fs.Duration("timeout", time.Minute, "give up on one attestation after this long")
	retryMax := fs.Duration("retry-max", time.Minute, "longest wait between retries of a failed re-attestation or SVID rotation (the first is after 1s, doubling)")
	logJSON := fs.Bool("log-json", false, "log as JSON instead of text")
	quiet := fs.Bool("quiet", false, "do not print the steps of the first attestation")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if !cli.Required(fs, stderr, "--broker", "--ca") {
		return 2
	}
	if *grace < 0 || *retryMax < time.Second || *timeout <= 0 {
		fmt.Fprintln(stderr, "run: --grace must be ≥ 0, --retry-max ≥ 1s and --timeout > 0")
		return 2
	}
	caPEM, err := os.ReadFile(*caFile)
	if err != nil {
		fmt.Fprintf(stderr, "run: unable to read --ca: %v\n", err)
		return 1
	}
	if _, err := agent.ReadEventLog(*eventLog); err != nil {
		fmt.Fprintf(stderr, "run: %v\n", err)
		return 1
	}
	var intermediates [][]byte
	if *ekIntermediates != "" {
		if intermediates, err = agent.ReadEKIntermediates(*ekIntermediates); err != nil {
			fmt.Fprintf(stderr, "run: %v\n", err)
			return 1
		}
	}
	var handler slog.Handler = slog.NewTextHandler(stderr, nil)
	if *logJSON {
		handler = slog.NewJSONHandler(stderr, nil)
	}
	log := slog.New(handler)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	mgr, err := agent.NewSVIDManager(agent.BrokerTarget{Addr: *brokerAddr, CAPEM: caPEM, ServerName: *serverName},
		agent.WithGrace(*grace), agent.WithSVIDLogger(log), agent.WithRetry(time.Second, *retryMax), agent.WithBundleFile(*bundleOut))
	if err != nil {
		fmt.Fprintf(stderr, "run: %v\n", err)
		return 1
	}
	conn, err := agent.Dial(*brokerAddr, caPEM, *serverName)
	if err != nil {
		fmt.Fprintf(stderr, "run failed at connect: %v\n", err)
		return 1
	}
	defer conn.Close()
	lis, err := workload.Listen(*socket)
	if err != nil {
		fmt.Fprintf(stderr, "run: %v\n", err)
		return 1
	}
	defer lis.Close()

	tpm := &tpmSession{spec: *tpmSpec, opts: agent.NodeOpts{AK: *akType, EKIntermediates: intermediates}}
	defer tpm.close()
	client := pb.NewBrokerClient(conn)
	attest := func(ctx context.Context, progress func(agent.Step, time.Duration, string)) (*agent.Attestation, error) {
		ctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		logBytes, err := agent.ReadEventLog(*eventLog)
		if err != nil {
			return nil, err
		}
		var att *agent.Attestation
		err = tpm.with(func(node *agent.Node) error {
			var err error
			att, err = agent.Attest(ctx, client, node, agent.AttestOpts{EventLog: logBytes, Progress: progress})
			return err
		})
		return att, err
	}

	var progress func(agent.Step, time.Duration, string)
	if !*quiet {
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
	if err := mgr.Update(ctx, att); err != nil {
		log.Error("unable to issue workload SVIDs; retrying", "error", err)
	}

	srv := workload.NewServer(mgr, workload.WithLogger(log))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	log.Info("workload API serving", "socket", *socket, "SPIFFE_ENDPOINT_SOCKET", "unix://"+*socket,
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

// tpmSession opens the TPM for each attestation and closes it after, so
// that a TPM serving one client at a time (swtpm over TCP) is free in
// between; the embedded simulator, whose state a reopen would lose, stays
// open.
type tpmSession struct {
	spec string
	opts agent.NodeOpts

	rw   io.ReadWriteCloser // held open: simulator only
	node *agent.Node
}

func (t *tpmSession) with(fn func(*agent.Node) error) error {
	if t.node != nil {
		return fn(t.node)
	}
	rw, err := agent.OpenTPM(t.spec)
	if err != nil {
		return &agent.StepError{Step: "tpm", Err: err}
	}
	node, err := agent.NewNode(rw, t.opts)
	if err != nil {
		rw.Close()
		return &agent.StepError{Step: "tpm", Err: err}
	}
	if t.spec == "simulator" {
		t.rw, t.node = rw, node
		return fn(node)
	}
	defer rw.Close()
	defer node.Close()
	return fn(node)
}

func (t *tpmSession) close() {
	if t.node != nil {
		t.node.Close()
		t.rw.Close()
	}
}
