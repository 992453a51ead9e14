package policies

import (
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/google/cel-go/cel"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/keybroker/keybroker/internal/hcldiag"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
)

// documentHCL is a policy document as decoded from HCL, before validation.
// Attributes are kept as *hcl.Attribute (nil when absent) so that every
// problem can be reported at its position.
type documentHCL struct {
	Policies     []policyHCL      `hcl:"policy,block"`
	Nodes        []nodeHCL        `hcl:"node,block"`
	Signers      []signerHCL      `hcl:"signer,block"`
	TrustedRoots []trustedRootHCL `hcl:"trusted_root,block"`
}

// nodeHCL is a node block: labels for one EK.
type nodeHCL struct {
	EKHash      string         `hcl:"ek_hash,label"`
	EKHashRange hcl.Range      `hcl:"ek_hash,label_range"`
	Labels      *hcl.Attribute `hcl:"labels"`
}

type policyHCL struct {
	Name      string         `hcl:"name,label"`
	NameRange hcl.Range      `hcl:"name,label_range"`
	DefRange  hcl.Range      `hcl:",def_range"`
	Select    *selectHCL     `hcl:"select,block"`
	Require   *hcl.Attribute `hcl:"require,optional"`
	Releases  []releaseHCL   `hcl:"release,block"`
	Workloads []workloadHCL  `hcl:"workload,block"`
}

type selectHCL struct {
	DefRange hcl.Range      `hcl:",def_range"`
	EKHashes *hcl.Attribute `hcl:"ek_hashes,optional"`
	EKCAs    *hcl.Attribute `hcl:"ek_cas,optional"`
	Labels   *hcl.Attribute `hcl:"labels,optional"`
}

// document is one parsed document: its policies, node labels and trust
// material, and the digest of its source (and of the files its file()
// calls read).
type document struct {
	digest   [sha256.Size]byte
	policies []*policy
	nodes    []*nodeLabels
	signers  []*signer
	roots    []*trustedRoot
}

// nodeLabels are the labels of one EK, from a node block.
type nodeLabels struct {
	ekHash string
	rng    hcl.Range
	labels map[string]string
}

// policy is the parsed form of a policy block.
type policy struct {
	name      string
	nameRange hcl.Range
	ekHashes  map[string]bool
	ekCAs     map[string]bool
	labels    map[string]string // selects nodes carrying all of these
	// refs are the ek_hashes and ek_cas entries and the labels selector
	// with their positions, for Set.Refs.
	ekHashRefs, ekCARefs []Ref
	labelsRange          hcl.Range
	requires             []requirement
	// reads are the fact groups (FactGroups) the require expressions
	// read, sorted.
	reads     []string
	releases  []*release
	workloads []*workload
}

// requirement is a compiled require expression. cel.Program is safe for
// concurrent use.
type requirement struct {
	src string
	prg cel.Program
}

// parseDocument parses and validates one document. It returns a nil
// document only when the HCL itself cannot be parsed; otherwise the
// document is returned with whatever could be built, for duplicate checks.
func parseDocument(src []byte, filename string) (*document, hcl.Diagnostics) {
	file, diags := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	if diags.HasErrors() {
		return nil, diags
	}
	var raw documentHCL
	diags = append(diags, gohcl.DecodeBody(file.Body, nil, &raw)...)
	env, err := celEnv()
	if err != nil {
		// The environment is fixed; failing to build it is a bug.
		return nil, append(diags, errorAt(hcl.Range{Filename: filename, Start: hcl.InitialPos},
			"unable to build the CEL environment: %v", err))
	}
	h := sha256.New()
	h.Write(src)
	c := &compiler{env: env, diags: diags, fileCtx: &hcl.EvalContext{Functions: map[string]function.Function{
		"file": fileFunc(filepath.Dir(filename), func(path string, data []byte) {
			fmt.Fprintf(h, "\x00file %q %x", path, sha256.Sum256(data))
		}),
	}}}
	doc := &document{}
	for i := range raw.Policies {
		doc.policies = append(doc.policies, c.policy(&raw.Policies[i]))
	}
	for i := range raw.Nodes {
		if n := c.node(&raw.Nodes[i]); n != nil {
			doc.nodes = append(doc.nodes, n)
		}
	}
	for i := range raw.Signers {
		if s := c.signer(&raw.Signers[i]); s != nil {
			doc.signers = append(doc.signers, s)
		}
	}
	for i := range raw.TrustedRoots {
		if r := c.trustedRoot(&raw.TrustedRoots[i]); r != nil {
			doc.roots = append(doc.roots, r)
		}
	}
	if len(raw.Policies)+len(raw.Nodes)+len(raw.Signers)+len(raw.TrustedRoots) == 0 && !c.diags.HasErrors() {
		c.errorf(hcl.Range{Filename: filename, Start: hcl.InitialPos}, "document defines no policy, node, signer or trusted_root")
	}
	h.Sum(doc.digest[:0])
	return doc, c.diags
}

