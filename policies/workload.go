package policies

import (
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Workload entry bounds.
const (
	// DefaultWorkloadTTL is a workload entry's ttl unless it sets one.
	DefaultWorkloadTTL = time.Hour
	// MaxSelectors bounds the selectors of one workload entry.
	MaxSelectors = 16
	// MaxWorkloadEntries bounds the workload entries of a Set, so that no
	// Decision carries more than the API allows.
	MaxWorkloadEntries = 256
)

// WorkloadEntry maps the workloads on a node that match all of its
// selectors to a SPIFFE ID. An allowed node's agent may obtain SVIDs for
// the IDs of its Decision's entries, and only for those.
type WorkloadEntry struct {
	Name      string // the workload block's label, unique in its Set
	ID        spiffeid.ID
	Selectors []Selector // at least one, at most MaxSelectors, no duplicates
	// TTL is the longest validity of an SVID for this entry:
	// DefaultWorkloadTTL unless set, at most MaxSVIDTTL.
	TTL time.Duration
}

// Selector is a fact about a workload process that the node's agent checks
// before handing it an SVID, written "type:value" in a policy, such as
// "unix:uid:1000" (Type "unix", Value "uid:1000").
type Selector struct {
	Type  string
	Value string
}

func (s Selector) String() string { return s.Type + ":" + s.Value }

// SelectorTypeUnix is the selector type of facts an agent learns from the
// Workload API socket's peer credentials:
//
//	unix:uid:<n>          the process's user ID
//	unix:gid:<n>          the process's primary group ID
//	unix:path:<path>      its executable, an absolute, clean path
//	unix:sha256:<hex>     the SHA-256 of its executable, 64 lowercase hex digits
const SelectorTypeUnix = "unix"

// selectorTypes are the selector types a workload entry may use, each with
// the check of its values. A new type (and the agent's support for it) is
// one more entry.
var selectorTypes = map[string]func(value string) error{
	SelectorTypeUnix: checkUnixSelector,
}

// ParseSelector parses a selector written "type:value", checking that the
// type is known and the value valid for it.
func ParseSelector(s string) (Selector, error) {
	typ, val, ok := strings.Cut(s, ":")
	if !ok || typ == "" {
		return Selector{}, fmt.Errorf("%q is not a selector such as \"unix:uid:1000\"", s)
	}
	check, known := selectorTypes[typ]
	if !known {
		return Selector{}, fmt.Errorf("%q has an unknown selector type %q; use %s", s, typ, quoteList(selectorTypeNames()))
	}
	if err := check(val); err != nil {
		return Selector{}, fmt.Errorf("%q: %w", s, err)
	}
	return Selector{Type: typ, Value: val}, nil
}

func selectorTypeNames() []string {
	names := make([]string, 0, len(selectorTypes))
	for n := range selectorTypes {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func checkUnixSelector(v string) error {
	key, val, ok := strings.Cut(v, ":")
	if !ok || val == "" {
		return errors.New("a unix selector is uid:<n>, gid:<n>, path:<absolute path> or sha256:<hex>")
	}
	switch key {
	case "uid", "gid":
		if n, err := strconv.ParseUint(val, 10, 32); err != nil || strconv.FormatUint(n, 10) != val {
			return fmt.Errorf("%s must be a decimal number below 2^32", key)
		}
	case "path":
		if !path.IsAbs(val) || path.Clean(val) != val {
			return errors.New("path must be absolute and clean")
		}
	case "sha256":
		if b, err := hex.DecodeString(val); err != nil || len(b) != 32 || strings.ToLower(val) != val {
			return errors.New("sha256 must be 64 lowercase hex digits")
		}
	default:
		return fmt.Errorf("unknown unix selector %q; use uid, gid, path or sha256", key)
	}
	return nil
}

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

// clone returns a copy of the entry that shares nothing with the Set.
func (e WorkloadEntry) clone() WorkloadEntry {
	e.Selectors = slices.Clone(e.Selectors)
	return e
}
