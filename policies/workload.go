package policies

import (
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/keybroker/keybroker/internal/workloadentry"
)

// Workload entry bounds.
const (
	// DefaultWorkloadTTL is a workload entry's ttl unless it sets one.
	DefaultWorkloadTTL = time.Hour
	// MaxSelectors bounds the selectors of one workload entry.
	MaxSelectors = workloadentry.MaxSelectors
	// MaxWorkloadEntries bounds the workload entries of a Set, so that no
	// Decision carries more than the API allows.
	MaxWorkloadEntries = 256
)

// WorkloadEntry maps the workloads on a node that match all of its
// selectors to a SPIFFE ID. An allowed node's agent may obtain SVIDs for
// the IDs of its Decision's entries, and only for those. A parsed entry
// has a name (the workload block's label, unique in its Set), 1 to
// MaxSelectors selectors without duplicates, and a TTL (the longest
// validity of an SVID for it: DefaultWorkloadTTL unless set, at most
// MaxSVIDTTL).
//
// It is the type the broker stores (store.WorkloadEntry) and the agent
// matches callers against (agent/workload.Entry).
type WorkloadEntry = workloadentry.Entry

// Selector is a fact about a workload process that the node's agent checks
// before handing it an SVID, written "type:value" in a policy, such as
// "unix:uid:1000" (Type "unix", Value "uid:1000").
type Selector = workloadentry.Selector

// SelectorTypeUnix is the selector type of facts an agent learns from the
// Workload API socket's peer credentials:
//
//	unix:uid:<n>          the process's user ID
//	unix:gid:<n>          the process's primary group ID
//	unix:path:<path>      its executable, an absolute, clean path
//	unix:sha256:<hex>     the SHA-256 of its executable, 64 lowercase hex digits
const SelectorTypeUnix = workloadentry.SelectorTypeUnix

// SelectorTypeSigned is the selector type of facts the agent verifies
// about a workload's executable: a Sigstore signature by trust material of
// the Set (signer and trusted_root blocks):
//
//	signed:key:<signer name>
//	signed:identity:<issuer>/<subject>  issuer declared by a trusted_root
const SelectorTypeSigned = workloadentry.SelectorTypeSigned

// ParseSelector parses a selector written "type:value", checking that the
// type is known and the value valid for it.
func ParseSelector(s string) (Selector, error) { return workloadentry.ParseSelector(s) }

type workloadHCL struct {
	Name      string         `hcl:"name,label"`
	NameRange hcl.Range      `hcl:"name,label_range"`
	DefRange  hcl.Range      `hcl:",def_range"`
	SPIFFEID  *hcl.Attribute `hcl:"spiffe_id,optional"`
	Selectors *hcl.Attribute `hcl:"selectors,optional"`
	TTL       *hcl.Attribute `hcl:"ttl,optional"`
}

// workload is the parsed form of a workload block.
type workload struct {
	entry     WorkloadEntry
	nameRange hcl.Range
	idRange   hcl.Range // the spiffe_id attribute's value
	// selectorRanges are where entry.Selectors are written.
	selectorRanges []hcl.Range
	// signers and roots name the trust material its signed selectors use
	// (set by the Set, which knows every document's).
	signers, roots []string
}

func (c *compiler) workload(raw *workloadHCL, policyWhere string) *workload {
	w := &workload{entry: WorkloadEntry{Name: raw.Name, TTL: DefaultWorkloadTTL}, nameRange: raw.NameRange}
	where := fmt.Sprintf("%s: workload %q", policyWhere, raw.Name)
	if raw.Name == "" {
		c.errorf(raw.NameRange, "%s: workload name cannot be empty", policyWhere)
	}
	if raw.SPIFFEID == nil {
		c.errorf(raw.DefRange, "%s: spiffe_id is required", where)
	} else if s, ok := c.str(raw.SPIFFEID.Expr, "%s: spiffe_id", where); ok {
		id, err := spiffeid.FromString(s)
		if err != nil {
			c.errorf(raw.SPIFFEID.Expr.Range(), "%s: spiffe_id %q is not a SPIFFE ID: %v", where, s, err)
		}
		w.entry.ID = id
		w.idRange = raw.SPIFFEID.Expr.Range()
	}
	if raw.Selectors == nil {
		c.errorf(raw.DefRange, "%s: selectors is required: an entry without selectors would match every process", where)
	} else {
		exprs := c.list(raw.Selectors, where)
		switch {
		case exprs != nil && len(exprs) == 0:
			c.errorf(raw.Selectors.Expr.Range(), "%s: selectors cannot be empty: an entry without selectors would match every process", where)
		case len(exprs) > MaxSelectors:
			c.errorf(raw.Selectors.Expr.Range(), "%s: %d selectors, at most %d allowed", where, len(exprs), MaxSelectors)
		}
		for i, e := range exprs {
			s, ok := c.str(e, "%s: selectors[%d]", where, i)
			if !ok {
				continue
			}
			sel, err := ParseSelector(s)
			switch {
			case err != nil:
				c.errorf(e.Range(), "%s: selectors[%d] %v", where, i, err)
			case slices.Contains(w.entry.Selectors, sel):
				c.errorf(e.Range(), "%s: selectors[%d] %q is listed twice", where, i, s)
			default:
				w.entry.Selectors = append(w.entry.Selectors, sel)
				w.selectorRanges = append(w.selectorRanges, e.Range())
			}
		}
	}
	if d, ok := c.ttl(raw.TTL, where, MaxSVIDTTL, "a workload entry"); ok {
		if d%time.Second != 0 {
			c.errorf(raw.TTL.Expr.Range(), "%s: ttl %q must be a whole number of seconds", where, d)
		}
		w.entry.TTL = d
	}
	return w
}
