package vaultauth

import (
	"slices"
	"strings"
	"testing"

	sockaddr "github.com/hashicorp/go-sockaddr"
	"github.com/hashicorp/vault/sdk/logical"
)

const rolePolicy = `policy "boot" {
  select { ek_hashes = ["` + hashA + `"] }
  require = ["pcrs.sha256[7] == '00'"]
}
`

func TestRoleCRUD(t *testing.T) {
	e := newEnv(t)
	for _, name := range []string{"web", "db"} {
		e.write("role/"+name, map[string]any{
			"policy":            rolePolicy,
			"token_policies":    "web-secrets,common",
			"token_ttl":         "10m",
			"token_max_ttl":     "1h",
			"token_bound_cidrs": "10.0.0.0/8",
			"token_num_uses":    5,
			"response_wrap_ttl": "30s",
		})
	}
	resp, err := e.request(logical.ReadOperation, "role/web", nil)
	if err != nil || resp == nil {
		t.Fatalf("read: %v %v", resp, err)
	}
	d := resp.Data
	if d["policy"] != rolePolicy || !slices.Equal(d["token_policies"].([]string), []string{"web-secrets", "common"}) ||
		d["token_ttl"] != int64(600) || d["token_max_ttl"] != int64(3600) || d["token_num_uses"] != 5 ||
		d["response_wrap_ttl"] != int64(30) || d["token_type"] != "default" || len(d["token_bound_cidrs"].([]*sockaddr.SockAddrMarshaler)) != 1 {
		t.Errorf("read = %#v", d)
	}

	// An update changes what it names.
	e.write("role/web", map[string]any{"token_ttl": "20m", "token_type": "batch", "token_num_uses": 0})
	resp, _ = e.request(logical.ReadOperation, "role/web", nil)
	if resp.Data["token_ttl"] != int64(1200) || resp.Data["policy"] != rolePolicy || resp.Data["token_type"] != "batch" {
		t.Errorf("after update = %v", resp.Data)
	}

	// token_envelope: pcr_sealed keeps its PCRs, sorted and deduplicated;
	// none clears them.
	if resp.Data["token_envelope"] != "none" {
		t.Errorf("token_envelope = %v; want none by default", resp.Data["token_envelope"])
	}
	e.write("role/web", map[string]any{"token_envelope": "pcr_sealed", "token_envelope_pcrs": "7,0,7", "response_wrap_ttl": 0})
	resp, _ = e.request(logical.ReadOperation, "role/web", nil)
	if resp.Data["token_envelope"] != "pcr_sealed" || resp.Data["token_envelope_pcr_bank"] != "sha256" ||
		!slices.Equal(resp.Data["token_envelope_pcrs"].([]uint32), []uint32{0, 7}) {
		t.Errorf("after pcr_sealed = %v", resp.Data)
	}
	e.write("role/web", map[string]any{"token_envelope": "none"})
	resp, _ = e.request(logical.ReadOperation, "role/web", nil)
	if resp.Data["token_envelope"] != "none" || resp.Data["token_envelope_pcrs"] != nil {
		t.Errorf("after none = %v", resp.Data)
	}

	resp, err = e.request(logical.ListOperation, "role/", nil)
	if err != nil || !slices.Equal(resp.Data["keys"].([]string), []string{"db", "web"}) {
		t.Fatalf("list = %v, %v", resp, err)
	}
	if _, err := e.request(logical.DeleteOperation, "role/db", nil); err != nil {
		t.Fatal(err)
	}
	if resp, err := e.request(logical.ReadOperation, "role/db", nil); err != nil || resp != nil {
		t.Errorf("read after delete = %v, %v", resp, err)
	}
	resp, _ = e.request(logical.ListOperation, "role/", nil)
	if !slices.Equal(resp.Data["keys"].([]string), []string{"web"}) {
		t.Errorf("list after delete = %v", resp.Data)
	}
}

