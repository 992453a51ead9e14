package policies

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"

	"github.com/keybroker/keybroker/internal/hcldiag"
	"github.com/keybroker/keybroker/internal/provenance"
)

// signerHCL is a signer block: a public key trusted to sign workload
// executables (selector signed:key:<name>).
type signerHCL struct {
	Name      string         `hcl:"name,label"`
	NameRange hcl.Range      `hcl:"name,label_range"`
	DefRange  hcl.Range      `hcl:",def_range"`
	PublicKey *hcl.Attribute `hcl:"public_key,optional"`
}

// trustedRootHCL is a trusted_root block: a Sigstore trusted root and the
// OIDC issuers whose keyless certificates it vouches for (selector
// signed:identity:<issuer>/<subject>).
type trustedRootHCL struct {
	Name      string         `hcl:"name,label"`
	NameRange hcl.Range      `hcl:"name,label_range"`
	DefRange  hcl.Range      `hcl:",def_range"`
	JSON      *hcl.Attribute `hcl:"json,optional"`
	Issuers   *hcl.Attribute `hcl:"issuers,optional"`
}

// signer and trustedRoot are the parsed blocks, with where they are
// written.
type signer struct {
	key provenance.Key
	rng hcl.Range
}

type trustedRoot struct {
	root provenance.Root
	rng  hcl.Range
	// issuerRange is where the issuers are written.
	issuerRange hcl.Range
}

// maxFileSize bounds what file() reads: the largest trust material.
const maxFileSize = provenance.MaxTrustedRootSize

// fileFunc is HCL's file(path): the contents of a file, a path relative to
// the policy document's directory, at most maxFileSize bytes. read records
// each file read for the document's digest.
func fileFunc(dir string, read func(path string, data []byte)) function.Function {
	return function.New(&function.Spec{
		Params: []function.Parameter{{Name: "path", Type: cty.String}},
		Type:   function.StaticReturnType(cty.String),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			p := args[0].AsString()
			if !filepath.IsAbs(p) {
				p = filepath.Join(dir, p)
			}
			f, err := os.Open(p)
			if err != nil {
				return cty.NilVal, fmt.Errorf("unable to read %s: %w", p, err)
			}
			defer f.Close()
			data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
			if err != nil {
				return cty.NilVal, fmt.Errorf("unable to read %s: %w", p, err)
			}
			if len(data) > maxFileSize {
				return cty.NilVal, fmt.Errorf("%s exceeds %d bytes", p, maxFileSize)
			}
			read(p, data)
			return cty.StringVal(string(data)), nil
		},
	})
}

// trustStr evaluates a string attribute of a trust block, where file() is
// available.
func (c *compiler) trustStr(attr *hcl.Attribute, what string) (string, bool) {
	v, diags := attr.Expr.Value(c.fileCtx)
	if diags.HasErrors() {
		c.diags = append(c.diags, diags...)
		return "", false
	}
	if v.IsNull() || v.Type() != cty.String {
		c.errorf(attr.Expr.Range(), "%s must be a string", what)
		return "", false
	}
	return v.AsString(), true
}

func (c *compiler) signer(raw *signerHCL) *signer {
	where := fmt.Sprintf("signer %q", raw.Name)
	if err := provenance.CheckName(raw.Name); err != nil {
		c.errorf(raw.NameRange, "%s: %v", where, err)
		return nil
	}
	if raw.PublicKey == nil {
		c.errorf(raw.DefRange, "%s: public_key is required", where)
		return nil
	}
	s, ok := c.trustStr(raw.PublicKey, where+": public_key")
	if !ok {
		return nil
	}
	der, err := provenance.ParsePublicKey([]byte(s))
	if err != nil {
		c.errorf(raw.PublicKey.Expr.Range(), "%s: public_key: %v", where, err)
		return nil
	}
	return &signer{key: provenance.Key{Name: raw.Name, DER: der}, rng: raw.NameRange}
}

