package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/attestation"
	"github.com/keybroker/keybroker/broker/evidence"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/cli"
	"github.com/keybroker/keybroker/policies"
)

const policyCheckLong = `Loads the policy files (a directory: its *.hcl files) as the broker would and
prints each policy with "ok", or every problem as file:line:column: message
and exits 1. Policy and release names must be unique across all of them.

With --config, also checks the policies against that broker configuration,
as the broker does at start and at reload: ek_cas names without an ek_ca
block, EKs the broker cannot trust, labels no node block has, x509_svid
releases and workload entries without a spiffe block, Vault releases without
a vault block. Without FILE|DIR, it checks the configuration's own policies.

With --facts, first lists the facts require expressions can use, with their
CEL types; FILE|DIR may then be omitted.`

const policyEvalLong = `Tries candidate policies on nodes' last attestations before rollout: for the
node given by --node, for the evidence file given by --evidence (as written by
'keybroker evidence show'), or, with neither, for every node the broker has a
record of, it verifies the stored evidence again with the broker's code and
the trust of broker.hcl (EK allowlist, EK CAs, allow_sha1), evaluates the
candidate policies on the verified facts, and prints whether the node would be
allowed, by which policies, what would be released (name, type, mode, PCRs,
TTL, names) and every failed condition. Nothing is released or recorded.

Node records are read through the running broker's admin socket, or from its
store file when it is stopped. With --vault-mount instead of --config, the
nodes and their evidence are those the Vault auth method mounted there keeps
(its nodes/ path), verified again with that mount's trust (its config: ek_allow,
ek_ca, allow_sha1, pcr_banks), so a new role policy can be tried on
Vault-attested nodes; the token (VAULT_TOKEN) needs read and list on nodes/
and read on config. --policy may be repeated; further arguments are policy
paths too.

Exits 0 when every node was evaluated, allowed or denied (it is a report), 1
if the configuration or the policies do not load, a record cannot be read or
evidence no longer verifies, and 2 on usage errors.`

type checkOpts struct {
	facts      bool
	configPath string
	paths      []string
}

