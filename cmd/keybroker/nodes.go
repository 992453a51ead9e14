package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/cli"
)

// oneEK is the Args of commands that take one node, by EK hash or prefix.
func oneEK(_ *cobra.Command, args []string) error {
	switch {
	case len(args) == 0:
		return cli.Usagef("missing the node's EK hash (or its first %d hex digits or more)", broker.MinEKHashPrefix)
	case len(args) > 1:
		return cli.Usagef("unexpected arguments %q", args[1:])
	}
	if err := broker.CheckEKHashRef(args[0]); err != nil {
		return cli.Usagef("%v", err)
	}
	return nil
}

type nodesListOpts struct {
	storeFlags
	vault  vaultFlags
	after  string
	limit  int
	asJSON bool
}

func nodesListCmd() *cobra.Command {
	var o nodesListOpts
	cmd := &cobra.Command{
		Use:   "list (--config broker.hcl | --data-dir DIR | --vault-mount auth/tpm)",
		Short: "List the nodes the broker keeps records of, by EK hash",
		Long: `Lists node records in EK hash order: first and last verified attestation,
last receipt, whether the node is on the deny list, and its node SVIDs. Pass
the last EK hash printed as --after to get the next page. With --vault-mount
it lists those the Vault auth method mounted there keeps (its nodes/ path).`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var p cli.Problems
			o.checkWith(&p, &o.vault)
			if o.limit < 1 || o.limit > store.MaxListLimit {
				p.Addf("--limit must be 1 to %d", store.MaxListLimit)
			}
			if err := p.Err(); err != nil {
				return err
			}
			return cli.Code(nodesList(o, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	o.add(cmd)
	o.vault.add(cmd)
	f := cmd.Flags()
	f.StringVar(&o.after, "after", "", "only nodes whose EK hash sorts after this one")
	f.IntVar(&o.limit, "limit", store.DefaultListLimit, "at most this many nodes")
	f.BoolVar(&o.asJSON, "json", false, "print JSON, one node per line (without evidence)")
	return cmd
}

func nodesList(o nodesListOpts, stdout, stderr io.Writer) int {
	opts := store.ListNodesOpts{Limit: o.limit, After: strings.ToLower(o.after)}
	var ns []broker.NodeStatus
	var err error
	if o.vault.set() {
		r, ok := o.vault.open("nodes", stderr)
		if !ok {
			return 1
		}
		ns, err = broker.ListNodeStatusFrom(context.Background(), r, opts, false)
	} else {
		where, ok := o.load("nodes", stderr)
		if !ok {
			return 1
		}
		ns, err = broker.ListNodeStatus(context.Background(), where, opts, false)
	}
	if err != nil {
		fmt.Fprintf(stderr, "nodes: %v\n", err)
		return 1
	}
	if o.asJSON {
		return writeJSONLines(stdout, stderr, "nodes", ns)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "EK HASH\tFIRST SEEN\tLAST SEEN\tLAST RECEIPT\tDENY-LISTED\tSVIDS")
	for _, n := range ns {
		denied := "no"
		if n.Denial != nil {
			denied = fmt.Sprintf("yes (%s, receipt %s)", n.Denial.Check, n.Denial.ReceiptID)
		}
		var svids []string
		for _, s := range n.SVIDs {
			svids = append(svids, fmt.Sprintf("%s (until %s)", s.ID, s.NotAfter.UTC().Format(time.RFC3339)))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n.EKHash, rfc3339(n.FirstSeen), rfc3339(n.LastSeen), n.LastReceiptID, denied, strings.Join(svids, ", "))
	}
	tw.Flush()
	return 0
}

func rfc3339(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

type nodesShowOpts struct {
	storeFlags
	vault    vaultFlags
	evidence bool
}

func nodesShowCmd() *cobra.Command {
	var o nodesShowOpts
	cmd := &cobra.Command{
		Use:   "show (--config broker.hcl | --data-dir DIR | --vault-mount auth/tpm) EKHASH",
		Short: "Print a node's record and deny-list entry, as JSON",
		Long: `Prints, as JSON, the record the broker keeps of the node — first and last
attestation, TPM counters, last receipt, node SVIDs and workload entries —
and its deny-list entry ("denial"), if any. The node is named by its EK hash
or a unique prefix of at least 8 hex digits. --evidence adds the evidence of
its last verified attestation (see 'keybroker evidence show'). With
--vault-mount it shows a node the Vault auth method mounted there keeps.`,
		Args: oneEK,
		RunE: func(cmd *cobra.Command, args []string) error {
			var p cli.Problems
			o.checkWith(&p, &o.vault)
			if err := p.Err(); err != nil {
				return err
			}
			return cli.Code(nodesShow(o, args[0], cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	o.add(cmd)
	o.vault.add(cmd)
	cmd.Flags().BoolVar(&o.evidence, "evidence", false, "include the node's last verified evidence")
	return cmd
}

func nodesShow(o nodesShowOpts, ek string, stdout, stderr io.Writer) int {
	n, ok := nodeStatus("nodes", o.storeFlags, o.vault, ek, o.evidence, stderr)
	if !ok {
		return 1
	}
	b, err := json.MarshalIndent(n, "", "  ")
	if err != nil {
		fmt.Fprintf(stderr, "nodes: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s\n", b)
	return 0
}

// nodeStatus reads the status of the node ek from the broker's store (or
// its admin socket) or, with --vault-mount, from the Vault auth method;
// it reports failures on stderr as the command name does.
func nodeStatus(name string, s storeFlags, v vaultFlags, ek string, evidence bool, stderr io.Writer) (broker.NodeStatus, bool) {
	var n broker.NodeStatus
	var err error
	if v.set() {
		r, ok := v.open(name, stderr)
		if !ok {
			return n, false
		}
		n, err = broker.NodeStatusFrom(context.Background(), r, ek, evidence)
	} else {
		where, ok := s.load(name, stderr)
		if !ok {
			return n, false
		}
		n, err = broker.GetNodeStatus(context.Background(), where, ek, evidence)
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: node %s: %v\n", name, ek, err)
		return n, false
	}
	return n, true
}

type nodesActionOpts struct {
	storeFlags
	reason string
	asJSON bool
}

// nodesActionCmd is `nodes forget` or `nodes allow`.
func nodesActionCmd(verb, short, long string, do func(context.Context, *broker.Config, string, string, string) (store.Receipt, error)) *cobra.Command {
	var o nodesActionOpts
	cmd := &cobra.Command{
		Use:   verb + " (--config broker.hcl | --data-dir DIR) EKHASH --reason TEXT",
		Short: short,
		Long:  long,
		Args:  oneEK,
		RunE: func(cmd *cobra.Command, args []string) error {
			var p cli.Problems
			o.check(&p)
			if strings.TrimSpace(o.reason) == "" {
				p.Addf("--reason is required: say why, for the receipt")
			}
			if err := p.Err(); err != nil {
				return err
			}
			return cli.Code(nodesAction(o, verb, args[0], do, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	o.add(cmd)
	f := cmd.Flags()
	f.StringVar(&o.reason, "reason", "", "why, recorded in the receipt (required)")
	f.BoolVar(&o.asJSON, "json", false, "print the receipt as JSON")
	return cmd
}

func nodesAction(o nodesActionOpts, verb, ek string, do func(context.Context, *broker.Config, string, string, string) (store.Receipt, error), stdout, stderr io.Writer) int {
	where, ok := o.load("nodes "+verb, stderr)
	if !ok {
		return 1
	}
	r, err := do(context.Background(), where, ek, o.reason, operatorName())
	if err != nil {
		fmt.Fprintf(stderr, "nodes %s: node %s: %v\n", verb, ek, err)
		return 1
	}
	if o.asJSON {
		if err := json.NewEncoder(stdout).Encode(r); err != nil {
			fmt.Fprintf(stderr, "nodes %s: %v\n", verb, err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(stdout, "%s: node %s (receipt %s)\n", r.Action, r.EKHash, r.ID)
	return 0
}

func nodesForgetCmd() *cobra.Command {
	return nodesActionCmd("forget", "Delete a node's record and deny-list entry, e.g. after a TPM2_Clear",
		`Deletes the record the broker keeps of the node — its TPM counters, its last
evidence, its node SVIDs (which stop authenticating it for workload SVIDs) —
and its deny-list entry, and records the action as a receipt of its own, with
the reason and the OS user running the command. The node's next attestation
is a first one (history reset): for a node whose TPM was cleared, or that
left the fleet. Name the node by its EK hash or a unique prefix of at least 8
hex digits. While a broker runs on a bolt store, it goes through its admin
socket (mode 0600: run it as the broker's user); otherwise the store is
written directly.`, broker.ForgetNode)
}

func nodesAllowCmd() *cobra.Command {
	return nodesActionCmd("allow", "Take a node off the deny list",
		`Takes the node off the deny list, so that its current node SVID gets workload
SVIDs again without attesting first, and records the action as a receipt of
its own, with the reason and the OS user running the command. A node not on
the deny list is refused and nothing is recorded. Name the node by its EK
hash or a unique prefix of at least 8 hex digits (a node that is only on the
deny list, without a record, by its full EK hash). It goes through the
running broker as 'nodes forget' does.`, broker.AllowNode)
}

// operatorName is the OS user running the command, for receipts.
func operatorName() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return fmt.Sprintf("uid %d", os.Getuid())
}
