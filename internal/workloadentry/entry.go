// Package workloadentry is the one workload entry and selector type of the
// broker and the agent: policies parse entries into it (policies.WorkloadEntry),
// the broker stores what a node received in it (store.WorkloadEntry) and the
// agent matches Workload API callers against it (agent/workload.Entry). It
// has no dependency beyond go-spiffe's spiffeid, so that all three can
// import it. The JSON field names are those of the broker's stored node
// records.
package workloadentry

import (
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// SelectorTypeUnix is the selector type of facts an agent learns about a
// caller from the Workload API socket's peer credentials and /proc:
//
//	unix:uid:<n>          the process's user ID (from SO_PEERCRED)
//	unix:gid:<n>          the process's primary group ID (from SO_PEERCRED)
//	unix:path:<path>      its executable, as /proc/<pid>/exe names it; an absolute, clean path
//	unix:sha256:<hex>     the SHA-256 of its executable, 64 lowercase hex digits
const SelectorTypeUnix = "unix"

// SelectorTypeSigned is the selector type of facts an agent verifies about
// a caller's executable: a Sigstore signature by trust material the policy
// names (package internal/provenance):
//
//	signed:key:<name>                   signed by the policy's signer "<name>"
//	signed:identity:<issuer>/<subject>  a keyless certificate for <subject> from <issuer>,
//	                                    chaining to a trusted root that declares <issuer>
const SelectorTypeSigned = "signed"

// MaxSelectors bounds the selectors of one entry.
const MaxSelectors = 16

// Selector is one fact about a workload process, written "type:value",
// such as "unix:uid:1000" (Type "unix", Value "uid:1000").
type Selector struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

func (s Selector) String() string { return s.Type + ":" + s.Value }

// Entry maps the workloads that match all of its selectors to a SPIFFE ID.
type Entry struct {
	Name      string      `json:"name"`
	ID        spiffeid.ID `json:"spiffe_id"`
	Selectors []Selector  `json:"selectors"`
	// TTL is the longest validity of an SVID for this entry; the broker
	// enforces it.
	TTL time.Duration `json:"ttl"`
}

// selectorTypes are the selector types a workload entry may use, each with
// the check of its values. A new type (and the agent's support for it) is
// one more entry.
var selectorTypes = map[string]func(value string) error{
	SelectorTypeUnix:   checkUnixSelector,
	SelectorTypeSigned: checkSignedSelector,
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
		return Selector{}, fmt.Errorf("%q has an unknown selector type %q; use %s", s, typ, knownTypes())
	}
	if err := check(val); err != nil {
		return Selector{}, fmt.Errorf("%q: %w", s, err)
	}
	return Selector{Type: typ, Value: val}, nil
}

// Validate checks that s is a selector the agent can attest, as
// ParseSelector does.
func (s Selector) Validate() error {
	check, known := selectorTypes[s.Type]
	if !known {
		return fmt.Errorf("selector %q: unknown type %q (want %s)", s, s.Type, knownTypes())
	}
	if err := check(s.Value); err != nil {
		return fmt.Errorf("selector %q: %w", s, err)
	}
	return nil
}

// knownTypes names the selector types for an error message: "unix", or
// "a" or "b" once there are more.
func knownTypes() string {
	names := make([]string, 0, len(selectorTypes))
	for n := range selectorTypes {
		names = append(names, strconv.Quote(n))
	}
	slices.Sort(names)
	return strings.Join(names, " or ")
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

// maxIdentity bounds a signed:identity selector's value.
const maxIdentity = 2048

// namePattern is the form of signer and trusted root names, which appear
// in signed:key selectors.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// CheckTrustName checks the name of a signer or trusted root: 1 to 64
// letters, digits, '.', '_' or '-', starting with a letter or digit.
func CheckTrustName(name string) error {
	if !namePattern.MatchString(name) {
		return fmt.Errorf("name %q must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	return nil
}

func checkSignedSelector(v string) error {
	key, val, ok := strings.Cut(v, ":")
	if !ok || val == "" {
		return errors.New("a signed selector is key:<signer name> or identity:<issuer>/<subject>")
	}
	switch key {
	case "key":
		return CheckTrustName(val)
	case "identity":
		scheme, rest, ok := strings.Cut(val, "://")
		if !ok || (scheme != "https" && scheme != "http") || !strings.Contains(rest, "/") || strings.HasSuffix(rest, "/") {
			return errors.New("identity must be <issuer URL>/<subject>, such as https://token.actions.githubusercontent.com/https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main")
		}
		if len(val) > maxIdentity || strings.ContainsFunc(val, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return fmt.Errorf("identity must be at most %d bytes without control characters", maxIdentity)
		}
	default:
		return fmt.Errorf("unknown signed selector %q; use key or identity", key)
	}
	return nil
}

// Validate checks the entry: a SPIFFE ID, and 1 to MaxSelectors valid
// selectors. An entry without selectors would match every caller, so it is
// refused.
func (e Entry) Validate() error {
	if e.ID.IsZero() {
		return fmt.Errorf("entry %q: no SPIFFE ID", e.Name)
	}
	switch {
	case len(e.Selectors) == 0:
		return fmt.Errorf("entry %q: no selectors", e.Name)
	case len(e.Selectors) > MaxSelectors:
		return fmt.Errorf("entry %q: %d selectors, at most %d allowed", e.Name, len(e.Selectors), MaxSelectors)
	}
	var errs []error
	for _, s := range e.Selectors {
		if err := s.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("entry %q: %w", e.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Matches reports whether every selector of e is among the caller's. An
// entry without selectors matches nothing.
func (e Entry) Matches(caller []Selector) bool {
	if len(e.Selectors) == 0 {
		return false
	}
	for _, want := range e.Selectors {
		found := false
		for _, have := range caller {
			if want == have {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// Clone returns a copy of e that shares no selectors with it.
func (e Entry) Clone() Entry {
	e.Selectors = slices.Clone(e.Selectors)
	return e
}

// Clone returns copies of entries that share nothing with them.
func Clone(entries []Entry) []Entry {
	if entries == nil {
		return nil
	}
	out := make([]Entry, len(entries))
	for i, e := range entries {
		out[i] = e.Clone()
	}
	return out
}
