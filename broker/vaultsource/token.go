package vaultsource

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"time"
)

// TokenRequest is the token a token role is asked to create.
type TokenRequest struct {
	// Role is the token role: auth/token/create/<Role>. Required.
	Role string
	// Policies, if set, are asked for; the role's allowed_policies bound
	// them.
	Policies []string
	// TTL bounds the token's whole life (its explicit maximum TTL):
	// required, at least a second. Without Period it is also the token's
	// TTL, and the token is not renewable.
	TTL time.Duration
	// Period, if set (at most TTL), is the token's TTL, and the token is
	// renewable, up to TTL after its creation. Vault bounds the renewals
	// of a role's tokens by the role's token_explicit_max_ttl, not by the
	// token's own: with Period the role must set it, at most TTL, and the
	// broker reads the role (auth/token/roles/<Role>) to check.
	Period time.Duration
	// DisplayName, if set, names the token in Vault's audit log.
	DisplayName string
	// Metadata is the token's metadata (lookup-self shows it).
	Metadata map[string]string
}

// Token is a token a token role created. Token is a secret: never log it.
type Token struct {
	Token     string
	Accessor  string
	Policies  []string
	TTL       time.Duration // the token's TTL at creation
	Renewable bool
	Orphan    bool
	// NotAfter is when it expires at the latest: its creation plus
	// TokenRequest.TTL, or sooner if its TTL is shorter and it is not
	// renewable.
	NotAfter time.Time
}

// CreateToken has the token role req.Role create a service token with
// req's policies, metadata and lifetime. A token whose lifetime is not
// bounded as asked (Vault answered a TTL of 0, or longer than req.TTL, or
// a renewable token without req.Period), or that has no accessor to revoke
// it by (a batch token), is revoked if it can be and refused: a created
// token either is bounded and revocable or is not returned. With
// req.Period, a role whose token_explicit_max_ttl does not bound renewals
// within req.TTL is refused before any token is created.
func (c *Client) CreateToken(ctx context.Context, req TokenRequest) (_ *Token, err error) {
	const op = "token create"
	switch {
	case req.Role == "":
		return nil, &Error{Op: op, Reason: "no token role"}
	case req.TTL < time.Second:
		return nil, &Error{Op: op, Reason: "the token's ttl must be at least 1s"}
	case req.Period > req.TTL:
		return nil, &Error{Op: op, Reason: "the token's period exceeds its ttl"}
	}
	ttl, maxTTL := req.TTL, req.TTL
	if req.Period > 0 {
		ttl = req.Period
		if maxTTL, err = c.roleMaxTTL(ctx, req.Role); err != nil {
			return nil, err
		}
		if maxTTL == 0 || maxTTL > req.TTL {
			return nil, &Error{Op: op, Reason: fmt.Sprintf("token role %q must set token_explicit_max_ttl, at most %s, for renewable tokens: Vault bounds their renewals by the role's maximum", req.Role, req.TTL)}
		}
	}
	defer c.observe(OpTokenCreate, time.Now(), &err)
	data := map[string]any{
		"ttl":              seconds(ttl),
		"explicit_max_ttl": seconds(req.TTL),
		"renewable":        req.Period > 0,
	}
	if len(req.Policies) > 0 {
		data["policies"] = req.Policies
	}
	if req.DisplayName != "" {
		data["display_name"] = req.DisplayName
	}
	if len(req.Metadata) > 0 {
		data["meta"] = req.Metadata
	}
	start := time.Now()
	s, err := c.api.Logical().WriteWithContext(ctx, "auth/token/create/"+url.PathEscape(req.Role), data)
	if err != nil {
		return nil, classify(op, err)
	}
	if s == nil || s.Auth == nil || s.Auth.ClientToken == "" {
		return nil, &Error{Op: op, Reason: "answer holds no token"}
	}
	a := s.Auth
	t := &Token{
		Token: a.ClientToken, Accessor: a.Accessor, Policies: a.Policies,
		TTL: time.Duration(a.LeaseDuration) * time.Second, Renewable: a.Renewable, Orphan: a.Orphan,
		NotAfter: start.Add(maxTTL),
	}
	if !t.Renewable && t.TTL > 0 {
		t.NotAfter = start.Add(min(t.TTL, maxTTL))
	}
	var bad string
	switch {
	case t.Accessor == "":
		// Without an accessor it cannot be revoked: a batch token, which
		// expires with the role's TTL.
		return nil, &Error{Op: op, Reason: "the token has no accessor (the role makes batch tokens; it must make service tokens)"}
	case t.TTL <= 0:
		bad = "the token does not expire"
	case t.TTL > req.TTL:
		bad = fmt.Sprintf("the token's TTL %s exceeds the %s asked for", t.TTL, req.TTL)
	case t.Renewable && req.Period == 0:
		bad = "the token is renewable, which was not asked for"
	}
	if bad != "" {
		if rerr := c.RevokeToken(context.WithoutCancel(ctx), t.Accessor); rerr != nil {
			bad += "; not revoked: " + rerr.Error()
		} else {
			bad += "; revoked"
		}
		return nil, &Error{Op: op, Reason: bad}
	}
	return t, nil
}

// roleMaxTTL reads the token_explicit_max_ttl of token role role.
func (c *Client) roleMaxTTL(ctx context.Context, role string) (_ time.Duration, err error) {
	defer c.observe(OpTokenRole, time.Now(), &err)
	s, err := c.api.Logical().ReadWithContext(ctx, "auth/token/roles/"+url.PathEscape(role))
	if err != nil {
		return 0, classify("token role read", err)
	}
	if s == nil || s.Data == nil {
		return 0, &Error{Op: "token role read", Reason: "not found (404)"}
	}
	n, ok := s.Data["token_explicit_max_ttl"].(json.Number)
	if !ok {
		return 0, &Error{Op: "token role read", Reason: "answer lacks token_explicit_max_ttl"}
	}
	secs, err := n.Int64()
	if err != nil || secs < 0 {
		return 0, &Error{Op: "token role read", Reason: "malformed token_explicit_max_ttl"}
	}
	return time.Duration(secs) * time.Second, nil
}

// RevokeToken revokes a token by its accessor (and every token created
// with it): the broker revokes a token it created for a decision it then
// could not release.
func (c *Client) RevokeToken(ctx context.Context, accessor string) (err error) {
	if accessor == "" {
		return &Error{Op: "token revoke", Reason: "no accessor"}
	}
	defer c.observe(OpTokenRevoke, time.Now(), &err)
	if _, err := c.api.Logical().WriteWithContext(ctx, "auth/token/revoke-accessor", map[string]any{"accessor": accessor}); err != nil {
		return classify("token revoke", err)
	}
	return nil
}

// seconds formats d for Vault as whole seconds ("3600s").
func seconds(d time.Duration) string {
	return strconv.FormatInt(int64(d/time.Second), 10) + "s"
}
