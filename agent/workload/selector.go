package workload

import (
	"strconv"

	"github.com/keybroker/keybroker/internal/workloadentry"
)

// SelectorTypeUnix is the selector type of facts the agent learns about a
// caller from the socket's peer credentials and /proc.
const SelectorTypeUnix = workloadentry.SelectorTypeUnix

// SelectorTypeSigned is the selector type of facts the agent verifies
// about a caller's executable: a Sigstore bundle for its SHA-256 (found
// where BundleLocations say), signed by trust material the broker sent
// with the entries (Snapshot.Trust).
const SelectorTypeSigned = workloadentry.SelectorTypeSigned

// MaxSelectors bounds the selectors of one entry.
const MaxSelectors = workloadentry.MaxSelectors

// Selector is one fact about a workload process, such as unix:uid:1000.
//
// Values of type unix:
//
//	uid:<n>          the caller's user ID (from SO_PEERCRED)
//	gid:<n>          the caller's primary group ID (from SO_PEERCRED)
//	path:<abs path>  the caller's executable, as /proc/<pid>/exe names it
//	sha256:<hex>     the SHA-256 of the caller's executable, lowercase hex
//
// Values of type signed, holding when a bundle for the executable's SHA-256
// verifies (offline, package internal/provenance):
//
//	key:<name>                   signed by the policy's signer "<name>"
//	identity:<issuer>/<subject>  a keyless certificate for <subject> from <issuer>,
//	                             chaining to a trusted root that declares <issuer>
//
// It is the broker's type (policies.Selector, store.Selector): one parser
// and validation for both sides.
type Selector = workloadentry.Selector

// Entry maps the workloads that match all of its selectors to a SPIFFE ID
// (Validate, Matches). It is the broker's type (policies.WorkloadEntry,
// store.WorkloadEntry).
type Entry = workloadentry.Entry

// Caller is a process on the other end of the Workload API socket.
type Caller struct {
	PID int32
	UID uint32
	GID uint32
	// Path and SHA256 describe the executable; empty when the agent could
	// not read it (then only uid and gid selectors match).
	Path   string
	SHA256 string

	// startTime and exe are the process's as it connected, for recheck.
	startTime uint64
	exe       executable
}

// Selectors returns the facts entries are matched against.
func (c Caller) Selectors() []Selector {
	s := []Selector{
		{Type: SelectorTypeUnix, Value: "uid:" + strconv.FormatUint(uint64(c.UID), 10)},
		{Type: SelectorTypeUnix, Value: "gid:" + strconv.FormatUint(uint64(c.GID), 10)},
	}
	if c.Path != "" {
		s = append(s, Selector{Type: SelectorTypeUnix, Value: "path:" + c.Path})
	}
	if c.SHA256 != "" {
		s = append(s, Selector{Type: SelectorTypeUnix, Value: "sha256:" + c.SHA256})
	}
	return s
}