// trustedRoot parses a trusted_root block. A root with errors is still
// returned when its issuers list could be read, so that the Set's checks
// (ambiguous issuers, identity selectors) report along with them; the Set
// is discarded then.
func (c *compiler) trustedRoot(raw *trustedRootHCL) *trustedRoot {
	where := fmt.Sprintf("trusted_root %q", raw.Name)
	if err := provenance.CheckName(raw.Name); err != nil {
		c.errorf(raw.NameRange, "%s: %v", where, err)
		return nil
	}
	r := &trustedRoot{root: provenance.Root{Name: raw.Name}, rng: raw.NameRange}
	if raw.JSON == nil {
		c.errorf(raw.DefRange, "%s: json is required", where)
	} else if s, ok := c.trustStr(raw.JSON, where+": json"); ok {
		if _, err := provenance.ParseTrustedRoot([]byte(s)); err != nil {
			c.errorf(raw.JSON.Expr.Range(), "%s: json: %v", where, err)
		}
		r.root.JSON = []byte(s)
	}
	if raw.Issuers == nil {
		c.errorf(raw.DefRange, "%s: issuers is required: the OIDC issuers whose certificates this root vouches for", where)
		return nil
	}
	r.issuerRange = raw.Issuers.Expr.Range()
	exprs := c.list(raw.Issuers, where)
	if exprs == nil {
		return nil
	}
	if len(exprs) == 0 || len(exprs) > provenance.MaxIssuers {
		c.errorf(raw.Issuers.Expr.Range(), "%s: issuers must list 1 to %d issuers", where, provenance.MaxIssuers)
	}
	for i, e := range exprs {
		s, ok := c.str(e, "%s: issuers[%d]", where, i)
		if !ok {
			continue
		}
		if err := provenance.CheckIssuer(s); err != nil {
			c.errorf(e.Range(), "%s: issuers[%d]: %v", where, i, err)
			continue
		}
		r.root.Issuers = append(r.root.Issuers, s)
	}
	return r
}

// trustIndex is the Set's signers and trusted roots by name, with every
// declared issuer.
type trustIndex struct {
	signers map[string]*signer
	roots   map[string]*trustedRoot
	issuers []string
}

// addTrust adds a document's signers and trusted roots to the index,
// refusing names defined twice across the Set.
func (ti *trustIndex) add(doc *document) hcl.Diagnostics {
	var diags hcl.Diagnostics
	for _, s := range doc.signers {
		if prev, dup := ti.signers[s.key.Name]; dup {
			diags = append(diags, errorAt(s.rng, "signer %q is already defined at %s", s.key.Name, hcldiag.Pos(prev.rng)))
			continue
		}
		ti.signers[s.key.Name] = s
	}
	for _, r := range doc.roots {
		if prev, dup := ti.roots[r.root.Name]; dup {
			diags = append(diags, errorAt(r.rng, "trusted_root %q is already defined at %s", r.root.Name, hcldiag.Pos(prev.rng)))
			continue
		}
		ti.roots[r.root.Name] = r
		for _, err := range provenance.CheckIssuerSet(append(slices.Clone(ti.issuers), r.root.Issuers...)) {
			diags = append(diags, errorAt(r.issuerRange, "trusted_root %q: %v", r.root.Name, err))
		}
		ti.issuers = append(ti.issuers, r.root.Issuers...)
	}
	return diags
}

// checkSigned checks a workload's signed selectors against the index: a
// signed:key selector names a signer of the Set, a signed:identity selector
// starts with an issuer a trusted root declares. It records what each
// workload uses, for Decision.WorkloadTrust.
func (ti *trustIndex) checkSigned(p *policy, w *workload) hcl.Diagnostics {
	var diags hcl.Diagnostics
	w.signers, w.roots = nil, nil
	for i, sel := range w.entry.Selectors {
		if sel.Type != SelectorTypeSigned {
			continue
		}
		where := fmt.Sprintf("policy %q: workload %q: selectors[%d] %q", p.name, w.entry.Name, i, sel)
		switch kind, val, _ := strings.Cut(sel.Value, ":"); kind {
		case "key":
			if _, ok := ti.signers[val]; !ok {
				diags = append(diags, errorAt(w.selectorRanges[i], "%s names no signer block", where))
				continue
			}
			w.signers = append(w.signers, val)
		case "identity":
			iss, _, err := provenance.SplitIdentity(val, ti.issuers)
			if err != nil {
				diags = append(diags, errorAt(w.selectorRanges[i], "%s: %v", where, err))
				continue
			}
			for name, r := range ti.roots {
				if slices.Contains(r.root.Issuers, iss) {
					w.roots = append(w.roots, name)
				}
			}
		}
	}
	return diags
}

// material is the trust material a decision's workloads use, sorted by
// name.
func (s *Set) material(signers, roots []string) provenance.Material {
	var m provenance.Material
	slices.Sort(signers)
	for _, n := range slices.Compact(signers) {
		m.Keys = append(m.Keys, s.trust.signers[n].key)
	}
	slices.Sort(roots)
	for _, n := range slices.Compact(roots) {
		m.Roots = append(m.Roots, s.trust.roots[n].root)
	}
	return m
}
