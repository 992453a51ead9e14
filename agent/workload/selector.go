package workload

import (
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// SelectorTypeUnix is the only selector type: facts the agent learns about
// a caller from the socket's peer credentials and /proc.
const SelectorTypeUnix = "unix"

// MaxSelectors bounds the selectors of one entry.
const MaxSelectors = 16

// Selector is one fact about a workload process, such as unix:uid:1000.
//
// Values of type unix:
//
//	uid:<n>          the caller's user ID (from SO_PEERCRED)
//	gid:<n>          the caller's primary group ID (from SO_PEERCRED)
//	path:<abs path>  the caller's executable, as /proc/<pid>/exe names it
//	sha256:<hex>     the SHA-256 of the caller's executable, lowercase hex
type Selector struct {
	Type  string
	Value string
}

func (s Selector) String() string { return s.Type + ":" + s.Value }

// Validate checks that s is a selector the agent can attest.
func (s Selector) Validate() error {
	if s.Type != SelectorTypeUnix {
		return fmt.Errorf("selector %q: unknown type %q (want %q)", s, s.Type, SelectorTypeUnix)
	}
	key, val, ok := strings.Cut(s.Value, ":")
	if !ok || val == "" {
		return fmt.Errorf("selector %q: want uid:<n>, gid:<n>, path:<absolute path> or sha256:<hex>", s)
	}
	switch key {
	case "uid", "gid":
		if n, err := strconv.ParseUint(val, 10, 32); err != nil || strconv.FormatUint(n, 10) != val {
			return fmt.Errorf("selector %q: %s must be a decimal number", s, key)
		}
	case "path":
		if !filepath.IsAbs(val) || filepath.Clean(val) != val {
			return fmt.Errorf("selector %q: path must be absolute and clean", s)
		}
	case "sha256":
		if b, err := hex.DecodeString(val); err != nil || len(b) != 32 || strings.ToLower(val) != val {
			return fmt.Errorf("selector %q: sha256 must be 64 lowercase hex digits", s)
		}
	default:
		return fmt.Errorf("selector %q: unknown unix selector %q", s, key)
	}
	return nil
}

// Entry maps the workloads that match all of its selectors to a SPIFFE ID.
type Entry struct {
	Name      string
	ID        spiffeid.ID
	Selectors []Selector
	// TTL is the longest validity of an SVID for this entry; the broker
	// enforces it.
	TTL time.Duration
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

// Caller is a process on the other end of the Workload API socket.
type Caller struct {
	PID int32
	UID uint32
	GID uint32
	// Path and SHA256 describe the executable; empty when the agent could
	// not read it (then only uid and gid selectors match).
	Path   string
	SHA256 string
}

// Selectors returns the facts entries are matched against.
func (c Caller) Selectors() []Selector {
	s := []Selector{
		{SelectorTypeUnix, "uid:" + strconv.FormatUint(uint64(c.UID), 10)},
		{SelectorTypeUnix, "gid:" + strconv.FormatUint(uint64(c.GID), 10)},
	}
	if c.Path != "" {
		s = append(s, Selector{SelectorTypeUnix, "path:" + c.Path})
	}
	if c.SHA256 != "" {
		s = append(s, Selector{SelectorTypeUnix, "sha256:" + c.SHA256})
	}
	return s
}
