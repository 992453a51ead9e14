package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/cli"
)

const pcrPolicyLong = `Approved PCR states are the states in which pcr_policy = "authorized"
releases open (besides the state each node attested and its policy's
expected_states): a firmware, kernel or dbx update observed on a canary node,
or given by its values. Nodes receive a signature for each approved state at
their next attestation and keep it with their cached credentials, so that a
cached credential re-opens after the update without a new release. A revoked
state is never signed again, and approvals signed before the revocation stop
opening on each node once it has attested again (its policy counter passes
their version). While a broker runs on a bolt store the commands go through
its admin socket (run them as the broker's user); otherwise the store is used
directly (always for etcd).`

// pcrStateFlags name a PCR state: a node's last attested values of some
// PCRs, or explicit values.
type pcrStateFlags struct {
	storeFlags
	node   string
	pcrs   []uint
	values []string
	bank   string
	note   string
	asJSON bool
	// releases is approve's --release: the releases the approval is for.
	releases []string
}

func (o *pcrStateFlags) add(cmd *cobra.Command) {
	o.storeFlags.add(cmd)
	f := cmd.Flags()
	f.StringVar(&o.node, "node", "", "take the state from this node's last attestation, if it was allowed and its evidence verifies again (EK hash or a unique prefix)")
	f.UintSliceVar(&o.pcrs, "pcrs", nil, "with --node: the PCRs to take, e.g. 0,7")
	f.StringArrayVar(&o.values, "pcr", nil, "an explicit PCR value, INDEX=HEX (repeat for each PCR)")
	f.StringVar(&o.bank, "bank", "sha256", "the PCR bank: sha256, sha384 or sha512")
	f.StringVar(&o.note, "note", "", "a comment kept with the record")
	f.BoolVar(&o.asJSON, "json", false, "print the record as JSON")
}

// action checks the flags and returns the action they name.
func (o *pcrStateFlags) action(p *cli.Problems, id string) broker.PCRStateAction {
	o.check(p)
	a := broker.PCRStateAction{ID: id, Node: o.node, Bank: o.bank, Note: o.note, Operator: operatorName(), Releases: o.releases}
	named := 0
	for _, set := range []bool{id != "", o.node != "", len(o.values) > 0} {
		if set {
			named++
		}
	}
	if named != 1 {
		what := "--node with --pcrs, or --pcr INDEX=HEX"
		if id == "" && o.node == "" && len(o.values) == 0 {
			p.Addf("name the state: %s", what)
		} else {
			p.Addf("name the state one way only: %s", what)
		}
	}
	if o.node != "" && len(o.pcrs) == 0 {
		p.Addf("--node needs --pcrs, the PCRs to take from it")
	}
	if o.node == "" && len(o.pcrs) > 0 {
		p.Addf("--pcrs is only allowed with --node")
	}
	for _, i := range o.pcrs {
		a.PCRs = append(a.PCRs, uint32(i))
	}
	for _, v := range o.values {
		idx, val, ok := strings.Cut(v, "=")
		n, err := strconv.ParseUint(idx, 10, 8)
		if !ok || err != nil || n > 23 {
			p.Addf("--pcr %q: want INDEX=HEX with INDEX 0..23", v)
			continue
		}
		if a.Values == nil {
			a.Values = map[uint32]string{}
		}
		if _, dup := a.Values[uint32(n)]; dup {
			p.Addf("--pcr %d is given twice", n)
		}
		a.Values[uint32(n)] = strings.ToLower(val)
	}
	return a
}

