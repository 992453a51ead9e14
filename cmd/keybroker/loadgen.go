package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/internal/cli"
	"github.com/keybroker/keybroker/internal/loadgen"
	"github.com/keybroker/keybroker/internal/softtpm"
)

const loadgenLong = `Drives a fleet of distinct software TPM nodes, each once, through
Challenge, credential activation, Quote, Attest and opening the released TLS
credential (its key checked against its certificate), over gRPC and TLS with
one fresh connection per node, at a given concurrency: a boot storm.

With --serve it starts "keybroker serve" as a separate process with a
temporary data directory and a configuration that trusts every node by EK
hash (ek_allow), has admission limits off, and a policy releasing a
TPM-bound TLS certificate; it stops the broker and removes the directory
after. With --addr and --ca it targets a running broker, which must trust
the nodes and release a tls_certificate to them: the nodes' keys are new on
every run, so --print-ek-hashes prints their EK hashes on stdout and waits
for a line on stdin before starting, while the operator adds them to the
broker (ek_allow and a policy's ek_hashes).

With --ek-certs the fleet gets a fresh EK CA, shaped as TPM vendors' are: an
ECDSA P-256 root and an intermediate that issues each node an X.509 EK
certificate for its EK, which the node presents with the intermediate
(ek_certificate, ek_intermediates). With --serve the broker then trusts the
root (an ek_ca "loadgen" block, no ek_allow) and its policy selects the
nodes by that CA (ek_cas = ["loadgen"]). With --addr, --ek-ca-out FILE is
required: the root is written there (PEM), and loadgen waits for a line on
stdin while the operator configures the broker (an ek_ca block whose roots
name FILE, a policy selecting ek_cas = [that block's name] and releasing a
tls_certificate) and restarts it, since ek_ca blocks do not reload.

With --event-log FILE every node sends FILE, a binary TCG PC Client event log
(as /sys/kernel/security/tpm0/binary_bios_measurements), with its attestation,
and its SHA-256 PCRs are what the log replays to (the broker's own replay;
PCRs 0-7 the log has no events for are zero, the others keep their
defaults): the broker replays it against every quote. A file that does not
parse as an event log, or has no SHA-256 digests, is refused (exit 2). With
--serve the policy also requires eventlog.present, so every release verified
the log; with --addr the broker's policy must accept the log's PCR values.

Progress goes to stderr every second; the summary to stdout, as text or
--json: nodes, concurrency, errors (by gRPC code, or by the node's failed
step), wall_seconds, releases_per_second, p50_ms, p95_ms, p99_ms (per node,
connection to credential opened), generator_cpu_ms_per_release (the load
generator's own CPU), broker_cpu_ms_per_release and
broker_peak_rss_bytes (from /proc of the broker: with --serve or
--broker-pid; or, for a broker on another machine, with --broker-metrics
URL from its metrics endpoint: process_cpu_seconds_total, and
process_resident_memory_bytes sampled every half second, the highest kept;
broker_figures says which, and broker_figures_error why they are missing
when the endpoint failed or the broker restarted during the run; the
in-run ratio, the CPU share and the wall-time floor then are not given),
store_bytes_per_release (--serve), floor_ms (the crypto floor
for the nodes' key type measured in process before the run, as CPU time of
the thread doing it, one operation at a time: AK signature verify,
MakeCredential, import blob, P-256 key and certificate, TLS 1.3 server
handshake, and with --ek-certs ek_chain_ms: one node's EK certificate chain
parsed and verified to the root) and floor_ratio = broker CPU per release /
floor_ms; floor_saturated_ms, the same floor with floor_threads operations
at once (one per CPU), every CPU busy as during the run (hardware threads
sharing a core then slow each other down), and floor_saturated_ratio =
broker CPU per release / floor_saturated_ms; floor_in_run_ms, the same
floor sampled while the run goes on (every half second each operation run
once to warm the caches, then timed three times, on a thread of its own: the
host's speed is the same for it as for the broker; floor_in_run_samples
counts the timed runs of each operation, and the in-run floor is null under
nine of them, or with floor_in_run_error when sampling failed), and
floor_in_run_ratio = broker CPU per release / floor_in_run_ms;
generator_floor_ms, the nodes' side of one release measured the same way
with the generator's own code (generator_floor: activate_ms, quote_ms,
open_ms, tls_handshake_ms for the client's side with the chain pinned; the
generator's check of each key against its certificate left out) and
generator_floor_ratio = generator CPU per release / generator_floor_ms;
cpus, the CPUs the generator (and, its process known, the broker) may run
on; broker_cpu_share, the broker's part of the CPU the broker and the
generator used; and wall_seconds_floor (broker process known) = releases x
(floor_ms + generator_floor_ms) / cpus, the least wall time of the releases
on this machine with the two side by side, however little either did
beyond these steps; ek_certs says
whether the nodes presented EK certificates; event_log_bytes is the size of
the event log each node sent (0 without --event-log).
It exits 1 if any release failed.

To leave the broker on the same machine as much CPU as it can, the generator
verifies the broker's certificate chain once per distinct serving
certificate (each handshake still checks the server's signature with its
key) and runs its garbage collector at GOGC=400 while it drives (unless GOGC
is set). --cpuprofile FILE writes a CPU profile of the generator for that
time; the broker's is on its admin socket.`