// compiler turns decoded blocks into their parsed form, collecting every
// problem as a diagnostic.
type compiler struct {
	env   *cel.Env
	diags hcl.Diagnostics
	// fileCtx offers file() to the attributes of trust blocks.
	fileCtx *hcl.EvalContext
}

func (c *compiler) errorf(rng hcl.Range, format string, args ...any) {
	c.diags = append(c.diags, errorAt(rng, format, args...))
}

func (c *compiler) policy(raw *policyHCL) *policy {
	p := &policy{name: raw.Name, nameRange: raw.NameRange, ekHashes: map[string]bool{}, ekCAs: map[string]bool{}}
	where := fmt.Sprintf("policy %q", raw.Name)
	if raw.Name == "" {
		c.errorf(raw.NameRange, "policy name cannot be empty")
	}
	if raw.Select == nil {
		c.errorf(raw.DefRange, "%s: a select block is required", where)
	} else {
		c.selector(p, raw.Select, where)
	}
	if raw.Require != nil {
		c.requires(p, raw.Require, where)
	}
	for i := range raw.Releases {
		p.releases = append(p.releases, c.release(&raw.Releases[i], where))
	}
	for i := range raw.Workloads {
		p.workloads = append(p.workloads, c.workload(&raw.Workloads[i], where))
	}
	return p
}

func (c *compiler) selector(p *policy, raw *selectHCL, where string) {
	hashes := c.list(raw.EKHashes, where)
	for i, e := range hashes {
		s, ok := c.str(e, "%s: ek_hashes[%d]", where, i)
		if !ok {
			continue
		}
		if !isEKHash(s) {
			c.errorf(e.Range(), "%s: ek_hashes[%d] %q is not 64 lowercase hex characters", where, i, s)
			continue
		}
		p.ekHashes[s] = true
		p.ekHashRefs = append(p.ekHashRefs, Ref{Policy: p.name, Name: s, Range: e.Range()})
	}
	cas := c.list(raw.EKCAs, where)
	for i, e := range cas {
		s, ok := c.str(e, "%s: ek_cas[%d]", where, i)
		if !ok {
			continue
		}
		if s == "" {
			c.errorf(e.Range(), "%s: ek_cas[%d] cannot be empty", where, i)
			continue
		}
		p.ekCAs[s] = true
		p.ekCARefs = append(p.ekCARefs, Ref{Policy: p.name, Name: s, Range: e.Range()})
	}
	p.labels = c.labelMap(raw.Labels, where+": select labels")
	if raw.Labels != nil {
		p.labelsRange = raw.Labels.Expr.Range()
	}
	if len(hashes)+len(cas)+len(p.labels) == 0 {
		c.errorf(raw.DefRange, "%s: select lists no ek_hashes, ek_cas or labels; a policy must select something", where)
	}
}

// node parses a node block: labels for one EK hash.
func (c *compiler) node(raw *nodeHCL) *nodeLabels {
	where := fmt.Sprintf("node %q", raw.EKHash)
	if !isEKHash(raw.EKHash) {
		c.errorf(raw.EKHashRange, "%s: the label must be an EK hash, 64 lowercase hex characters", where)
		return nil
	}
	labels := c.labelMap(raw.Labels, where+": labels")
	if labels == nil {
		return nil
	}
	return &nodeLabels{ekHash: raw.EKHash, rng: raw.EKHashRange, labels: labels}
}

