package broker

import (
	"fmt"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/keybroker/keybroker/internal/hcldiag"
)

// problems collects configuration problems, each at the range of the
// attribute or block it is about, to be reported together.
type problems struct {
	diags hcl.Diagnostics
}

// at records a problem at rng; messages are lowercase and carry their own
// context.
func (p *problems) at(rng hcl.Range, format string, args ...any) {
	p.diags = append(p.diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: fmt.Sprintf(format, args...), Subject: rng.Ptr()})
}

// add records HCL's own diagnostics (parse and decode), every one of them.
func (p *problems) add(diags hcl.Diagnostics) {
	for _, d := range diags {
		if d.Severity == hcl.DiagError {
			p.diags = append(p.diags, d)
		}
	}
}

// empty reports whether no problem was recorded.
func (p *problems) empty() bool { return len(p.diags) == 0 }

// err returns every problem as one error, a line per problem sorted by
// position, each "file:line:column: message"; nil without problems.
func (p *problems) err() error { return hcldiag.Error(p.diags) }

// spot finds where a block's attributes, list entries and nested blocks are
// written, so that each problem is reported at what it is about. Anything
// it cannot find is at the block's definition (the file's start for the
// top level).
type spot struct {
	body  *hclsyntax.Body // nil: everything is at def
	def   hcl.Range
	label hcl.Range // the block's first label; def without one
}

// newSpot locates the top level of a configuration file.
func newSpot(body *hclsyntax.Body, filename string) spot {
	start := hcl.Range{Filename: filename, Start: hcl.InitialPos, End: hcl.InitialPos}
	return spot{body: body, def: start, label: start}
}

func (s spot) attribute(name string) *hclsyntax.Attribute {
	if s.body == nil {
		return nil
	}
	return s.body.Attributes[name]
}

// has reports whether the attribute is written.
func (s spot) has(name string) bool { return s.attribute(name) != nil }

// attr is the range of an attribute's value.
func (s spot) attr(name string) hcl.Range {
	if a := s.attribute(name); a != nil {
		return a.Expr.Range()
	}
	return s.def
}

// entry is the range of element i of a list attribute.
func (s spot) entry(name string, i int) hcl.Range {
	a := s.attribute(name)
	if a == nil {
		return s.def
	}
	if exprs, diags := hcl.ExprList(a.Expr); !diags.HasErrors() && i < len(exprs) {
		return exprs[i].Range()
	}
	return a.Expr.Range()
}

// blocks locates the nested blocks of a type, in order.
func (s spot) blocks(typ string) []spot {
	if s.body == nil {
		return nil
	}
	var out []spot
	for _, b := range s.body.Blocks {
		if b.Type != typ {
			continue
		}
		in := spot{body: b.Body, def: b.DefRange(), label: b.DefRange()}
		if len(b.LabelRanges) > 0 {
			in.label = b.LabelRanges[0]
		}
		out = append(out, in)
	}
	return out
}

// block locates nested block i of a type; s itself if there is none.
func (s spot) block(typ string, i int) spot {
	if bs := s.blocks(typ); i < len(bs) {
		return bs[i]
	}
	return spot{def: s.def, label: s.def}
}

// nameAttributes prefixes HCL's diagnostics about an attribute's value
// (such as "unsuitable value type", which does not say of what) with the
// attribute's name.
func nameAttributes(diags hcl.Diagnostics, body *hclsyntax.Body) hcl.Diagnostics {
	for _, d := range diags {
		if d.Subject == nil || body == nil {
			continue
		}
		if name := attributeAt(body, *d.Subject); name != "" && !strings.Contains(d.Summary, `"`+name+`"`) {
			d.Summary = name + ": " + hcldiag.LowerFirst(d.Summary)
		}
	}
	return diags
}

// attributeAt names the attribute whose value holds rng, in body or its
// blocks; "" if none does.
func attributeAt(body *hclsyntax.Body, rng hcl.Range) string {
	for name, a := range body.Attributes {
		if r := a.Expr.Range(); r.ContainsOffset(rng.Start.Byte) && r.ContainsOffset(rng.End.Byte-1) {
			return name
		}
	}
	for _, b := range body.Blocks {
		if name := attributeAt(b.Body, rng); name != "" {
			return b.Type + ": " + name
		}
	}
	return ""
}
