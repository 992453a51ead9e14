// Command keybroker-agent runs on a node: it proves to a keybroker broker,
// with the node's TPM, what the node booted, and writes the credentials the
// broker releases, which only this TPM can open.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/internal/cli"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

const usage = `keybroker-agent: attest this node's TPM to a keybroker broker or to Vault.

Usage:
  keybroker-agent bootstrap --broker HOST:PORT --ca CA.pem --out DIR [flags]
  keybroker-agent run --broker HOST:PORT --ca CA.pem [--workload-socket PATH] [flags]
  keybroker-agent vault-login --vault-addr https://HOST:PORT --role ROLE [flags]
  keybroker-agent ek-hash [--tpm TPM]

Commands:
  bootstrap   challenge → activate credential → quote → attest → open in the
              TPM → write key.pem (0600), cert.pem, chain.pem atomically
  run         attest, then serve the SPIFFE Workload API on a unix socket and
              re-attest at half the node SVID's life, until SIGINT/SIGTERM
  vault-login challenge → activate credential → quote → login to Vault's TPM
              auth method → write the token to ~/.vault-token (0600) or
              print it as JSON (-format=json)
  ek-hash     print the EK identity hash the broker trusts (ek_allow, ek_hashes)

Run 'keybroker-agent COMMAND --help' for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	return cli.Dispatch("command", usage, map[string]cli.Command{
		"bootstrap":   bootstrap,
		"run":         runAgent,
		"vault-login": vaultLogin,
		"ek-hash":     ekHash,
	}, args, stdout, stderr)
}

func tpmFlag(fs *flag.FlagSet) *string {
	return fs.String("tpm", "/dev/tpmrm0", "the TPM: a device path (/dev/tpmrm0), tcp://HOST:PORT (swtpm's data port) or simulator (embedded, for demos)")
}

func bootstrap(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bootstrap", flag.ContinueOnError)
	fs.SetOutput(stderr)
	tpmSpec := tpmFlag(fs)
	brokerAddr := fs.String("broker", "", "broker address HOST:PORT (required)")
	caFile := fs.String("ca", "", "PEM file with the broker's CA bundle, pinned for TLS (required)")
	serverName := fs.String("server-name", "", "name to verify in the broker's certificate (default: the host in --broker)")
	out := fs.String("out", "", "directory for key.pem, cert.pem and chain.pem, and <release>.json (0600) for each Vault KV secret released (required; created if missing)")
	onChange := fs.String("on-change", "", "shell command to run after the credentials changed (e.g. 'systemctl reload nginx')")
	akType := fs.String("ak", "rsa", "attestation key type: rsa (RSA-2048) or ecc (P-256)")
	eventLog := fs.String("event-log", "auto", "TCG binary event log to send: auto (the kernel's, if present), none, or a file")
	ekIntermediates := fs.String("ek-intermediates", "", "PEM file with intermediate CA certificates to send with the EK certificate (at most 8)")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	quiet := fs.Bool("quiet", false, "print only errors")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if !cli.Required(fs, stderr, "--broker", "--ca", "--out") {
		return 2
	}
	caPEM, err := os.ReadFile(*caFile)
	if err != nil {
		fmt.Fprintf(stderr, "bootstrap: unable to read --ca: %v\n", err)
		return 1
	}
	logBytes, err := agent.ReadEventLog(*eventLog)
	if err != nil {
		fmt.Fprintf(stderr, "bootstrap: %v\n", err)
		return 1
	}
	var intermediates [][]byte
	if *ekIntermediates != "" {
		if intermediates, err = agent.ReadEKIntermediates(*ekIntermediates); err != nil {
			fmt.Fprintf(stderr, "bootstrap: %v\n", err)
			return 1
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	rw, err := agent.OpenTPM(*tpmSpec)
	if err != nil {
		fmt.Fprintf(stderr, "bootstrap failed at tpm: %v\n", err)
		return 1
	}
	defer rw.Close()
	node, err := agent.NewNode(rw, agent.NodeOpts{AK: *akType, EKIntermediates: intermediates})
	if err != nil {
		fmt.Fprintf(stderr, "bootstrap failed at tpm: %v\n", err)
		return 1
	}
	defer node.Close()
	conn, err := agent.Dial(*brokerAddr, caPEM, *serverName)
	if err != nil {
		fmt.Fprintf(stderr, "bootstrap failed at connect: %v\n", err)
		return 1
	}
	defer conn.Close()

	opts := agent.BootstrapOpts{OutDir: *out, EventLog: logBytes}
	if !*quiet {
		opts.Progress = func(s agent.Step, took time.Duration, detail string) {
			fmt.Fprintf(stdout, "%-9s %8s  %s\n", s, took.Round(100*time.Microsecond), detail)
		}
	}
	res, err := agent.Bootstrap(ctx, pb.NewBrokerClient(conn), node, opts)
	if err != nil {
		var se *agent.StepError
		if errors.As(err, &se) {
			fmt.Fprintf(stderr, "bootstrap failed at %s: %v\n", se.Step, se.Err)
		} else {
			fmt.Fprintf(stderr, "bootstrap failed: %v\n", err)
		}
		return 1
	}
	if *onChange != "" && res.Changed {
		cmd := exec.CommandContext(ctx, "/bin/sh", "-c", *onChange)
		cmd.Stdout, cmd.Stderr = stdout, stderr
		cmd.Env = append(os.Environ(), "KEYBROKER_OUT="+*out, "KEYBROKER_SERIAL="+res.Serial)
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(stderr, "bootstrap: credentials written, but --on-change failed: %v\n", err)
			return 1
		}
	}
	return 0
}

func ekHash(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ek-hash", flag.ContinueOnError)
	fs.SetOutput(stderr)
	tpmSpec := tpmFlag(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	rw, err := agent.OpenTPM(*tpmSpec)
	if err != nil {
		fmt.Fprintf(stderr, "ek-hash: %v\n", err)
		return 1
	}
	defer rw.Close()
	node, err := agent.NewNode(rw, agent.NodeOpts{})
	if err != nil {
		fmt.Fprintf(stderr, "ek-hash: %v\n", err)
		return 1
	}
	defer node.Close()
	h, err := node.EKHash()
	if err != nil {
		fmt.Fprintf(stderr, "ek-hash: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, h)
	return 0
}
