package broker

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/policies"
)

// CheckPolicies checks a policy set against the configuration it is to run
// under, so that a policy that could only fail when a node attests is
// refused before it serves. It reports every problem, one per line, as
// "file:line:column: message" at the position in the policy files:
//
//   - an ek_cas entry naming no ek_ca block of the configuration;
//   - an ek_hashes entry or a node block naming an EK the broker cannot
//     trust: with no ek_ca block, only the EKs of ek_allow can attest;
//   - a select labels map that no node block's labels include, so that no
//     node can ever be selected by it (labels come only from node blocks);
//   - an x509_svid release or a workload entry without a spiffe block, or
//     whose SPIFFE ID (when written without template variables) is not in
//     the configured trust domain;
//   - a vault_kv, vault_pki or vault_token release without a vault block;
//   - a kubelet release without a kubernetes block, or with quarantine
//     and no token_file in it;
//   - a pcr_sealed release (and so its expected_states, for pcr_policy
//     "authorized") in a bank pcr_banks does not count (nodes are told to
//     quote only those).
//
// Start refuses to start, and a reload keeps the previous policies, when it
// returns an error.
func (c *Config) CheckPolicies(set *policies.Set) error {
	var p problems
	refs := set.Refs()
	conf := c.File
	if conf == "" {
		conf = "the broker's configuration"
	}
	c.checkEKRefs(&p, refs, conf)
	checkLabelSelectors(&p, refs)
	c.checkReleases(&p, refs.Releases, conf)
	c.checkWorkloads(&p, refs.Workloads, conf)
	return p.err()
}

func (c *Config) checkEKRefs(p *problems, refs policies.Refs, conf string) {
	var cas []string
	for _, ca := range c.Verify.Trust.CAs {
		cas = append(cas, ca.Name)
	}
	for _, r := range refs.EKCAs {
		if slices.Contains(cas, r.Name) {
			continue
		}
		if len(cas) == 0 {
			p.at(r.Range, "policy %q: ek_ca %q is not defined: %s has no ek_ca block", r.Policy, r.Name, conf)
		} else {
			p.at(r.Range, "policy %q: ek_ca %q is not defined in %s (defined: %s)", r.Policy, r.Name, conf, quoted(cas))
		}
	}
	if len(cas) > 0 {
		return // any EK with a certificate from a CA may attest
	}
	for _, r := range refs.EKHashes {
		if !slices.Contains(c.Verify.Trust.EKHashes, r.Name) {
			p.at(r.Range, "policy %q: ek_hashes entry %s can never attest: it is not in ek_allow and %s has no ek_ca block", r.Policy, r.Name, conf)
		}
	}
	for _, r := range refs.Nodes {
		if !slices.Contains(c.Verify.Trust.EKHashes, r.Name) {
			p.at(r.Range, "node %q can never attest: it is not in ek_allow and %s has no ek_ca block", r.Name, conf)
		}
	}
}

// checkLabelSelectors refuses label selectors that no node block satisfies.
func checkLabelSelectors(p *problems, refs policies.Refs) {
	for _, sel := range refs.LabelSelectors {
		matched := false
		for _, n := range refs.Nodes {
			if hasLabels(n.Labels, sel.Labels) {
				matched = true
				break
			}
		}
		if !matched {
			p.at(sel.Range, "policy %q: select labels %s match no node block: no node carries all of them", sel.Policy, formatLabels(sel.Labels))
		}
	}
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func (c *Config) checkReleases(p *problems, releases []policies.Ref, conf string) {
	for _, r := range releases {
		switch {
		case r.Type == policies.TypeX509SVID && c.TrustDomain.IsZero():
			p.at(r.Range, "policy %q: release %q is an %s, but %s has no spiffe block", r.Policy, r.Name, r.Type, conf)
		case r.Type == policies.TypeX509SVID && !r.SPIFFEID.IsZero() && !r.SPIFFEID.MemberOf(c.TrustDomain):
			p.at(r.SPIFFEIDRange, "policy %q: release %q: spiffe_id %s is not in trust domain %q of %s", r.Policy, r.Name, r.SPIFFEID, c.TrustDomain.Name(), conf)
		case policies.IsVault(r.Type) && c.Vault == nil:
			p.at(r.Range, "policy %q: release %q is a %s, but %s has no vault block", r.Policy, r.Name, r.Type, conf)
		case r.Type == policies.TypeKubelet && c.Kubernetes == nil:
			p.at(r.Range, "policy %q: release %q is a %s, but %s has no kubernetes block", r.Policy, r.Name, r.Type, conf)
		case r.Type == policies.TypeKubelet && r.Quarantine && c.Kubernetes.API == nil:
			p.at(r.Range, "policy %q: release %q asks for quarantine, but the kubernetes block of %s has no token_file for the broker to taint nodes with", r.Policy, r.Name, conf)
		case r.Type == policies.TypeKubelet && r.KubeletAuth == policies.KubeletBootstrapToken && c.Kubernetes.API == nil:
			p.at(r.Range, "policy %q: release %q is a bootstrap_token kubelet, but the kubernetes block of %s has no token_file for the broker to create bootstrap tokens with", r.Policy, r.Name, conf)
		case r.PCRPolicy == policies.PCRPolicyAuthorized && c.Store.Kind == StoreEtcd && c.PCRPolicy.KeyFile == "":
			p.at(r.Range, "policy %q: release %q is pcr_policy \"authorized\", but %s uses store \"etcd\" without pcr_policy.key_file: every replica must sign with the same key", r.Policy, r.Name, conf)
		case r.PCRBank != 0 && len(c.Verify.Banks) > 0 && !slices.Contains(c.Verify.Banks, r.PCRBank):
			var counted []string
			for _, b := range c.Verify.Banks {
				counted = append(counted, verify.BankName(b))
			}
			expected := ""
			if r.ExpectedStates > 0 {
				expected = fmt.Sprintf(", and its %d expected_states can never be approved", r.ExpectedStates)
			}
			p.at(r.Range, "policy %q: release %q is sealed to the %s bank, but pcr_banks of %s counts only %s: nodes do not quote it%s",
				r.Policy, r.Name, verify.BankName(r.PCRBank), conf, strings.Join(counted, ", "), expected)
		}
	}
}

func (c *Config) checkWorkloads(p *problems, workloads []policies.Ref, conf string) {
	for _, w := range workloads {
		switch {
		case c.TrustDomain.IsZero():
			p.at(w.Range, "policy %q: workload %q needs a SPIFFE authority, but %s has no spiffe block", w.Policy, w.Name, conf)
		case !w.SPIFFEID.MemberOf(c.TrustDomain):
			p.at(w.SPIFFEIDRange, "policy %q: workload %q: spiffe_id %s is not in trust domain %q of %s", w.Policy, w.Name, w.SPIFFEID, c.TrustDomain.Name(), conf)
		}
	}
}

// formatLabels writes labels as HCL does, names sorted:
// {role = "web", site = "fra1"}.
func formatLabels(labels map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		parts = append(parts, fmt.Sprintf("%s = %q", k, labels[k]))
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// quoted formats names as `"a", "b"`.
func quoted(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	return strings.Join(q, ", ")
}
