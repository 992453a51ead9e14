package policies_test

import (
	"strings"
	"testing"

	"github.com/keybroker/keybroker/policies"
)

func TestParsePCRPolicy(t *testing.T) {
	v7, v0 := strings.Repeat("77", 32), strings.Repeat("00", 32)
	tests := []struct {
		name       string
		body       string
		wantPolicy policies.PCRPolicy
		wantStates int
		wantErr    string // the whole error text; "" for success
	}{
		{
			name:       "literal by default",
			body:       "type = \"tls_certificate\"\nmode = \"pcr_sealed\"\npcrs = [7]",
			wantPolicy: policies.PCRPolicyLiteral,
		},
		{
			name: "authorized with expected states",
			body: `type = "tls_certificate"
mode = "pcr_sealed"
pcrs = [0, 7]
pcr_policy = "authorized"
expected_states = [
  { 0 = "` + v0 + `", 7 = "` + v7 + `" },
  { "7" = "` + v0 + `", "0" = "` + v7 + `" },
]`,
			wantPolicy: policies.PCRPolicyAuthorized,
			wantStates: 2,
		},
		{
			name:    "pcr_policy without pcr_sealed",
			body:    "type = \"tls_certificate\"\npcr_policy = \"authorized\"",
			wantErr: `p.hcl:5:1: policy "web": release "tls": pcr_policy is only allowed with mode "pcr_sealed"`,
		},
		{
			name:    "unknown pcr_policy",
			body:    "type = \"tls_certificate\"\nmode = \"pcr_sealed\"\npcrs = [7]\npcr_policy = \"signed\"",
			wantErr: `p.hcl:7:14: policy "web": release "tls": pcr_policy "signed" is not supported; use "literal" or "authorized"`,
		},
		{
			name:    "expected_states with literal values",
			body:    "type = \"tls_certificate\"\nmode = \"pcr_sealed\"\npcrs = [7]\nexpected_states = [{ 7 = \"" + v7 + "\" }]",
			wantErr: `p.hcl:7:1: policy "web": release "tls": expected_states is only allowed with pcr_policy "authorized"`,
		},
		{
			name: "bad states",
			body: `type = "tls_certificate"
mode = "pcr_sealed"
pcrs = [0, 7]
pcr_policy = "authorized"
expected_states = [
  { 7 = "` + v7 + `" },
  { 0 = "` + v0 + `", 8 = "` + v7 + `" },
  { 0 = "00", 7 = "` + v7 + `" },
  "` + v7 + `",
]`,
			wantErr: `p.hcl:9:3: policy "web": release "tls": expected_states[0] gives 1 of the release's 2 pcrs [0 7]: a state gives them all
p.hcl:10:77: policy "web": release "tls": expected_states[1]: PCR 8 is not one of the release's pcrs [0 7]
p.hcl:11:9: policy "web": release "tls": expected_states[2]: PCR 0 must be 32 bytes in hex
p.hcl:12:3: policy "web": release "tls": expected_states[3] must be an object of PCR index = hex value`,
		},
		{
			name:    "a sha384 state of sha256 size",
			body:    "type = \"tls_certificate\"\nmode = \"pcr_sealed\"\npcr_bank = \"sha384\"\npcrs = [7]\npcr_policy = \"authorized\"\nexpected_states = [{ 7 = \"" + v7 + "\" }]",
			wantErr: `p.hcl:9:26: policy "web": release "tls": expected_states[0]: PCR 7 must be 48 bytes in hex`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := policies.Parse([]byte(withRelease(tt.body+"\ncommon_name = \"node\"")), "p.hcl")
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("Parse error:\n%v\nwant:\n%s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			r := s.Refs().Releases[0]
			if r.PCRPolicy != tt.wantPolicy || r.ExpectedStates != tt.wantStates {
				t.Errorf("release pcr_policy %q with %d expected states; want %q with %d", r.PCRPolicy, r.ExpectedStates, tt.wantPolicy, tt.wantStates)
			}
		})
	}
}
