package policies

import (
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// Bounds of a vault_token release's settings.
const (
	// MinTokenTTL is the shortest ttl and period of a vault_token: Vault
	// counts token lifetimes in whole seconds, and a zero TTL would leave
	// the token the role's or the mount's default lifetime.
	MinTokenTTL = time.Second
	// MaxTokenPolicies bounds the policies of a vault_token.
	MaxTokenPolicies = 32
)

// tokenRoleName is Vault's pattern for token role names
// (framework.GenericNameRegex): the role is a segment of
// auth/token/create/<role>.
var tokenRoleName = regexp.MustCompile(`^\w([\w.-]*\w)?$`)

// tokenPolicyName is a Vault policy name as a vault_token may ask for it:
// no separators Vault would split on, no path characters.
var tokenPolicyName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,128}$`)

// vaultToken validates the settings of a vault_token release: token_role
// (required, static), policies (static names, never "root"), period (at
// most ttl) and display_name (a template); none of the certificate or path
// settings. Its ttl is bounded already (MaxTokenTTL); here it must also be
// whole seconds' worth.
func (c *compiler) vaultToken(r *release, raw *releaseHCL, where string) {
	for _, a := range []*hcl.Attribute{raw.Path, raw.CommonName, raw.DNSNames, raw.IPAddresses, raw.SPIFFEID} {
		if a != nil {
			c.errorf(a.NameRange, "%s: %s is not allowed with type %q", where, a.Name, TypeVaultToken)
		}
	}
	t := &tokenRelease{}
	ok := true
	if raw.TokenRole == nil {
		c.errorf(raw.DefRange, "%s: a %s needs a token_role (the token role of auth/token/create/<role>)", where, TypeVaultToken)
		ok = false
	} else if s, valid := c.str(raw.TokenRole.Expr, "%s: token_role", where); !valid {
		ok = false
	} else if !tokenRoleName.MatchString(s) {
		c.errorf(raw.TokenRole.Expr.Range(), "%s: token_role %q is not a Vault token role name (letters, digits, '_', '-' and '.', not at either end '-' or '.')", where, s)
		ok = false
	} else {
		t.role = s
	}
	for i, e := range c.list(raw.Policies, where) {
		s, valid := c.str(e, "%s: policies[%d]", where, i)
		switch {
		case !valid:
			ok = false
		case strings.EqualFold(s, "root"):
			c.errorf(e.Range(), "%s: policies[%d]: a released token cannot have the root policy", where, i)
			ok = false
		case !tokenPolicyName.MatchString(s):
			c.errorf(e.Range(), "%s: policies[%d] %q is not a Vault policy name (1 to 128 letters, digits, '_', '-' or '.')", where, i, s)
			ok = false
		case slices.Contains(t.policies, s):
			c.errorf(e.Range(), "%s: policies[%d] %q is listed twice", where, i, s)
			ok = false
		default:
			t.policies = append(t.policies, s)
		}
	}
	if len(t.policies) > MaxTokenPolicies {
		c.errorf(raw.Policies.Expr.Range(), "%s: policies lists %d policies; at most %d", where, len(t.policies), MaxTokenPolicies)
		ok = false
	}
	if raw.TTL != nil && (r.ttl < MinTokenTTL || r.ttl%time.Second != 0) {
		c.errorf(raw.TTL.Expr.Range(), "%s: the ttl of a %s must be a whole number of seconds, at least 1s", where, TypeVaultToken)
		ok = false
	}
	if raw.Period != nil {
		if d, valid := c.tokenPeriod(raw.Period, r.ttl, where); valid {
			t.period = d
		} else {
			ok = false
		}
	}
	if raw.DisplayName != nil {
		if _, valid := c.template(raw.DisplayName.Expr, where+": display_name"); valid {
			t.displayName = raw.DisplayName.Expr
		} else {
			ok = false
		}
	}
	if ok {
		r.token = t
	}
}

// tokenPeriod parses a vault_token's period: whole seconds, at least
// MinTokenTTL, and at most ttl, which bounds the token's whole life
// however often it is renewed.
func (c *compiler) tokenPeriod(attr *hcl.Attribute, ttl time.Duration, where string) (time.Duration, bool) {
	s, ok := c.str(attr.Expr, "%s: period", where)
	if !ok {
		return 0, false
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		c.errorf(attr.Expr.Range(), "%s: period %q is not a duration such as \"1h\"", where, s)
	case d < MinTokenTTL || d%time.Second != 0:
		c.errorf(attr.Expr.Range(), "%s: period %q must be a whole number of seconds, at least 1s", where, s)
	case d > ttl:
		c.errorf(attr.Expr.Range(), "%s: period %q exceeds the ttl of %s: renewals cannot extend a token past its ttl", where, s, ttl)
	default:
		return d, true
	}
	return 0, false
}