func policyCheckCmd() *cobra.Command {
	var o checkOpts
	cmd := &cobra.Command{
		Use:   "check [--facts] [--config broker.hcl] FILE|DIR...",
		Short: "Validate policies; list the facts they can use",
		Long:  policyCheckLong,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !o.facts && o.configPath == "" && len(args) == 0 {
				return cli.Usagef("no policy file or directory given")
			}
			o.paths = args
			return cli.Code(policyCheck(o, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	cmd.Flags().BoolVar(&o.facts, "facts", false, "list the facts require expressions can use")
	cmd.Flags().StringVar(&o.configPath, "config", "", "broker configuration file to check the policies against (default policies: its own)")
	return cmd
}

func policyCheck(o checkOpts, stdout, stderr io.Writer) int {
	if o.facts {
		printFacts(stdout)
		if len(o.paths) == 0 && o.configPath == "" {
			return 0
		}
		fmt.Fprintln(stdout)
	}
	var cfg *broker.Config
	paths := o.paths
	if o.configPath != "" {
		var err error
		if cfg, err = broker.LoadConfig(o.configPath); err != nil {
			fmt.Fprintf(stderr, "policy check: invalid configuration:\n%v\n", err)
			return 1
		}
		if len(paths) == 0 {
			paths = cfg.PolicyPaths
		}
	}
	set, err := policies.Load(paths...)
	if err != nil {
		fmt.Fprintf(stderr, "%v\n", err)
		return 1
	}
	if cfg != nil {
		if err := cfg.CheckPolicies(set); err != nil {
			fmt.Fprintf(stderr, "%v\n", err)
			return 1
		}
	}
	for _, name := range set.Names() {
		fmt.Fprintf(stdout, "policy %q: ok\n", name)
	}
	fmt.Fprintf(stdout, "%d policies ok, policy hash %s", len(set.Names()), set.Hash())
	if cfg != nil {
		fmt.Fprintf(stdout, ", checked against %s", o.configPath)
	}
	fmt.Fprintln(stdout)
	return 0
}

func printFacts(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FACT\tTYPE\tMEANING")
	for _, f := range policies.FactDocs() {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", f.Name, f.Type, f.Doc)
	}
	tw.Flush()
}

// evalResult is what `policy eval` reports for one node; --json prints it.
type evalResult struct {
	EKHash        string        `json:"ek_hash,omitempty"`
	Source        string        `json:"source,omitempty"` // the evidence file, for --evidence
	EvidenceTime  time.Time     `json:"evidence_time,omitzero"`
	LastReceiptID string        `json:"last_receipt_id,omitempty"`
	Allowed       bool          `json:"allowed"`
	Policies      []string      `json:"policies,omitempty"`
	PolicyHash    string        `json:"policy_hash"`
	Releases      []evalRelease `json:"releases,omitempty"`
	// WorkloadEntries are the workload entries the node would get.
	WorkloadEntries []evalWorkload `json:"workload_entries,omitempty"`
	Failures        []string       `json:"failures,omitempty"`
	// Error says why the node could not be evaluated (its evidence no
	// longer verifies); Check names the failed verification check.
	Error string `json:"error,omitempty"`
	Check string `json:"check,omitempty"`
}

type evalRelease struct {
	Name        string   `json:"name"`
	Type        string   `json:"type"`
	Mode        string   `json:"mode"`
	PCRBank     string   `json:"pcr_bank,omitempty"`
	PCRs        []uint32 `json:"pcrs,omitempty"`
	TTL         string   `json:"ttl"`
	CommonName  string   `json:"common_name,omitempty"`
	DNSNames    []string `json:"dns_names,omitempty"`
	IPAddresses []string `json:"ip_addresses,omitempty"`
	SPIFFEID    string   `json:"spiffe_id,omitempty"`
}

type evalWorkload struct {
	Name      string   `json:"name"`
	SPIFFEID  string   `json:"spiffe_id"`
	Selectors []string `json:"selectors"`
	TTL       string   `json:"ttl"`
}

type evalOpts struct {
	vault                            vaultFlags
	configPath, ekHash, evidenceFile string
	paths                            []string
	asJSON                           bool
}

func policyEvalCmd() *cobra.Command {
	var o evalOpts
	cmd := &cobra.Command{
		Use:   "eval (--config broker.hcl | --vault-mount auth/tpm) --policy FILE|DIR... [--node EKHASH | --evidence FILE]",
		Short: "Try policies on nodes' last verified evidence",
		Long:  policyEvalLong,
		RunE: func(cmd *cobra.Command, args []string) error {
			o.paths = append(o.paths, args...)
			var p cli.Problems
			o.vault.check(&p, o.configPath != "")
			if !o.vault.set() {
				p.Required(cmd, "config")
			}
			if len(o.paths) == 0 {
				p.Addf("missing required flag --policy")
			}
			if o.ekHash != "" && o.evidenceFile != "" {
				p.Addf("--node and --evidence cannot be used together")
			}
			if err := p.Err(); err != nil {
				return err
			}
			return cli.Code(policyEval(o, cmd.OutOrStdout(), cmd.ErrOrStderr()))
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.configPath, "config", "", "broker configuration file: trust, allow_sha1 and data_dir (required without --vault-mount)")
	f.StringArrayVar(&o.paths, "policy", nil, "candidate policy file or directory of *.hcl (required, repeatable)")
	f.StringVar(&o.ekHash, "node", "", "evaluate only the node with this EK hash")
	f.StringVar(&o.evidenceFile, "evidence", "", "evaluate the evidence in this JSON file (see 'keybroker evidence show')")
	f.BoolVar(&o.asJSON, "json", false, "print JSON, one node per line")
	o.vault.add(cmd)
	return cmd
}

func policyEval(o evalOpts, stdout, stderr io.Writer) int {
	ctx := context.Background()
	opts, nodes, ok := evalSource(ctx, o, stderr)
	if !ok {
		return 1
	}
	set, err := policies.Load(o.paths...)
	if err != nil {
		fmt.Fprintf(stderr, "policy eval: the policies do not load:\n%v\n", err)
		return 1
	}

	var results []evalResult
	eval := func(r evalResult, ev attestation.Evidence) {
		r.EvidenceTime = ev.Time
		results = append(results, evaluate(r, ev, opts, set))
	}
	switch {
	case o.evidenceFile != "":
		ev, err := readEvidence(o.evidenceFile)
		if err != nil {
			fmt.Fprintf(stderr, "policy eval: %v\n", err)
			return 1
		}
		eval(evalResult{Source: o.evidenceFile}, ev)
	case o.ekHash != "":
		n, err := nodes.GetNode(ctx, o.ekHash)
		if err != nil {
			fmt.Fprintf(stderr, "policy eval: node %s: %v\n", o.ekHash, err)
			return 1
		}
		eval(evalResult{EKHash: n.EKHash, LastReceiptID: n.LastReceiptID}, n.Evidence)
	default:
		list := store.ListNodesOpts{Limit: 100}
		for {
			ns, err := nodes.ListNodes(ctx, list)
			if err != nil {
				fmt.Fprintf(stderr, "policy eval: %v\n", err)
				return 1
			}
			for _, n := range ns {
				eval(evalResult{EKHash: n.EKHash, LastReceiptID: n.LastReceiptID}, n.Evidence)
			}
			if len(ns) < list.Limit {
				break
			}
			list.After = ns[len(ns)-1].EKHash
		}
		if len(results) == 0 {
			fmt.Fprintln(stderr, "policy eval: no node has attested yet")
		}
	}

	code := 0
	for _, r := range results {
		if r.Error != "" {
			code = 1
		}
	}
	if o.asJSON {
		if writeJSONLines(stdout, stderr, "policy eval", results) != 0 {
			return 1
		}
		return code
	}
	printEval(stdout, results, set)
	return code
}

// evalSource is where policy eval reads nodes and the options their
// evidence is verified with: the broker's configuration and store, or a
// Vault auth method's config and records. A failure is reported on stderr.
func evalSource(ctx context.Context, o evalOpts, stderr io.Writer) (verify.Opts, nodeSource, bool) {
	if o.vault.set() {
		r, ok := o.vault.open("policy eval", stderr)
		if !ok {
			return verify.Opts{}, nil, false
		}
		opts, err := r.VerifyOpts(ctx)
		if err != nil {
			fmt.Fprintf(stderr, "policy eval: %v\n", err)
			return verify.Opts{}, nil, false
		}
		return opts, vaultNodes{r}, true
	}
	cfg, err := broker.LoadConfig(o.configPath)
	if err != nil {
		fmt.Fprintf(stderr, "policy eval: invalid configuration:\n%v\n", err)
		return verify.Opts{}, nil, false
	}
	return cfg.Verify, brokerNodes{cfg}, true
}

// evaluate verifies a node's evidence again with opts and evaluates set on
// it.
func evaluate(r evalResult, ev attestation.Evidence, opts verify.Opts, set *policies.Set) evalResult {
	r.PolicyHash = set.Hash()
	v, err := evidence.Reverify(ev, opts)
	if err != nil {
		r.Error = "evidence does not verify: " + err.Error()
		r.Check = string(verify.FailedCheck(err))
		return r
	}
	r.EKHash = v.EKHash()
	d := set.Evaluate(v)
	r.Allowed, r.Policies, r.Failures = d.Allowed, d.Policies, d.Failures
	for _, rel := range d.Releases {
		er := evalRelease{
			Name:       rel.Name,
			Type:       rel.Type,
			Mode:       string(rel.Mode),
			TTL:        rel.TTL.String(),
			CommonName: rel.CommonName,
			DNSNames:   rel.DNSNames,
		}
		if rel.Mode == policies.ModePCRSealed {
			er.PCRBank, er.PCRs = verify.BankName(rel.PCRBank), rel.PCRs
		}
		if !rel.SPIFFEID.IsZero() {
			er.SPIFFEID = rel.SPIFFEID.String()
		}
		for _, ip := range rel.IPAddresses {
			er.IPAddresses = append(er.IPAddresses, ip.String())
		}
		r.Releases = append(r.Releases, er)
	}
	for _, e := range d.WorkloadEntries {
		w := evalWorkload{Name: e.Name, SPIFFEID: e.ID.String(), TTL: e.TTL.String()}
		for _, sel := range e.Selectors {
			w.Selectors = append(w.Selectors, sel.String())
		}
		r.WorkloadEntries = append(r.WorkloadEntries, w)
	}
	return r
}

func printEval(w io.Writer, results []evalResult, set *policies.Set) {
	var allowed, denied, failed int
	for _, r := range results {
		name := r.EKHash
		if name == "" {
			name = "in " + r.Source
		}
		var about []string
		if !r.EvidenceTime.IsZero() {
			about = append(about, "attested "+r.EvidenceTime.UTC().Format(time.RFC3339))
		}
		if r.LastReceiptID != "" {
			about = append(about, "receipt "+r.LastReceiptID)
		}
		if r.Source != "" && r.EKHash != "" {
			about = append(about, "from "+r.Source)
		}
		fmt.Fprintf(w, "node %s", name)
		if len(about) > 0 {
			fmt.Fprintf(w, " (%s)", strings.Join(about, ", "))
		}
		fmt.Fprintln(w)
		switch {
		case r.Error != "":
			failed++
			fmt.Fprintf(w, "  error: %s\n", r.Error)
			continue
		case r.Allowed:
			allowed++
			fmt.Fprintf(w, "  allowed by %s\n", strings.Join(r.Policies, ", "))
			if len(r.Releases) == 0 {
				fmt.Fprintln(w, "  would release nothing (a Vault role's policy: the login issues a token)")
			} else {
				fmt.Fprintln(w, "  would release:")
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			for _, rel := range r.Releases {
				mode := rel.Mode
				if rel.PCRBank != "" {
					mode += fmt.Sprintf(" %s%v", rel.PCRBank, rel.PCRs)
				}
				var names []string
				if rel.SPIFFEID != "" {
					names = append(names, "spiffe_id "+rel.SPIFFEID)
				} else {
					names = append(names, "cn "+rel.CommonName)
				}
				if len(rel.DNSNames) > 0 {
					names = append(names, "dns "+strings.Join(rel.DNSNames, ","))
				}
				if len(rel.IPAddresses) > 0 {
					names = append(names, "ip "+strings.Join(rel.IPAddresses, ","))
				}
				fmt.Fprintf(tw, "    %s\t%s\t%s\tttl %s\t%s\n", rel.Name, rel.Type, mode, rel.TTL, strings.Join(names, " "))
			}
			tw.Flush()
			if len(r.WorkloadEntries) > 0 {
				fmt.Fprintln(w, "  workload entries:")
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				for _, e := range r.WorkloadEntries {
					fmt.Fprintf(tw, "    %s\t%s\tttl %s\t%s\n", e.Name, e.SPIFFEID, e.TTL, strings.Join(e.Selectors, " "))
				}
				tw.Flush()
			}
		default:
			denied++
			fmt.Fprintln(w, "  denied")
		}
		if len(r.Failures) > 0 {
			fmt.Fprintln(w, "  failures:")
			for _, f := range r.Failures {
				fmt.Fprintf(w, "    - %s\n", f)
			}
		}
	}
	fmt.Fprintf(w, "policies %v (hash %s): %d allowed, %d denied, %d not evaluated\n",
		set.Names(), set.Hash(), allowed, denied, failed)
}
