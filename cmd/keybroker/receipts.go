package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/receiptchain"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/cli"
)

// storeFlags name the broker whose store a command reads or writes.
type storeFlags struct {
	configPath, dataDir string
}

func (s *storeFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&s.configPath, "config", "", "broker configuration file (its data_dir or etcd block names the store)")
	f.StringVar(&s.dataDir, "data-dir", "", "the broker's data directory (instead of --config)")
}

func (s *storeFlags) check(p *cli.Problems) {
	if s.configPath == "" && s.dataDir == "" {
		p.Addf("--config or --data-dir is required")
	}
}

// checkWith checks s and v of a command that reads the broker's store or,
// with --vault-mount, the Vault auth method's: one of them, not both.
func (s *storeFlags) checkWith(p *cli.Problems, v *vaultFlags) {
	v.check(p, s.configPath != "" || s.dataDir != "")
	if !v.set() {
		s.check(p)
	}
}

// load returns the configuration naming the store; a bad one is reported
// on stderr, prefixed by name.
func (s *storeFlags) load(name string, stderr io.Writer) (*broker.Config, bool) {
	if s.configPath == "" {
		return &broker.Config{DataDir: s.dataDir}, true
	}
	cfg, err := broker.LoadConfig(s.configPath)
	if err != nil {
		fmt.Fprintf(stderr, "%s: invalid configuration:\n%v\n", name, err)
		return nil, false
	}
	return cfg, true
}

// writeJSONLines writes items as JSON lines; a write failure is reported as
// "name: error" and answers 1, success 0.
func writeJSONLines[T any](stdout, stderr io.Writer, name string, items []T) int {
	enc := json.NewEncoder(stdout)
	for _, it := range items {
		if err := enc.Encode(it); err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", name, err)
			return 1
		}
	}
	return 0
}

type receiptsOpts struct {
	storeFlags
	vault  vaultFlags
	ek     string
	limit  int
	asJSON bool
}

