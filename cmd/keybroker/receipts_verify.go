package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/receiptchain"
	"github.com/keybroker/keybroker/internal/cli"
)

const receiptsVerifyLong = `Verifies a store's receipt chain (docs/receipts.md): every receipt links by
hash to the one before it, the sequence has no gap, every checkpoint's
signature verifies under a checkpoint key given, and the newest checkpoint
covers the newest receipt. It prints a report and exits 1 on any problem,
naming the first bad receipt.

With FILE (- for stdin) it checks an export written by "keybroker receipts
export" offline: receipts and checkpoints as JSON lines, in any order. Each
receipt line is hashed as it is. Without FILE it reads the store of
--config or --data-dir, as "receipts export" would export it.

The checkpoint keys are PEM public keys (--key, repeatable: one per broker
that signed, as "keybroker receipts checkpoint-key" prints them); without
--key, the key of the broker of --config or --data-dir. Receipts written
before receipts were chained (no seq) are counted, not verified; one made
after the chain began is a problem.`

type verifyOpts struct {
	storeFlags
	keys []string
}

func receiptsVerifyCmd() *cobra.Command {
	var o verifyOpts
	cmd := &cobra.Command{
		Use:   "verify [FILE] [--key KEY.pem]... [--config broker.hcl | --data-dir DIR]",
		Short: "Verify the receipt chain of an export or of the store",
		Long:  receiptsVerifyLong,
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var p cli.Problems
			switch {
			case len(args) == 0:
				o.check(&p)
			case len(o.keys) == 0 && o.configPath == "" && o.dataDir == "":
				p.Addf("--key, --config or --data-dir is required to check checkpoint signatures")
			}
			if err := p.Err(); err != nil {
				return err
			}
			return cli.Code(receiptsVerify(o, args, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	o.add(cmd)
	cmd.Flags().StringArrayVar(&o.keys, "key", nil, "PEM public key checkpoints may be signed with (repeatable)")
	return cmd
}

func receiptsVerify(o verifyOpts, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	const name = "receipts verify"
	var cfg *broker.Config
	if o.configPath != "" || o.dataDir != "" {
		var ok bool
		if cfg, ok = o.load(name, stderr); !ok {
			return 1
		}
	}
	keys, err := checkpointKeys(o.keys, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	var rep receiptchain.Report
	if len(args) == 0 {
		rep, err = broker.VerifyChain(context.Background(), cfg, keys)
	} else {
		rep, err = verifyFile(args[0], stdin, keys)
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	printReport(stdout, rep)
	if !rep.OK() {
		return 1
	}
	return 0
}

// checkpointKeys reads the --key files, or the checkpoint key of cfg.
func checkpointKeys(files []string, cfg *broker.Config) (receiptchain.Keys, error) {
	keys := receiptchain.Keys{}
	if len(files) == 0 {
		pemKey, err := broker.CheckpointPublicKey(cfg)
		if err != nil {
			return nil, err
		}
		return keys, receiptchain.ParseKeys(pemKey, keys)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("unable to read checkpoint key: %w", err)
		}
		if err := receiptchain.ParseKeys(data, keys); err != nil {
			return nil, fmt.Errorf("checkpoint key %s: %w", f, err)
		}
	}
	return keys, nil
}

// verifyFile verifies the export in path (- for stdin).
func verifyFile(path string, stdin io.Reader, keys receiptchain.Keys) (receiptchain.Report, error) {
	in := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return receiptchain.Report{}, fmt.Errorf("unable to open the export: %w", err)
		}
		defer f.Close()
		in = f
	}
	v := receiptchain.NewVerifier(keys)
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), receiptchain.MaxLine)
	for sc.Scan() {
		v.Add(sc.Bytes())
	}
	if err := sc.Err(); err != nil {
		return receiptchain.Report{}, fmt.Errorf("unable to read the export: %w", err)
	}
	return v.Report(), nil
}

func printReport(w io.Writer, rep receiptchain.Report) {
	if rep.Receipts > 0 {
		fmt.Fprintf(w, "receipts: %d chained, seq %d to %d\n", rep.Receipts, rep.First, rep.Last)
	} else {
		fmt.Fprintln(w, "receipts: none chained")
	}
	if rep.Unchained > 0 {
		fmt.Fprintf(w, "receipts written before chaining (not verified): %d\n", rep.Unchained)
	}
	fmt.Fprintf(w, "checkpoints: %d with a valid signature, the newest covering seq %d\n", rep.Checkpoints, rep.Covered)
	if rep.OK() {
		fmt.Fprintln(w, "OK: the chain is intact and covered by a signed checkpoint")
		return
	}
	fmt.Fprintf(w, "FAILED: %d problems\n", len(rep.Problems))
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "  %s\n", p)
	}
	if p := rep.Problems[0]; p.Seq != 0 || p.ReceiptID != "" {
		fmt.Fprintf(w, "first bad receipt: %s\n", firstBad(p))
	}
}

func firstBad(p receiptchain.Problem) string {
	switch {
	case p.ReceiptID == "":
		return fmt.Sprintf("seq %d", p.Seq)
	case p.Seq == 0:
		return p.ReceiptID
	}
	return fmt.Sprintf("seq %d (%s)", p.Seq, p.ReceiptID)
}

func receiptsCheckpointKeyCmd() *cobra.Command {
	var o storeFlags
	var vault vaultFlags
	cmd := &cobra.Command{
		Use:   "checkpoint-key (--config broker.hcl | --data-dir DIR | --vault-mount auth/tpm)",
		Short: "Print the public key that verifies the broker's receipt checkpoints",
		Long: `Prints the PEM public key (ECDSA P-256, PKIX "PUBLIC KEY") of the broker's
receipt checkpoint key: receipt_checkpoints' key_file, or the key the broker
made in data_dir/receipts on its first start. Publish it for auditors, who
pass it to "keybroker receipts verify --key". It never creates a key.
With --vault-mount it prints the key of the Vault auth method mounted there
(its checkpoint-key path; the token needs read on it), which the auth
method makes on first use.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var p cli.Problems
			vault.check(&p, o.configPath != "" || o.dataDir != "")
			if !vault.set() {
				o.check(&p)
			}
			if err := p.Err(); err != nil {
				return err
			}
			var pemKey []byte
			var err error
			if vault.set() {
				r, ok := vault.open("receipts checkpoint-key", cmd.ErrOrStderr())
				if !ok {
					return cli.Code(1)
				}
				if pemKey, err = r.CheckpointKey(cmd.Context()); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "receipts checkpoint-key: %v\n", err)
					return cli.Code(1)
				}
			} else {
				cfg, ok := o.load("receipts checkpoint-key", cmd.ErrOrStderr())
				if !ok {
					return cli.Code(1)
				}
				if pemKey, err = broker.CheckpointPublicKey(cfg); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "receipts checkpoint-key: %v (has the broker started?)\n", err)
					return cli.Code(1)
				}
			}
			_, err = cmd.OutOrStdout().Write(pemKey)
			return err
		},
	}
	o.add(cmd)
	vault.add(cmd)
	return cmd
}