func TestRoleValidation(t *testing.T) {
	tests := []struct {
		name    string
		data    map[string]any
		wantErr []string // all in one response
	}{
		{
			name:    "no policy",
			data:    map[string]any{"token_policies": "a"},
			wantErr: []string{"policy cannot be empty: a role without a policy allows no node"},
		},
		{
			name: "policy errors with positions",
			data: map[string]any{"policy": `policy "p" {
  select { ek_hashes = ["nope"] }
  require = ["pcrs.sha256[7] ==", "ek.nonsense"]
}
`},
			wantErr: []string{
				`role/web:2:`,
				`role/web:3:`,
			},
		},
		{
			name: "release and workload blocks",
			data: map[string]any{"policy": `policy "p" {
  select { ek_hashes = ["` + hashA + `"] }
  release "tls" {
    type        = "tls_certificate"
    common_name = "x"
  }
  workload "w" {
    spiffe_id = "spiffe://example.org/w"
    selectors = ["unix:uid:0"]
  }
}
`},
			wantErr: []string{
				"role/web:3:3: release blocks are not supported by the Vault auth method: a login issues a Vault token, not credentials",
				"role/web:7:3: workload blocks are not supported by the Vault auth method",
			},
		},
		{
			name: "token settings, token_envelope and the policy, all at once",
			data: map[string]any{
				"policy":            "policy {",
				"token_ttl":         "2h",
				"token_max_ttl":     "1h",
				"token_envelope":    "tpm_bound",
				"response_wrap_ttl": "1000000h",
			},
			wantErr: []string{
				"'token_ttl' cannot be greater than 'token_max_ttl'",
				"response_wrap_ttl 1000000h0m0s is greater than the mount's maximum lease TTL",
				"token_envelope and response_wrap_ttl exclude each other",
				"role/web:1:",
			},
		},
		{
			name: "unknown token_envelope",
			data: map[string]any{"policy": rolePolicy, "token_envelope": "wrapped"},
			wantErr: []string{
				`token_envelope "wrapped" is not none, tpm_bound or pcr_sealed`,
			},
		},
		{
			name: "pcr_sealed without PCRs, bad bank and index",
			data: map[string]any{"policy": rolePolicy, "token_envelope": "pcr_sealed", "token_envelope_pcr_bank": "sha1", "token_envelope_pcrs": "7,24"},
			wantErr: []string{
				`token_envelope_pcr_bank "sha1" is not sha256, sha384 or sha512`,
				"token_envelope_pcrs: 24 is not a PCR index 0-23",
			},
		},
		{
			name:    "pcr_sealed needs PCRs",
			data:    map[string]any{"policy": rolePolicy, "token_envelope": "pcr_sealed"},
			wantErr: []string{"token_envelope=pcr_sealed needs token_envelope_pcrs"},
		},
		{
			name: "pcr_sealed to software-resettable PCRs",
			data: map[string]any{"policy": rolePolicy, "token_envelope": "pcr_sealed", "token_envelope_pcrs": "7,16,23"},
			wantErr: []string{
				"token_envelope_pcrs: PCR 16 can be reset by software at locality 0 and cannot bind a key or a secret",
				"token_envelope_pcrs: PCR 23 can be reset by software at locality 0 and cannot bind a key or a secret",
			},
		},
		{
			name:    "PCRs without pcr_sealed",
			data:    map[string]any{"policy": rolePolicy, "token_envelope": "tpm_bound", "token_envelope_pcrs": "7"},
			wantErr: []string{"token_envelope_pcrs and token_envelope_pcr_bank are only allowed with token_envelope=pcr_sealed"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			resp, err := e.request(logical.CreateOperation, "role/web", tt.data)
			if err != nil {
				t.Fatal(err)
			}
			if !resp.IsError() {
				t.Fatalf("role accepted: %v", resp)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(resp.Error().Error(), want) {
					t.Errorf("error lacks %q:\n%s", want, resp.Error())
				}
			}
			if r, _ := e.b.role(t.Context(), e.storage, "web"); r != nil {
				t.Error("an invalid role was stored")
			}
		})
	}
}
