package workload

import (
	"context"
	"errors"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/keybroker/keybroker/internal/provenance"
)

// Source supplies the identities the Workload API hands out. The agent's
// SVID manager implements it; tests use fakes.
type Source interface {
	// Snapshot returns the current state, never modified afterwards, and a
	// channel that is closed when a newer state replaces it. Before the
	// first attestation it returns nil and a channel closed by the first
	// state.
	Snapshot() (*Snapshot, <-chan struct{})
	// FetchJWTSVID returns a JWT-SVID for id, one of the snapshot's entry
	// IDs, with the given audience (at least one).
	FetchJWTSVID(ctx context.Context, id spiffeid.ID, audience []string) (*jwtsvid.SVID, error)
}

// Snapshot is what the Workload API serves at one moment.
type Snapshot struct {
	// Entries are the node's workload entries, in the broker's order: a
	// caller's SVIDs come in the order of the entries it matches, the
	// first being its default SVID.
	Entries []Entry
	// X509SVIDs holds the workload X.509-SVID of each entry's SPIFFE ID
	// (entries sharing an ID share the SVID); an ID not yet issued is
	// missing.
	X509SVIDs map[spiffeid.ID]*x509svid.SVID
	// Bundle is the trust domain's bundle: X.509 authorities and JWT keys.
	Bundle *spiffebundle.Bundle
	// Lapse is when the node's identity ends: its X.509-SVID's expiry
	// plus the configured grace. From then on no SVID is served.
	Lapse time.Time
	// Trust verifies the Sigstore bundles of callers' executables for
	// the entries' signed selectors (signer keys and trusted roots the
	// broker sent with the entries); nil when no entry has one.
	Trust *provenance.Trust
}

// Match returns the entries whose selectors all hold for the caller.
func (s *Snapshot) Match(caller []Selector) []Entry {
	var out []Entry
	for _, e := range s.Entries {
		if e.Matches(caller) {
			out = append(out, e)
		}
	}
	return out
}

// hasSigned reports whether an entry has a signed selector, so that
// callers' executables are worth verifying.
func (s *Snapshot) hasSigned() bool {
	for _, e := range s.Entries {
		for _, sel := range e.Selectors {
			if sel.Type == SelectorTypeSigned {
				return true
			}
		}
	}
	return false
}

// Lapsed reports whether the node's identity has ended at now.
func (s *Snapshot) Lapsed(now time.Time) bool { return !now.Before(s.Lapse) }

// Errors a Source's FetchJWTSVID returns to refuse, which the server
// answers with PermissionDenied; any other error is Unavailable.
var (
	// ErrExpired: the node's identity has lapsed.
	ErrExpired = errors.New("identity expired")
	// ErrNoIdentity: the ID is not among the node's entries (any more).
	ErrNoIdentity = errors.New("no identity issued")
)