type loadgenOpts struct {
	nodes, concurrency, brokerPID int
	key, addr, caPath, ekCAOut    string
	brokerMetrics                 string
	serve, asJSON, printHashes    bool
	ekCerts                       bool
	eventLogPath                  string
	eventLog                      []byte // read from eventLogPath by check
	cpuProfile                    string
}

func loadgenCmd() *cobra.Command {
	var o loadgenOpts
	cmd := &cobra.Command{
		Use:   "loadgen (--serve | --addr HOST:PORT --ca ca.pem) [flags]",
		Short: "Drive a fleet of software TPM nodes through the broker and measure it",
		Long:  loadgenLong,
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.check(); err != nil {
				return err
			}
			return cli.Code(runLoadgen(cmd.Context(), o, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.nodes, "nodes", 1000, "distinct nodes, each attesting once")
	f.IntVar(&o.concurrency, "concurrency", 50, "nodes in flight at once")
	f.StringVar(&o.key, "key", "ecc", "the nodes' EK and AK type: ecc (P-256) or rsa (RSA-2048)")
	f.BoolVar(&o.serve, "serve", false, "start a broker (keybroker serve, a separate process) trusting the nodes")
	f.StringVar(&o.addr, "addr", "", "address of a running broker (instead of --serve)")
	f.StringVar(&o.caPath, "ca", "", "the running broker's CA bundle (its data_dir/ca/ca.pem), pinned; with --addr")
	f.IntVar(&o.brokerPID, "broker-pid", 0, "process id of the broker at --addr, for its CPU and memory figures")
	f.StringVar(&o.brokerMetrics, "broker-metrics", "", "URL of the metrics endpoint of the broker at --addr (its metrics_listen, http://HOST:PORT/metrics), for its CPU and memory figures when it runs on another machine")
	f.BoolVar(&o.printHashes, "print-ek-hashes", false, "print the nodes' EK hashes on stdout; with --addr, wait for a line on stdin before starting")
	f.BoolVar(&o.ekCerts, "ek-certs", false, "give the nodes EK certificates from a fresh EK CA (root and intermediate) and have the broker trust that CA instead of their EK hashes")
	f.StringVar(&o.ekCAOut, "ek-ca-out", "", "with --ek-certs, write the EK CA's root (PEM) to this file; with --addr, required, and loadgen waits for a line on stdin before starting")
	f.StringVar(&o.eventLogPath, "event-log", "", "a binary TCG event log every node sends with its attestation, its SHA-256 PCRs being what the log replays to")
	f.BoolVar(&o.asJSON, "json", false, "print the summary as JSON")
	f.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the load generator itself, while it drives the nodes, to this file (go tool pprof); the broker's is on its admin socket")
	return cmd
}

// check reports every problem of the command line; it reads and checks
// the --event-log file into o.eventLog.
func (o *loadgenOpts) check() error {
	var p cli.Problems
	if o.nodes < 1 {
		p.Addf("--nodes must be at least 1")
	}
	if o.concurrency < 1 {
		p.Addf("--concurrency must be at least 1")
	}
	if _, err := keyType(o.key); err != nil {
		p.Check("key", err)
	}
	switch {
	case o.serve && o.addr != "":
		p.Addf("--serve and --addr are exclusive")
	case !o.serve && o.addr == "":
		p.Addf("--serve or --addr is required")
	case o.addr != "" && o.caPath == "":
		p.Addf("--ca is required with --addr")
	case o.serve && (o.caPath != "" || o.brokerPID != 0 || o.brokerMetrics != ""):
		p.Addf("--ca, --broker-pid and --broker-metrics go with --addr, not --serve")
	case o.brokerPID != 0 && o.brokerMetrics != "":
		p.Addf("--broker-pid and --broker-metrics are exclusive: the process id is for a broker on this machine")
	}
	if o.brokerPID < 0 {
		p.Addf("--broker-pid must be a process id")
	}
	if o.brokerMetrics != "" {
		if err := loadgen.CheckMetricsURL(o.brokerMetrics); err != nil {
			p.Addf("--broker-metrics: %v", err)
		}
	}
	switch {
	case o.ekCAOut != "" && !o.ekCerts:
		p.Addf("--ek-ca-out goes with --ek-certs")
	case o.ekCerts && o.printHashes:
		p.Addf("--print-ek-hashes and --ek-certs are exclusive: with --ek-certs the broker trusts the EK CA")
	case o.ekCerts && o.addr != "" && o.ekCAOut == "":
		p.Addf("--ek-ca-out is required with --addr and --ek-certs")
	}
	if o.eventLogPath != "" {
		var err error
		o.eventLog, err = readEventLog(o.eventLogPath)
		p.Check("event-log", err)
	}
	return p.Err()
}

// readEventLog reads path and checks that the nodes can boot from it: a
// TCG event log with SHA-256 digests.
func readEventLog(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if _, err := softtpm.EventLogPCRs(raw); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return raw, nil
}

func keyType(s string) (softtpm.KeyType, error) {
	switch s {
	case "ecc":
		return softtpm.ECC, nil
	case "rsa":
		return softtpm.RSA, nil
	}
	return 0, fmt.Errorf("unknown key type %q: want ecc or rsa", s)
}

func runLoadgen(ctx context.Context, o loadgenOpts, stdin io.Reader, stdout, stderr io.Writer) int {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	key, _ := keyType(o.key)
	opts := loadgen.Opts{Nodes: o.nodes, Concurrency: o.concurrency, Key: key, Serve: o.serve,
		Addr: o.addr, BrokerPID: o.brokerPID, BrokerMetrics: o.brokerMetrics, EventLog: o.eventLog, Progress: stderr}
	if o.addr != "" {
		ca, err := os.ReadFile(o.caPath)
		if err != nil {
			fmt.Fprintf(stderr, "loadgen: %v\n", err)
			return 1
		}
		opts.CAPEM = ca
	}
	if o.printHashes {
		opts.Ready = func(nodes []*softtpm.Node) error { return printHashes(nodes, o.addr != "", stdin, stdout, stderr) }
	}
	if o.ekCerts {
		ca, err := newEKCA(o.ekCAOut)
		if err != nil {
			fmt.Fprintf(stderr, "loadgen: %v\n", err)
			return 1
		}
		opts.EKCA = ca
		if o.addr != "" {
			opts.Ready = func([]*softtpm.Node) error { return waitEKCA(o.ekCAOut, stdin, stderr) }
		}
	}
	if o.cpuProfile != "" {
		f, err := os.OpenFile(o.cpuProfile, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			fmt.Fprintf(stderr, "loadgen: %v\n", err)
			return 1
		}
		defer f.Close()
		opts.CPUProfile = f
	}
	sum, err := loadgen.Run(ctx, opts)
	if err != nil {
		fmt.Fprintf(stderr, "loadgen: %v\n", err)
		return 1
	}
	if o.asJSON {
		err = sum.WriteJSON(stdout)
	} else {
		err = sum.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "loadgen: %v\n", err)
		return 1
	}
	if len(sum.Errors) > 0 || ctx.Err() != nil {
		return 1
	}
	return 0
}

// printHashes writes the fleet's EK hashes, one a line, and with wait
// reads a line from stdin before the run starts.
func printHashes(nodes []*softtpm.Node, wait bool, stdin io.Reader, stdout, stderr io.Writer) error {
	for _, h := range loadgen.EKHashes(nodes) {
		fmt.Fprintln(stdout, h)
	}
	if !wait {
		return nil
	}
	fmt.Fprintf(stderr, "loadgen: %d EK hashes printed; press Enter once the broker trusts them\n", len(nodes))
	if _, err := bufio.NewReader(stdin).ReadString('\n'); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("unable to read stdin: %w", err)
	}
	return nil
}

// newEKCA makes the fleet's EK CA and, with out, writes its root there.
func newEKCA(out string) (*softtpm.EKCA, error) {
	ca, err := softtpm.NewEKCA("keybroker loadgen")
	if err != nil {
		return nil, err
	}
	if out != "" {
		if err := os.WriteFile(out, ca.RootPEM(), 0o644); err != nil {
			return nil, fmt.Errorf("unable to write the EK CA: %w", err)
		}
	}
	return ca, nil
}

// waitEKCA tells the operator how to trust the EK CA written to path and
// reads a line from stdin.
func waitEKCA(path string, stdin io.Reader, stderr io.Writer) error {
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	fmt.Fprintf(stderr, "loadgen: EK CA root written to %s; configure the broker with\n"+
		"  ek_ca %q { roots = [%q] }\n"+
		"and a policy selecting ek_cas = [%q] that releases a tls_certificate, restart it, then press Enter\n",
		path, loadgen.EKCAName, path, loadgen.EKCAName)
	if _, err := bufio.NewReader(stdin).ReadString('\n'); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("unable to read stdin: %w", err)
	}
	return nil
}
