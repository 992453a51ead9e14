package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/keybroker/keybroker/agent/workload"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// jwtKey keys the JWT-SVID cache (SVIDManager.jwts): one token per SPIFFE
// ID and audience set.
type jwtKey struct {
	id       spiffeid.ID
	audience string // sorted, NUL-separated
}

type cachedJWT struct {
	svid      *jwtsvid.SVID
	refreshAt time.Time
}

// FetchJWTSVID implements workload.Source: a cached JWT-SVID for id and
// audience until half its life, else a new one from the broker. After a
// failed re-attestation only cached, unexpired tokens are returned.
func (m *SVIDManager) FetchJWTSVID(ctx context.Context, id spiffeid.ID, audience []string) (*jwtsvid.SVID, error) {
	sorted := slices.Clone(audience)
	slices.Sort(sorted)
	key := jwtKey{id: id, audience: strings.Join(sorted, "\x00")}
	now := time.Now()

	m.mu.Lock()
	if m.node == nil {
		m.mu.Unlock()
		return nil, errors.New("the agent holds no identity yet")
	}
	if !now.Before(m.lapseLocked()) {
		m.mu.Unlock()
		return nil, workload.ErrExpired
	}
	if !slices.Contains(m.entryIDsLocked(), id) {
		m.mu.Unlock()
		return nil, workload.ErrNoIdentity
	}
	c, cached := m.jwts[key]
	if cached && now.Before(c.refreshAt) {
		m.mu.Unlock()
		return c.svid, nil
	}
	if m.suspended {
		m.mu.Unlock()
		if cached && now.Before(c.svid.Expiry) {
			return c.svid, nil
		}
		return nil, errSuspended
	}
	node, bundle := m.node, m.bundle
	m.mu.Unlock()

	client, done, err := m.client(node)
	if err != nil {
		return nil, err
	}
	defer done()
	resp, err := client.IssueWorkloadJWTSVID(ctx, &pb.IssueWorkloadJWTSVIDRequest{SpiffeId: id.String(), Audience: audience})
	if err != nil {
		return nil, fmt.Errorf("IssueWorkloadJWTSVID: %w", rpcError(err))
	}
	svid, err := jwtsvid.ParseAndValidate(resp.GetToken(), bundle, audience)
	if err != nil {
		return nil, fmt.Errorf("the broker's JWT-SVID for %s does not validate: %w", id, err)
	}
	if svid.ID != id {
		return nil, fmt.Errorf("the broker's JWT-SVID for %s names %s", id, svid.ID)
	}
	for _, a := range audience {
		if !slices.Contains(svid.Audience, a) {
			return nil, fmt.Errorf("the broker's JWT-SVID for %s lacks audience %q", id, a)
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.jwts) >= maxJWTCache {
		for k, c := range m.jwts {
			if !now.Before(c.svid.Expiry) {
				delete(m.jwts, k)
			}
		}
		if len(m.jwts) >= maxJWTCache {
			clear(m.jwts)
		}
	}
	if m.node == node {
		m.jwts[key] = cachedJWT{svid: svid, refreshAt: renewAt(now, svid.Expiry)}
	}
	return svid, nil
}