// maxLabels bounds the labels of a node or a selector.
const maxLabels = 64

// labelMap evaluates a constant map of label names to string values.
func (c *compiler) labelMap(attr *hcl.Attribute, what string) map[string]string {
	if attr == nil {
		return nil
	}
	v, diags := attr.Expr.Value(nil)
	if diags.HasErrors() {
		c.diags = append(c.diags, diags...)
		return nil
	}
	if v.IsNull() || !(v.Type().IsObjectType() || v.Type().IsMapType()) {
		c.errorf(attr.Expr.Range(), "%s must be a map of names to strings", what)
		return nil
	}
	out := map[string]string{}
	for it := v.ElementIterator(); it.Next(); {
		k, val := it.Element()
		name := k.AsString()
		if name == "" || len(name) > 63 {
			c.errorf(attr.Expr.Range(), "%s: label names must be 1 to 63 characters", what)
			return nil
		}
		if val.IsNull() || val.Type() != cty.String || len(val.AsString()) > 256 {
			c.errorf(attr.Expr.Range(), "%s: label %q must be a string of at most 256 bytes", what, name)
			return nil
		}
		out[name] = val.AsString()
	}
	if len(out) > maxLabels {
		c.errorf(attr.Expr.Range(), "%s: at most %d labels", what, maxLabels)
		return nil
	}
	return out
}

func isEKHash(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for _, r := range s {
		if !('0' <= r && r <= '9' || 'a' <= r && r <= 'f') {
			return false
		}
	}
	return true
}

func (c *compiler) requires(p *policy, attr *hcl.Attribute, where string) {
	for i, e := range c.list(attr, where) {
		src, ok := c.str(e, "%s: require[%d]", where, i)
		if !ok {
			continue
		}
		ast, iss := c.env.Compile(src)
		if iss != nil && iss.Err() != nil {
			for _, ce := range iss.Errors() {
				c.errorf(e.Range(), "%s: require[%d] at expression %d:%d: %s",
					where, i, ce.Location.Line(), ce.Location.Column()+1, hcldiag.LowerFirst(ce.Message))
			}
			continue
		}
		if out := ast.OutputType(); !out.IsExactType(cel.BoolType) && !out.IsExactType(cel.DynType) {
			c.errorf(e.Range(), "%s: require[%d] must be a bool expression, not %s", where, i, out)
			continue
		}
		prg, err := c.env.Program(ast, cel.CostLimit(maxCost))
		if err != nil {
			c.errorf(e.Range(), "%s: require[%d]: unable to build the CEL program: %v", where, i, err)
			continue
		}
		p.requires = append(p.requires, requirement{src: src, prg: prg})
		p.reads = append(p.reads, factGroupsRead(ast)...)
	}
	slices.Sort(p.reads)
	p.reads = slices.Compact(p.reads)
}

// list returns the elements of a static list attribute, or nil if the
// attribute is absent; where names the enclosing block in errors.
func (c *compiler) list(attr *hcl.Attribute, where string) []hcl.Expression {
	if attr == nil {
		return nil
	}
	exprs, diags := hcl.ExprList(attr.Expr)
	if diags.HasErrors() {
		c.errorf(attr.Expr.Range(), "%s: %s must be a list", where, attr.Name)
		return nil
	}
	return exprs
}

// str evaluates a constant string expression; what names it in errors.
func (c *compiler) str(e hcl.Expression, what string, args ...any) (string, bool) {
	v, diags := e.Value(nil)
	if diags.HasErrors() {
		c.diags = append(c.diags, diags...)
		return "", false
	}
	if v.IsNull() || v.Type() != cty.String {
		c.errorf(e.Range(), "%s must be a string", fmt.Sprintf(what, args...))
		return "", false
	}
	return v.AsString(), true
}
