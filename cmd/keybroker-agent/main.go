// Command keybroker-agent runs on a node: it proves to a keybroker broker,
// with the node's TPM, what the node booted, and writes the credentials the
// broker releases, which only this TPM can open.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/internal/cli"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

const long = `keybroker-agent runs on a node: it proves, with the node's TPM, what the node
booted to a keybroker broker or to Vault's TPM auth method, and keeps the
credentials they release, which only this TPM can open.`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	root := cli.NewRoot("keybroker-agent", "Attest this node's TPM to a keybroker broker or to Vault", long,
		bootstrapCmd(), reopenCmd(), runCmd(), vaultLoginCmd(), ekHashCmd())
	return cli.Execute(root, args, stdout, stderr)
}

type bootstrapOpts struct {
	node       nodeFlags
	broker     brokerFlags
	out        string
	kubeconfig string
	bootKube   string
	onChange   string
	quiet      bool
	result     resultFlags
	resident   residentFlags
	cache      string
}

func bootstrapCmd() *cobra.Command {
	var o bootstrapOpts
	cmd := &cobra.Command{
		Use:   "bootstrap --broker HOST:PORT --ca CA.pem --out DIR",
		Short: "Attest once and write the released credentials",
		Long: `Runs challenge → activate credential → quote → attest → open in the TPM, then
writes key.pem (0600), cert.pem and chain.pem atomically to --out, with
<release>.json (0600) for each Vault KV secret released (vault_kv) and
<release>.token (0600, the token alone) for each Vault token (vault_token).
For a kubelet release it writes kubelet-client.pem (the client certificate,
its chain and its key, 0600) to --out and a kubeconfig naming the API server,
its CA and that file to --kubeconfig (default --out/kubelet.kubeconfig, 0600):
point the kubelet's --kubeconfig at it. A kubelet release in bootstrap_token
mode is a bootstrap kubeconfig (the API server, its CA and a short-lived
bootstrap token, 0600) at --bootstrap-kubeconfig (default
--out/bootstrap-kubelet.kubeconfig): the kubelet's --bootstrap-kubeconfig.

With --ear-out it also writes the broker's attestation result (an EAR JWT
signed by the broker, for a relying party; the broker needs an
attestation_results block) to that file (0600), carrying the relying
party's --ear-nonce when given.

With --cache DIR it also keeps what the broker released, still sealed (the
TPM import blobs and encrypted payloads, never a plaintext key), with the
receipt ID and each credential's expiry, in DIR/sealed-credentials.json
(0600), for reopen after a reboot without the broker. A stolen disk holds
only TPM-bound blobs; whoever has the disk and this same TPM in the same boot
state can open them until they expire — as the running node can. It also
keeps the PCR-policy approvals of pcr_policy "authorized" releases in
DIR/pcr-approvals.json (0600), replaced at each attestation right after the
policy counter advanced, and deleted when the broker refuses the node: a
credential cached before re-opens in any state the broker approved since.

With --pcr-policy-counter default (or an NV index) the agent defines, on
first use, its policy-version NV counter (a TPM_NT_COUNTER in the owner
range), reports it with each attestation and advances it to the bound the
broker sends, also with a refusal (after a revocation): pcr_policy
"authorized" releases need it.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var p cli.Problems
			caPEM := o.broker.check(&p)
			in := o.node.check(&p)
			p.Required(cmd, "out")
			nonce := o.result.check(&p)
			in.residentNames, in.residentPCRs = o.resident.check(&p)
			if err := p.Err(); err != nil {
				return err
			}
			return cli.Code(bootstrap(o, caPEM, in, nonce, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	f := cmd.Flags()
	o.broker.register(f)
	f.StringVar(&o.out, "out", "", "directory for key.pem, cert.pem and chain.pem, <release>.json (0600) for each Vault KV secret and <release>.token (0600) for each Vault token released, kubelet-client.pem for a kubelet release (required; created if missing)")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "where to write the kubeconfig of a kubelet release (default: --out/kubelet.kubeconfig)")
	f.StringVar(&o.bootKube, "bootstrap-kubeconfig", "", "where to write the bootstrap kubeconfig of a kubelet release in bootstrap_token mode (default: --out/bootstrap-kubelet.kubeconfig)")
	f.StringVar(&o.onChange, "on-change", "", "shell command to run after the credentials changed (e.g. 'systemctl reload nginx')")
	o.node.register(f, "give up after this long")
	o.resident.register(f, "the key is written to --out/key.pem (a tls_certificate) or --out/svid_key.pem (an x509_svid, with --out/svid.pem) as a TSS2 key file (-----BEGIN TSS2 PRIVATE KEY-----, parent TPM_RH_OWNER, empty password) that OpenSSL's tpm2 provider loads")
	o.result.register(f)
	f.StringVar(&o.cache, "cache", "", "also keep the released credentials, still sealed, in this directory (sealed-credentials.json, 0600) for reopen after a reboot without the broker (created if missing)")
	f.BoolVar(&o.quiet, "quiet", false, "print only errors")
	return cmd
}

func bootstrap(o bootstrapOpts, caPEM []byte, in nodeInputs, nonce []byte, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(context.Background(), o.node.timeout)
	defer cancel()

	rw, err := agent.OpenTPM(o.node.tpm)
	if err != nil {
		fmt.Fprintf(stderr, "bootstrap failed at tpm: %v\n", err)
		return 1
	}
	defer rw.Close()
	node, err := agent.NewNode(rw, agent.NodeOpts{AK: o.node.ak, EKIntermediates: in.intermediates, TPMResident: in.residentNames, TPMResidentPCRs: in.residentPCRs, PolicyCounter: in.counter})
	if err != nil {
		fmt.Fprintf(stderr, "bootstrap failed at tpm: %v\n", err)
		return 1
	}
	defer node.Close()
	conn, err := agent.Dial(o.broker.addr, caPEM, o.broker.serverName)
	if err != nil {
		fmt.Fprintf(stderr, "bootstrap failed at connect: %v\n", err)
		return 1
	}
	defer conn.Close()

	opts := agent.BootstrapOpts{OutDir: o.out, EventLog: in.eventLog, Kubeconfig: o.kubeconfig, BootstrapKubeconfig: o.bootKube, RelyingPartyNonce: nonce, ResultFile: o.result.out, CacheDir: o.cache}
	if !o.quiet {
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
	if o.onChange != "" && res.Changed {
		if err := runOnChange(ctx, o.onChange, o.out, res.Serial, stdout, stderr); err != nil {
			fmt.Fprintf(stderr, "bootstrap: credentials written, but --on-change failed: %v\n", err)
			return 1
		}
	}
	return 0
}

func ekHashCmd() *cobra.Command {
	var spec string
	cmd := &cobra.Command{
		Use:   "ek-hash [--tpm TPM]",
		Short: "Print the EK identity hash the broker trusts (ek_allow, ek_hashes)",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkTPMSpec(spec); err != nil {
				return cli.Usagef("--tpm: %v", err)
			}
			return cli.Code(ekHash(spec, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	tpmFlag(cmd.Flags(), &spec)
	return cmd
}

func ekHash(spec string, stdout, stderr io.Writer) int {
	rw, err := agent.OpenTPM(spec)
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
