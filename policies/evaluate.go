package policies

import (
	"fmt"
	"slices"
	"strings"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/hashicorp/hcl/v2"

	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/provenance"
)

// Decision is the outcome of evaluating a Set for a verified node.
type Decision struct {
	// Allowed is true if at least one policy selected the node and all of
	// its conditions held.
	Allowed bool
	// Policies names the policies that allowed the node, sorted.
	Policies []string
	// PolicyHash is the Hash of the evaluated Set.
	PolicyHash string
	// Releases is the union of the allowing policies' releases, rendered
	// for the node and sorted by name.
	Releases []Release
	// WorkloadEntries is the union of the allowing policies' workload
	// entries, sorted by name: the SPIFFE IDs the node may obtain SVIDs
	// for, and which of its workloads may have them.
	WorkloadEntries []WorkloadEntry
	// WorkloadTrust is the trust material the signed selectors of
	// WorkloadEntries use (signer and trusted_root blocks), sorted by
	// name; the agent verifies workloads' signatures with it.
	WorkloadTrust provenance.Material
	// Failures lists every failed condition of every policy that selected
	// the node, for operators; see the package documentation.
	Failures []string
	// Appraised lists the fact groups (FactGroups: "ek", "pcrs",
	// "eventlog", ...) that the require expressions of the allowing
	// policies read, sorted: what the allowed node was appraised on beyond
	// its verification, for attestation results.
	Appraised []string
}

// Failure texts that do not come from a policy.
const (
	failNoSelection = "no policy selects this node"
	failNoNode      = "no verified node"
	failNoSet       = "no policies loaded"
)

// Evaluate decides what a verified node receives; see the package
// documentation for the combination rule. It performs no I/O, never
// panics, and is safe for concurrent use.
func (s *Set) Evaluate(v *verify.Verified) Decision {
	if s == nil {
		return Decision{Failures: []string{failNoSet}}
	}
	d := Decision{PolicyHash: s.hash}
	if v == nil || v.Node() == nil {
		d.Failures = []string{failNoNode}
		return d
	}
	labels := s.labels[v.EKHash()]
	act := newFactSet(v, labels, false)
	tmpl := templateContext(v.EKHash(), v.EKCA())
	selected := false
	var signers, roots []string
	for _, p := range s.policies {
		if !p.selects(v, labels) {
			continue
		}
		selected = true
		releases, fails := p.evaluate(v, act, tmpl)
		if len(fails) > 0 {
			d.Failures = append(d.Failures, fails...)
			continue
		}
		d.Policies = append(d.Policies, p.name)
		d.Appraised = append(d.Appraised, p.reads...)
		if d.Releases == nil {
			d.Releases = releases // this evaluation's own
		} else {
			d.Releases = append(d.Releases, releases...)
		}
		for _, w := range p.workloads {
			d.WorkloadEntries = append(d.WorkloadEntries, w.entry.Clone())
			signers, roots = append(signers, w.signers...), append(roots, w.roots...)
		}
	}
	if !selected {
		d.Failures = []string{failNoSelection}
	}
	d.Allowed = len(d.Policies) > 0
	d.WorkloadTrust = s.material(signers, roots)
	slices.Sort(d.Appraised)
	d.Appraised = slices.Compact(d.Appraised)
	slices.SortStableFunc(d.Releases, func(a, b Release) int { return strings.Compare(a.Name, b.Name) })
	slices.SortStableFunc(d.WorkloadEntries, func(a, b WorkloadEntry) int { return strings.Compare(a.Name, b.Name) })
	return d
}

// selects reports whether the policy is about the node: its EK hash is
// listed, or its EK CA is, or it carries every label the selector names.
func (p *policy) selects(v *verify.Verified, labels map[string]string) bool {
	if p.ekHashes[v.EKHash()] {
		return true
	}
	if ca := v.EKCA(); ca != "" && p.ekCAs[ca] {
		return true
	}
	if len(p.labels) == 0 {
		return false
	}
	for k, want := range p.labels {
		if got, ok := labels[k]; !ok || got != want {
			return false
		}
	}
	return true
}

// evaluate runs every condition of a policy that selected the node and
// returns its rendered releases, or every failure.
func (p *policy) evaluate(v *verify.Verified, act cel.Activation, tmpl *hcl.EvalContext) (releases []Release, fails []string) {
	defer func() {
		// Nothing below is expected to panic; if it does, the node is
		// denied by this policy rather than the caller crashing.
		if r := recover(); r != nil {
			releases = nil
			fails = append(fails, fmt.Sprintf("%s: internal error: %v", p.where(), r))
		}
	}()
	for i, req := range p.requires {
		out, _, err := req.prg.Eval(act)
		switch {
		case err != nil:
			fails = append(fails, fmt.Sprintf("%s: require[%d] %s: %v", p.where(), i, req.src, err))
		case out.Type() != types.BoolType:
			fails = append(fails, fmt.Sprintf("%s: require[%d] %s is not a bool but %s", p.where(), i, req.src, out.Type().TypeName()))
		case out != types.True:
			fails = append(fails, fmt.Sprintf("%s: require[%d] %s is false", p.where(), i, req.src))
		}
	}
	for _, r := range p.releases {
		// rwhere names the release in failures; only formatted for one.
		rwhere := func() string { return fmt.Sprintf("%s: release %q", p.where(), r.name) }
		if r.mode == ModePCRSealed {
			if v.NumPCRs(r.bank) == 0 {
				fails = append(fails, fmt.Sprintf("%s: bank %s was not quoted", rwhere(), verify.BankName(r.bank)))
			} else {
				for _, idx := range r.pcrs {
					if !v.QuotedPCR(r.bank, idx) {
						fails = append(fails, fmt.Sprintf("%s: PCR %d of bank %s was not quoted", rwhere(), idx, verify.BankName(r.bank)))
					}
				}
			}
		}
		rel, rfails := r.render(tmpl)
		for _, f := range rfails {
			fails = append(fails, rwhere()+": "+f)
		}
		if len(fails) == 0 {
			releases = append(releases, rel)
		}
	}
	if len(fails) > 0 {
		return nil, fails
	}
	return releases, nil
}

// where names the policy in failures.
func (p *policy) where() string { return fmt.Sprintf("policy %q", p.name) }
