// Package hcldiag renders HCL diagnostics the way keybroker reports
// configuration and policy problems: every error, one per line, sorted by
// position, each "file:line:column: message", messages lowercase without a
// trailing period. broker.hcl and policy files share it.
package hcldiag

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// Error returns the error diagnostics of diags as one error, a line per
// diagnostic in source order; nil when there is none.
func Error(diags hcl.Diagnostics) error {
	var list hcl.Diagnostics
	for _, d := range diags {
		if d.Severity == hcl.DiagError {
			list = append(list, d)
		}
	}
	slices.SortStableFunc(list, func(a, b *hcl.Diagnostic) int {
		ra, rb := Subject(a), Subject(b)
		return cmp.Or(
			strings.Compare(ra.Filename, rb.Filename),
			cmp.Compare(ra.Start.Line, rb.Start.Line),
			cmp.Compare(ra.Start.Column, rb.Start.Column),
		)
	})
	errs := make([]error, len(list))
	for i, d := range list {
		errs[i] = fmt.Errorf("%s: %s", Pos(Subject(d)), Message(d))
	}
	return errors.Join(errs...)
}

// Subject is where a diagnostic is about; the zero range without one.
func Subject(d *hcl.Diagnostic) hcl.Range {
	if d.Subject != nil {
		return *d.Subject
	}
	return hcl.Range{}
}

// Pos renders the start of rng as "file:line:column".
func Pos(rng hcl.Range) string {
	return fmt.Sprintf("%s:%d:%d", rng.Filename, rng.Start.Line, rng.Start.Column)
}

// Message renders a diagnostic's summary and detail: lowercase, no
// trailing period.
func Message(d *hcl.Diagnostic) string {
	msg := LowerFirst(strings.TrimSuffix(d.Summary, "."))
	if d.Detail != "" {
		msg += ": " + LowerFirst(d.Detail)
	}
	return strings.TrimSuffix(msg, ".")
}

// LowerFirst lowercases a leading capital unless it starts an acronym.
func LowerFirst(s string) string {
	if len(s) >= 2 && 'A' <= s[0] && s[0] <= 'Z' && !('A' <= s[1] && s[1] <= 'Z') {
		return string(s[0]+'a'-'A') + s[1:]
	}
	return s
}
