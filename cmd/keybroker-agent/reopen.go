package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/internal/cli"
)

type reopenOpts struct {
	tpm        string
	cache      string
	out        string
	kubeconfig string
	bootKube   string
	onChange   string
}

// reopenCmd is a command of its own rather than a bootstrap flag: it takes
// none of bootstrap's broker flags, never dials, and a unit that falls back
// to it says plainly that it runs offline.
func reopenCmd() *cobra.Command {
	var o reopenOpts
	cmd := &cobra.Command{
		Use:   "reopen --cache DIR --out DIR",
		Short: "Write the credentials a bootstrap --cache kept sealed, offline",
		Long: `Opens, inside the TPM and without contacting the broker, the credentials
that bootstrap --cache kept still sealed in --cache (sealed-credentials.json),
and writes the same files bootstrap writes to --out (and --kubeconfig,
--bootstrap-kubeconfig), atomically: for a reboot while the broker is out of
reach. It writes nothing when any cached credential has expired, when a
pcr_sealed credential is sealed to PCR values this TPM no longer holds (the
node booted something else), or when the cache is malformed, readable by
others or does not open in this TPM.

Trade-off: the cache holds only TPM-bound blobs, so a stolen disk alone opens
nothing; but whoever has the disk and this same TPM in the same boot state
can open them until they expire — as the running node can. The expiry of a
Vault secret or token is read from the cache file only.

With --on-change it runs a shell command when the files it wrote differ from
what --out held (KEYBROKER_OUT and KEYBROKER_SERIAL set, as bootstrap does),
e.g. to restart a service only when reopen restored older credentials. It
runs once and does not loop: while the broker is reachable, run --out
--cache keeps both the files and the cache current.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var p cli.Problems
			p.Check("tpm", checkTPMSpec(o.tpm))
			p.Required(cmd, "cache", "out")
			if err := p.Err(); err != nil {
				return err
			}
			return cli.Code(reopen(o, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	f := cmd.Flags()
	tpmFlag(f, &o.tpm)
	f.StringVar(&o.cache, "cache", "", "directory a bootstrap --cache wrote sealed-credentials.json to (required)")
	f.StringVar(&o.out, "out", "", "directory for the files bootstrap --out writes (required; created if missing)")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "where to write the kubeconfig of a kubelet release (default: --out/kubelet.kubeconfig)")
	f.StringVar(&o.bootKube, "bootstrap-kubeconfig", "", "where to write the bootstrap kubeconfig of a kubelet release in bootstrap_token mode (default: --out/bootstrap-kubelet.kubeconfig)")
	f.StringVar(&o.onChange, "on-change", "", "shell command to run after the files written differ from what --out held (e.g. 'systemctl restart nginx')")
	return cmd
}

func reopen(o reopenOpts, stdout, stderr io.Writer) int {
	rw, err := agent.OpenTPM(o.tpm)
	if err != nil {
		fmt.Fprintf(stderr, "reopen failed at tpm: %v\n", err)
		return 1
	}
	defer rw.Close()
	node, err := agent.NewNode(rw, agent.NodeOpts{})
	if err != nil {
		fmt.Fprintf(stderr, "reopen failed at tpm: %v\n", err)
		return 1
	}
	defer node.Close()
	res, err := agent.Reopen(node, o.cache, agent.FileOut{OutDir: o.out, Kubeconfig: o.kubeconfig, BootstrapKubeconfig: o.bootKube})
	if err != nil {
		var se *agent.StepError
		if errors.As(err, &se) {
			fmt.Fprintf(stderr, "reopen failed at %s: %v\n", se.Step, se.Err)
		} else {
			fmt.Fprintf(stderr, "reopen failed: %v\n", err)
		}
		return 1
	}
	fmt.Fprintf(stdout, "reopened receipt %s from %s, wrote %s (valid until %s)\n", res.ReceiptID, o.cache, o.out, res.NotAfter.UTC().Format(time.RFC3339))
	if o.onChange != "" && res.Changed {
		if err := runOnChange(context.Background(), o.onChange, o.out, res.Serial, stdout, stderr); err != nil {
			fmt.Fprintf(stderr, "reopen: credentials written, but --on-change failed: %v\n", err)
			return 1
		}
	}
	return 0
}