func pcrPolicyApproveCmd() *cobra.Command {
	var o pcrStateFlags
	cmd := &cobra.Command{
		Use:   "approve (--config broker.hcl | --data-dir DIR) (--node EKHASH --pcrs 0,7 | --pcr 7=HEX ...) [--release NAME ...]",
		Short: "Approve a PCR state for pcr_policy \"authorized\" releases",
		Long: pcrPolicyLong + `

approve stores the state under an ID derived from its bank and values
(approving it again keeps one record). A revoked state cannot be approved
again. The state must give every PCR of the releases it is for: a state of
fewer PCRs than a release seals to approves nothing for it. Without
--release the state is approved for every pcr_policy "authorized" release of
every node whose releases cover its PCRs; with --release NAME (repeat for
more) only for the releases of those names. With --node the node's last
attestation must have been allowed, and its stored evidence must verify
again (the quotes' signatures by its AK over the stored PCR values); the
values approved are printed.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var p cli.Problems
			a := o.action(&p, "")
			if err := p.Err(); err != nil {
				return err
			}
			return cli.Code(pcrStateRun(o, "approve", a, broker.ApprovePCRState, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	o.add(cmd)
	cmd.Flags().StringArrayVar(&o.releases, "release", nil, "approve the state only for the pcr_policy \"authorized\" release of this name (repeat for more); default: every such release")
	return cmd
}

func pcrPolicyRevokeCmd() *cobra.Command {
	var o pcrStateFlags
	cmd := &cobra.Command{
		Use:   "revoke (--config broker.hcl | --data-dir DIR) (ID | --node EKHASH --pcrs 0,7 | --pcr 7=HEX ...)",
		Short: "Revoke an approved PCR state",
		Long: pcrPolicyLong + `

revoke takes the ID 'pcr-policy list' prints, or a state as approve does —
also one that was never approved through the store (an attested state, a
policy's expected state): it then revokes every state that agrees with it on
the PCRs they share. Revocation is final.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var p cli.Problems
			id := ""
			if len(args) == 1 {
				id = args[0]
			}
			a := o.action(&p, id)
			if err := p.Err(); err != nil {
				return err
			}
			return cli.Code(pcrStateRun(o, "revoke", a, broker.RevokePCRState, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	o.add(cmd)
	return cmd
}

func pcrStateRun(o pcrStateFlags, verb string, a broker.PCRStateAction, do func(context.Context, *broker.Config, broker.PCRStateAction) (store.PCRApproval, error), stdout, stderr io.Writer) int {
	name := "pcr-policy " + verb
	cfg, ok := o.load(name, stderr)
	if !ok {
		return 1
	}
	rec, err := do(context.Background(), cfg, a)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	if o.asJSON {
		return writeJSONLines(stdout, stderr, name, []store.PCRApproval{rec})
	}
	what := "approved"
	if !rec.Revoked.IsZero() {
		what = "revoked"
	}
	scope := ""
	if len(rec.Releases) > 0 {
		scope = ", releases " + strings.Join(rec.Releases, ",")
	}
	fmt.Fprintf(stdout, "%s: state %s (%s, %s%s)\n", what, rec.ID, bankName(rec.Bank), formatState(rec.PCRs), scope)
	return 0
}

type pcrPolicyListOpts struct {
	storeFlags
	asJSON bool
}

func pcrPolicyListCmd() *cobra.Command {
	var o pcrPolicyListOpts
	cmd := &cobra.Command{
		Use:   "list (--config broker.hcl | --data-dir DIR)",
		Short: "List the approved and revoked PCR states",
		Long:  pcrPolicyLong + "\n\nlist prints every stored state, oldest first: ID, approved or revoked (and when), bank, values, source and note.",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var p cli.Problems
			o.check(&p)
			if err := p.Err(); err != nil {
				return err
			}
			return cli.Code(pcrPolicyList(o, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	o.add(cmd)
	cmd.Flags().BoolVar(&o.asJSON, "json", false, "print JSON, one state per line")
	return cmd
}

func pcrPolicyList(o pcrPolicyListOpts, stdout, stderr io.Writer) int {
	cfg, ok := o.load("pcr-policy list", stderr)
	if !ok {
		return 1
	}
	recs, err := broker.ListPCRApprovals(context.Background(), cfg)
	if err != nil {
		fmt.Fprintf(stderr, "pcr-policy list: %v\n", err)
		return 1
	}
	if o.asJSON {
		return writeJSONLines(stdout, stderr, "pcr-policy list", recs)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tBANK\tPCRS\tSOURCE\tNOTE")
	for _, r := range recs {
		status := "approved " + r.Created.UTC().Format(time.RFC3339)
		if !r.Revoked.IsZero() {
			status = "revoked " + r.Revoked.UTC().Format(time.RFC3339)
		}
		source := r.Source
		if len(r.Releases) > 0 {
			source += " (releases " + strings.Join(r.Releases, ",") + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, status, bankName(r.Bank), formatState(r.PCRs), source, r.Note)
	}
	if err := tw.Flush(); err != nil {
		fmt.Fprintf(stderr, "pcr-policy list: %v\n", err)
		return 1
	}
	return 0
}

func pcrPolicyKeysCmd() *cobra.Command {
	return configKeyCmd("keys", "Print the public keys that sign PCR-policy approvals",
		`Prints the PCR-policy signing keys' public keys (PEM, PKIX), the current key
first and then the next one (pcr_policy.next_key_file), for operators to pin:
a pcr_policy "authorized" import blob opens only with approvals by these keys
(its TPM2_PolicyAuthorize names them). It reads the key files of the
pcr_policy block, or the key the broker made in data_dir/pcr-policy on its
first start, and never creates one. With store "etcd" pcr_policy.key_file is
required (every replica must sign with the same key). Key files must not be
readable by group or others (chmod 600).`,
		"broker configuration file", pcrPolicyKeys)
}

func pcrPolicyKeys(configPath string, stdout, stderr io.Writer) int {
	cfg, err := broker.LoadConfig(configPath)
	if err != nil {
		fmt.Fprintf(stderr, "pcr-policy keys: invalid configuration:\n%v\n", err)
		return 1
	}
	pems, err := broker.PCRPolicyKeys(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "pcr-policy keys: %v\n", err)
		return 1
	}
	if _, err := stdout.Write(pems); err != nil {
		fmt.Fprintf(stderr, "pcr-policy keys: %v\n", err)
		return 1
	}
	return 0
}

// bankName names a TPM_ALG_ID bank.
func bankName(bank uint32) string { return verify.BankName(tpm2.TPMAlgID(bank)) }

// formatState writes a state as 0=ab12…,7=cd34… (values shortened to 8
// hex digits).
func formatState(pcrs map[uint32][]byte) string {
	var parts []string
	for _, i := range slices.Sorted(maps.Keys(pcrs)) {
		h := hex.EncodeToString(pcrs[i])
		if len(h) > 8 {
			h = h[:8] + "…"
		}
		parts = append(parts, fmt.Sprintf("%d=%s", i, h))
	}
	return strings.Join(parts, ",")
}
