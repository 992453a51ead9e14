package policies_test

import (
	"slices"
	"testing"
	"time"

	"github.com/keybroker/keybroker/policies"
)

// A vault_token release's settings are checked when parsed: a token role
// that names a role, policies that are names (never root), a ttl bounded by
// MaxTokenTTL and a period within it, and none of the other types'
// settings; nor are its settings allowed on other types.
func TestParseVaultToken(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		wantErr string
	}{
		{
			name: "valid",
			body: `    type         = "vault_token"
    token_role   = "nodes"
    policies     = ["node-read", "node.kv"]
    ttl          = "1h"
    period       = "10m"
    display_name = "node-${ek_hash_short}"`,
		},
		{
			name: "defaults",
			body: `    type       = "vault_token"
    token_role = "nodes"`,
		},
		{
			name:    "no token_role",
			body:    `    type = "vault_token"`,
			wantErr: `p.hcl:3:3: policy "web": release "tls": a vault_token needs a token_role (the token role of auth/token/create/<role>)`,
		},
		{
			name: "token_role not a role name",
			body: `    type       = "vault_token"
    token_role = "nodes/../root"`,
			wantErr: `p.hcl:5:18: policy "web": release "tls": token_role "nodes/../root" is not a Vault token role name (letters, digits, '_', '-' and '.', not at either end '-' or '.')`,
		},
		{
			name: "ttl over the token maximum",
			body: `    type       = "vault_token"
    token_role = "nodes"
    ttl        = "769h"`,
			wantErr: `p.hcl:6:18: policy "web": release "tls": ttl "769h" exceeds the maximum of 768h for a vault_token`,
		},
		{
			name: "ttl below a second",
			body: `    type       = "vault_token"
    token_role = "nodes"
    ttl        = "1500ms"`,
			wantErr: `p.hcl:6:18: policy "web": release "tls": the ttl of a vault_token must be a whole number of seconds, at least 1s`,
		},
		{
			name: "period longer than ttl",
			body: `    type       = "vault_token"
    token_role = "nodes"
    ttl        = "1h"
    period     = "2h"`,
			wantErr: `p.hcl:7:18: policy "web": release "tls": period "2h" exceeds the ttl of 1h0m0s: renewals cannot extend a token past its ttl`,
		},
		{
			name: "period not a duration",
			body: `    type       = "vault_token"
    token_role = "nodes"
    period     = "forever"`,
			wantErr: `p.hcl:6:18: policy "web": release "tls": period "forever" is not a duration such as "1h"`,
		},
		{
			name: "root, bad and duplicate policies",
			body: `    type       = "vault_token"
    token_role = "nodes"
    policies   = ["Root", "a,b", "kv", "kv", 7]`,
			wantErr: `p.hcl:6:19: policy "web": release "tls": policies[0]: a released token cannot have the root policy
p.hcl:6:27: policy "web": release "tls": policies[1] "a,b" is not a Vault policy name (1 to 128 letters, digits, '_', '-' or '.')
p.hcl:6:40: policy "web": release "tls": policies[3] "kv" is listed twice
p.hcl:6:46: policy "web": release "tls": policies[4] must be a string`,
		},
		{
			name: "other types' settings",
			body: `    type        = "vault_token"
    token_role  = "nodes"
    path        = "auth/token/create/nodes"
    common_name = "a"
    spiffe_id   = "spiffe://example.org/a"`,
			wantErr: `p.hcl:6:5: policy "web": release "tls": path is only allowed with type "vault_kv" or "vault_pki"
p.hcl:6:5: policy "web": release "tls": path is not allowed with type "vault_token"
p.hcl:7:5: policy "web": release "tls": common_name is not allowed with type "vault_token"
p.hcl:8:5: policy "web": release "tls": spiffe_id is not allowed with type "vault_token"`,
		},
		{
			name: "token settings on another type",
			body: `    type         = "tls_certificate"
    common_name  = "a"
    token_role   = "nodes"
    policies     = ["kv"]
    period       = "1h"
    display_name = "a"`,
			wantErr: `p.hcl:6:5: policy "web": release "tls": token_role is only allowed with type "vault_token"
p.hcl:7:5: policy "web": release "tls": policies is only allowed with type "vault_token"
p.hcl:8:5: policy "web": release "tls": period is only allowed with type "vault_token"
p.hcl:9:5: policy "web": release "tls": display_name is only allowed with type "vault_token"`,
		},
		{
			name: "display_name with an unknown variable",
			body: `    type         = "vault_token"
    token_role   = "nodes"
    display_name = "${hostname}"`,
			wantErr: `p.hcl:6:23: policy "web": release "tls": display_name: unknown template variable "hostname"; use ek_hash, ek_hash_short, ek_ca`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := policies.Parse([]byte(withRelease(tt.body)), "p.hcl")
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Parse: %v", err)
			case tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr):
				t.Fatalf("Parse error:\n%v\nwant:\n%s", err, tt.wantErr)
			}
		})
	}
}

// A vault_token release is evaluated into a Release with its token
// settings, display_name rendered for the node.
func TestEvaluateVaultToken(t *testing.T) {
	v := attest(t, node{})
	s := mustParse(t, fill(t, v, `policy "web" {
  select { ek_hashes = ["EKHASH"] }
  release "vault" {
    type         = "vault_token"
    mode         = "pcr_sealed"
    pcrs         = [7]
    token_role   = "nodes"
    policies     = ["node-read"]
    ttl          = "2h"
    period       = "30m"
    display_name = "node-${ek_hash_short}"
  }
  release "plain" {
    type       = "vault_token"
    token_role = "nodes"
  }
}`))
	d := s.Evaluate(v)
	if !d.Allowed || len(d.Releases) != 2 {
		t.Fatalf("decision %+v", d)
	}
	plain, got := d.Releases[0], d.Releases[1] // by name
	tok := got.Token
	if got.Type != policies.TypeVaultToken || got.TTL != 2*time.Hour || tok == nil || tok.Role != "nodes" ||
		!slices.Equal(tok.Policies, []string{"node-read"}) || tok.Period != 30*time.Minute || tok.DisplayName != "node-"+v.EKHash()[:16] {
		t.Errorf("release = %+v, token %+v", got, tok)
	}
	if !policies.IsVault(got.Type) {
		t.Error("IsVault(vault_token) = false: the broker would not need a vault block")
	}
	if plain.TTL != policies.DefaultTTL || plain.Token == nil || plain.Token.Period != 0 || plain.Token.Policies != nil || plain.Token.DisplayName != "" {
		t.Errorf("defaults: release %+v, token %+v", plain, plain.Token)
	}
}
