package broker

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
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
func (p *problems) err() error {
	if len(p.diags) == 0 {
		return nil
	}
	list := slices.Clone(p.diags)
	slices.SortStableFunc(list, func(a, b *hcl.Diagnostic) int {
		ra, rb := diagRange(a), diagRange(b)
		return cmp.Or(
			strings.Compare(ra.Filename, rb.Filename),
			cmp.Compare(ra.Start.Line, rb.Start.Line),
			cmp.Compare(ra.Start.Column, rb.Start.Column),
		)
	})
	errs := make([]error, len(list))
	for i, d := range list {
		errs[i] = fmt.Errorf("%s: %s", posOf(diagRange(d)), diagText(d))
	}
	return errors.Join(errs...)
}

func diagRange(d *hcl.Diagnostic) hcl.Range {
	if d.Subject != nil {
		return *d.Subject
	}
	return hcl.Range{}
}

// posOf formats the start of rng as "file:line:column".
func posOf(rng hcl.Range) string {
	return fmt.Sprintf("%s:%d:%d", rng.Filename, rng.Start.Line, rng.Start.Column)
}

// diagText renders a diagnostic's summary and detail in the project's error
// style: lowercase, no trailing period.
func diagText(d *hcl.Diagnostic) string {
	msg := lowerFirst(strings.TrimSuffix(d.Summary, "."))
	if d.Detail != "" {
		msg += ": " + lowerFirst(d.Detail)
	}
	return strings.TrimSuffix(msg, ".")
}

// lowerFirst lowercases a leading capital unless it starts an acronym.
func lowerFirst(s string) string {
	if len(s) >= 2 && 'A' <= s[0] && s[0] <= 'Z' && !('A' <= s[1] && s[1] <= 'Z') {
		return string(s[0]+'a'-'A') + s[1:]
	}
	return s
}
