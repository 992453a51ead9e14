package policies

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2"
	"github.com/hashicorp/hcl/v2"
	"github.com/keybroker/keybroker/internal/hcldiag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Set is a loaded, validated group of policy documents. It is immutable and
// safe for concurrent use.
type Set struct {
	policies []*policy                    // sorted by name
	labels   map[string]map[string]string // EK hash -> labels, from node blocks
	// nodeRanges are where the node blocks' EK hashes are written.
	nodeRanges map[string]hcl.Range
	// trust holds the signer and trusted_root blocks of every document.
	trust trustIndex
	hash  string
}

// Parse parses and validates one policy document. filename is used in
// error positions only. Every problem is reported in the returned error,
// one per line, as "file:line:column: message".
func Parse(src []byte, filename string) (*Set, error) {
	doc, diags := parseDocument(src, filename)
	var docs []*document
	if doc != nil {
		docs = append(docs, doc)
	}
	s, more := newSet(docs)
	if diags = append(diags, more...); diags.HasErrors() {
		return nil, hcldiag.Error(diags)
	}
	return s, nil
}

// Load reads policy documents and parses them into one Set. Each path is a
// file, or a directory of which every *.hcl file (not recursing) is read.
// Policy and release names must be unique across all of them. Every problem
// in every file is reported in the returned error.
func Load(paths ...string) (*Set, error) {
	if len(paths) == 0 {
		return nil, errors.New("no policy paths given")
	}
	var files []string
	var errs []error
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("unable to read policies: %w", err))
			continue
		}
		if !fi.IsDir() {
			files = append(files, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("unable to read policies: %w", err))
			continue
		}
		n := len(files)
		for _, e := range entries {
			if !e.IsDir() && strings.HasSuffix(e.Name(), ".hcl") {
				files = append(files, filepath.Join(p, e.Name()))
			}
		}
		if len(files) == n {
			errs = append(errs, fmt.Errorf("no *.hcl policy files in %s", p))
		}
	}
	var docs []*document
	var diags hcl.Diagnostics
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("unable to read policies: %w", err))
			continue
		}
		doc, d := parseDocument(src, f)
		diags = append(diags, d...)
		if doc != nil {
			docs = append(docs, doc)
		}
	}
	s, more := newSet(docs)
	if diags = append(diags, more...); diags.HasErrors() {
		errs = append(errs, hcldiag.Error(diags))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

// newSet joins parsed documents, refusing duplicate policy, release and
// workload names, and more than MaxWorkloadEntries workload entries. Documents that had errors are joined too, so that duplicates are
// reported along with everything else; the caller discards the Set then.
func newSet(docs []*document) (*Set, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	s := &Set{labels: map[string]map[string]string{}, trust: trustIndex{signers: map[string]*signer{}, roots: map[string]*trustedRoot{}}}
	for _, doc := range docs {
		diags = append(diags, s.trust.add(doc)...)
	}
	nodeAt := map[string]hcl.Range{}
	var digests [][sha256.Size]byte
	policyAt := map[string]hcl.Range{}
	releaseAt := map[string]hcl.Range{}
	workloadAt := map[string]hcl.Range{}
	var workloads []hcl.Range
	for _, doc := range docs {
		digests = append(digests, doc.digest)
		for _, n := range doc.nodes {
			if prev, dup := nodeAt[n.ekHash]; dup {
				diags = append(diags, errorAt(n.rng, "node %q is already labelled at %s", n.ekHash, hcldiag.Pos(prev)))
				continue
			}
			nodeAt[n.ekHash] = n.rng
			s.labels[n.ekHash] = n.labels
		}
		for _, p := range doc.policies {
			if prev, dup := policyAt[p.name]; dup {
				diags = append(diags, errorAt(p.nameRange, "policy %q is already defined at %s", p.name, hcldiag.Pos(prev)))
				continue
			}
			policyAt[p.name] = p.nameRange
			s.policies = append(s.policies, p)
			for _, r := range p.releases {
				if prev, dup := releaseAt[r.name]; dup {
					diags = append(diags, errorAt(r.nameRange, "policy %q: release %q is already defined at %s", p.name, r.name, hcldiag.Pos(prev)))
					continue
				}
				releaseAt[r.name] = r.nameRange
			}
			for _, w := range p.workloads {
				if prev, dup := workloadAt[w.entry.Name]; dup {
					diags = append(diags, errorAt(w.nameRange, "policy %q: workload %q is already defined at %s", p.name, w.entry.Name, hcldiag.Pos(prev)))
					continue
				}
				workloadAt[w.entry.Name] = w.nameRange
				workloads = append(workloads, w.nameRange)
				diags = append(diags, s.trust.checkSigned(p, w)...)
			}
		}
	}
	if len(workloads) > MaxWorkloadEntries {
		diags = append(diags, errorAt(workloads[MaxWorkloadEntries], "more than %d workload entries; a policy set may define at most %d", MaxWorkloadEntries, MaxWorkloadEntries))
	}
	if diags.HasErrors() {
		return nil, diags
	}
	slices.SortFunc(s.policies, func(a, b *policy) int { return strings.Compare(a.name, b.name) })
	s.nodeRanges = nodeAt
	s.hash = hashDigests(digests)
	return s, nil
}

// hashDigests hashes the SHA-256 digests of a Set's sources, sorted, so that
// the result does not depend on the order in which files were loaded.
func hashDigests(digests [][sha256.Size]byte) string {
	sorted := slices.Clone(digests)
	slices.SortFunc(sorted, func(a, b [sha256.Size]byte) int { return strings.Compare(string(a[:]), string(b[:])) })
	h := sha256.New()
	h.Write([]byte("keybroker policies v1\n"))
	for _, d := range sorted {
		h.Write(d[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Names returns the names of the policies in the Set, sorted.
func (s *Set) Names() []string {
	if s == nil {
		return nil
	}
	names := make([]string, len(s.policies))
	for i, p := range s.policies {
		names[i] = p.name
	}
	return names
}

// Hash identifies the Set's sources: the lowercase hex SHA-256 over the
// sorted SHA-256 digests of every document, so it changes with any byte of
// any document but not with file names or load order. Receipts record it.
func (s *Set) Hash() string {
	if s == nil {
		return ""
	}
	return s.hash
}

// errorAt returns an error diagnostic at rng; messages are lowercase and
// carry their own context.
func errorAt(rng hcl.Range, format string, args ...any) *hcl.Diagnostic {
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: fmt.Sprintf(format, args...), Subject: rng.Ptr()}
}

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
	// PCRBank is the bank a pcr_sealed release is sealed to; zero
	// otherwise.
	PCRBank tpm2.TPMAlgID
	// PCRPolicy is a pcr_sealed release's pcr_policy, and ExpectedStates
	// the number of its expected_states; empty otherwise.
	PCRPolicy      PCRPolicy
	ExpectedStates int
	// SPIFFEID is a workload entry's ID, or an x509_svid release's
	// spiffe_id when it uses no template variable; zero otherwise.
	SPIFFEID spiffeid.ID
	// SPIFFEIDRange is where SPIFFEID is written.
	SPIFFEIDRange hcl.Range
	// Quarantine and KubeletAuth are a kubelet release's settings.
	Quarantine  bool
	KubeletAuth string
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
			ref := Ref{Policy: p.name, Name: rel.name, Type: rel.typ, Range: rel.typeRange, Quarantine: rel.quarantine, KubeletAuth: rel.kubeletAuth}
			if rel.mode == ModePCRSealed {
				ref.PCRBank, ref.PCRPolicy, ref.ExpectedStates = rel.bank, rel.pcrPolicy, len(rel.expectedStates)
			}
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