func receiptsListCmd() *cobra.Command {
	var o receiptsOpts
	cmd := &cobra.Command{
		Use:   "list (--config broker.hcl | --data-dir DIR | --vault-mount auth/tpm)",
		Short: "List decision receipts, newest first",
		Long: `Lists the broker's decision receipts, newest first. With --vault-mount it
lists those of the Vault auth method mounted there (its receipts/ path)
instead: the token (VAULT_TOKEN) needs read and list on receipts/.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var p cli.Problems
			o.checkWith(&p, &o.vault)
			if err := p.Err(); err != nil {
				return err
			}
			return cli.Code(receiptsList(o, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	o.add(cmd)
	o.vault.add(cmd)
	f := cmd.Flags()
	f.StringVar(&o.ek, "ek", "", "only receipts for this EK hash")
	f.IntVar(&o.limit, "limit", 50, "at most this many receipts, newest first")
	f.BoolVar(&o.asJSON, "json", false, "print JSON, one receipt per line")
	return cmd
}

func receiptsList(o receiptsOpts, stdout, stderr io.Writer) int {
	var list func(context.Context, store.ListOpts) ([]store.Receipt, error)
	if o.vault.set() {
		r, ok := o.vault.open("receipts", stderr)
		if !ok {
			return 1
		}
		list = r.ListReceipts
	} else {
		where, ok := o.load("receipts", stderr)
		if !ok {
			return 1
		}
		list = func(ctx context.Context, opts store.ListOpts) ([]store.Receipt, error) {
			return broker.ListReceipts(ctx, where, opts)
		}
	}
	rs, err := list(context.Background(), store.ListOpts{Limit: o.limit, EKHash: o.ek})
	if err != nil {
		fmt.Fprintf(stderr, "receipts: %v\n", err)
		return 1
	}
	if o.asJSON {
		return writeJSONLines(stdout, stderr, "receipts", rs)
	}
	printReceipts(stdout, rs)
	return 0
}

func printReceipts(w io.Writer, rs []store.Receipt) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RECEIPT\tTIME\tEK\tDECISION\tPOLICIES\tRELEASED")
	for _, r := range rs {
		decision := "allowed"
		switch {
		case r.Action != "":
			decision = fmt.Sprintf("%s by %s: %q", r.Action, r.Operator, r.Reason)
		case !r.Allowed:
			decision = "denied: " + r.Check
		}
		if r.DenyListed {
			decision += " (deny-listed)"
		}
		var released []string
		for _, it := range r.Released {
			released = append(released, fmt.Sprintf("%s(%s serial %s)", it.Name, it.Mode, it.Serial))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%v\n", r.ID, r.Time.UTC().Format(time.RFC3339), shortEK(r.EKHash), decision, r.Policies, released)
		for _, f := range r.Failures {
			fmt.Fprintf(tw, "\t\t\t\t\t  - %s\n", f)
		}
	}
	tw.Flush()
}

// shortEK is the first 16 hex digits of an EK hash.
func shortEK(ek string) string {
	if len(ek) > 16 {
		return ek[:16]
	}
	return ek
}

const receiptsExportLong = `Writes every receipt selected, newest first, as JSON lines (one receipt a
line, in the canonical encoding its chain hash covers), then every signed
checkpoint of the receipt chain ({"checkpoint":{...}} lines), to stdout: for
archiving receipts before receipt_retention deletes them, and for "keybroker
receipts verify". The running broker first signs the chain head; receipts
chained after the newest checkpoint are left out. "receipts verify" needs
an export without --after, --before or --ek. --after and --before take RFC
3339 times (2026-01-02T15:04:05Z) or dates (2026-01-02, midnight UTC);
--after is inclusive, --before exclusive.
It reads through the running broker's admin socket, or from the store when
no broker runs, a page at a time. With stderr on a terminal it reports its
progress there every 10,000 receipts.

With --vault-mount it exports the chain of the Vault auth method mounted
there instead (VAULT_ADDR, VAULT_TOKEN as for "receipts list"), in the same
format: it asks the auth method to sign its chain head (update on
checkpoints; skipped when the token may not), then writes every receipt
(each chained one in its stored bytes) and every checkpoint, leaving out
receipts chained after the newest checkpoint. The token needs read and list
on receipts/ and checkpoints/. Verify the export with the auth method's own
key: "keybroker receipts checkpoint-key --vault-mount auth/tpm".
--after, --before and --ek do not apply there.`

type exportOpts struct {
	storeFlags
	vault             vaultFlags
	ek, after, before string
}

func receiptsExportCmd() *cobra.Command {
	var o exportOpts
	cmd := &cobra.Command{
		Use:   "export (--config broker.hcl | --data-dir DIR | --vault-mount auth/tpm) [--after TIME] [--before TIME] [--ek HASH]",
		Short: "Write receipts as JSON lines, newest first, for archiving",
		Long:  receiptsExportLong,
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var p cli.Problems
			o.vault.check(&p, o.configPath != "" || o.dataDir != "")
			switch {
			case !o.vault.set():
				o.check(&p)
			case o.ek != "" || o.after != "" || o.before != "":
				p.Addf("--vault-mount exports the whole chain: leave out --after, --before and --ek")
			}
			after, err := parseTimeFlag(o.after)
			p.Check("after", err)
			before, err := parseTimeFlag(o.before)
			p.Check("before", err)
			if !after.IsZero() && !before.IsZero() && !after.Before(before) {
				p.Addf("--after must be earlier than --before")
			}
			if err := p.Err(); err != nil {
				return err
			}
			opts := broker.ExportOpts{EKHash: o.ek, After: after, Before: before}
			return cli.Code(receiptsExport(o, opts, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	o.add(cmd)
	o.vault.add(cmd)
	f := cmd.Flags()
	f.StringVar(&o.ek, "ek", "", "only receipts for this EK hash")
	f.StringVar(&o.after, "after", "", "only receipts made at or after this time")
	f.StringVar(&o.before, "before", "", "only receipts made before this time")
	return cmd
}

// progressEvery is how many exported receipts apart progress is reported.
const progressEvery = 10000

func receiptsExport(o exportOpts, opts broker.ExportOpts, stdout, stderr io.Writer) int {
	bw := bufio.NewWriter(stdout)
	line := func(b []byte, err error) error {
		if err == nil {
			_, err = bw.Write(append(b, '\n'))
		}
		return err
	}
	checkpoint := func(c store.Checkpoint) error { return line(receiptchain.CheckpointLine(c)) }
	progress, written := isTerminal(stderr), 0
	var n int
	var err error
	if o.vault.set() {
		r, ok := o.vault.open("receipts export", stderr)
		if !ok {
			return 1
		}
		n, err = r.ExportChain(context.Background(), func(b []byte) error { return line(b, nil) }, checkpoint)
	} else {
		where, ok := o.load("receipts export", stderr)
		if !ok {
			return 1
		}
		n, err = broker.ExportChain(context.Background(), where, opts, func(r store.Receipt) error {
			if err := line(store.EncodeReceipt(&r)); err != nil {
				return err
			}
			if progress && written%progressEvery == progressEvery-1 {
				fmt.Fprintf(stderr, "receipts export: %d receipts, down to %s\n", written+1, r.Time.UTC().Format(time.RFC3339))
			}
			written++
			return nil
		}, checkpoint)
	}
	if ferr := bw.Flush(); err == nil {
		err = ferr
	}
	if err != nil {
		fmt.Fprintf(stderr, "receipts export: %v (%d receipts written)\n", err, n)
		return 1
	}
	return 0
}

// parseTimeFlag parses an RFC 3339 time or a date; empty is the zero time.
func parseTimeFlag(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	t, err := time.Parse(time.DateOnly, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not an RFC 3339 time or a date (YYYY-MM-DD)", s)
	}
	return t, nil
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
