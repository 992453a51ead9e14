package policies

import (
	"maps"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Ref is a name a policy document uses that only the configuration of the
// broker running the Set can satisfy (an ek_ca, the SPIFFE authority, a
// Vault), or a selector that only other blocks of the Set can satisfy (node
// labels), with where it is written.
type Ref struct {
	// Policy is the policy naming it; empty for a node block.
	Policy string
	// Name is the ek_ca name, the EK hash, or the release's or workload
	// entry's name.
	Name string
	// Type is a release's type; empty otherwise.
	Type string
	// SPIFFEID is a workload entry's ID, or an x509_svid release's
	// spiffe_id when it uses no template variable; zero otherwise.
	SPIFFEID spiffeid.ID
	// SPIFFEIDRange is where SPIFFEID is written.
	SPIFFEIDRange hcl.Range
	// Labels are a label selector's labels, or a node block's; nil
	// otherwise. They are a copy.
	Labels map[string]string
	// Range is where the reference is written: the list entry, the
	// release's type, the workload's name, the labels map or the node
	// block's EK hash.
	Range hcl.Range
}

// Refs lists, by kind and in document order within each policy (policies
// sorted by name), what a Set's documents name outside themselves, for
// checks against the broker's configuration (broker.Config.CheckPolicies).
type Refs struct {
	EKHashes       []Ref // each ek_hashes entry of a select block
	EKCAs          []Ref // each ek_cas entry of a select block
	LabelSelectors []Ref // each select block with labels
	Releases       []Ref // each release block
	Workloads      []Ref // each workload block
	Nodes          []Ref // each node block, sorted by EK hash
}

// Refs returns what the Set's documents name outside themselves.
func (s *Set) Refs() Refs {
	var r Refs
	if s == nil {
		return r
	}
	for _, p := range s.policies {
		r.EKHashes = append(r.EKHashes, p.ekHashRefs...)
		r.EKCAs = append(r.EKCAs, p.ekCARefs...)
		if len(p.labels) > 0 {
			r.LabelSelectors = append(r.LabelSelectors, Ref{Policy: p.name, Labels: maps.Clone(p.labels), Range: p.labelsRange})
		}
		for _, rel := range p.releases {
			ref := Ref{Policy: p.name, Name: rel.name, Type: rel.typ, Range: rel.typeRange}
			if rel.spiffeID != nil && len(rel.spiffeID.Variables()) == 0 {
				if s, err := render(rel.spiffeID, nil); err == nil {
					ref.SPIFFEID, _ = spiffeid.FromString(s)
					ref.SPIFFEIDRange = rel.spiffeID.Range()
				}
			}
			r.Releases = append(r.Releases, ref)
		}
		for _, w := range p.workloads {
			r.Workloads = append(r.Workloads, Ref{Policy: p.name, Name: w.entry.Name, SPIFFEID: w.entry.ID, SPIFFEIDRange: w.idRange, Range: w.nameRange})
		}
	}
	for ek, labels := range s.labels {
		r.Nodes = append(r.Nodes, Ref{Name: ek, Labels: maps.Clone(labels), Range: s.nodeRanges[ek]})
	}
	slices.SortFunc(r.Nodes, func(a, b Ref) int { return strings.Compare(a.Name, b.Name) })
	return r
}
