package policies_test

import (
	"testing"

	"github.com/keybroker/keybroker/policies"
)

// TestTPMResidentModes: tpm_resident is a mode of tls_certificate and
// x509_svid releases; only an x509_svid (the node SVID, whose key the
// agent uses itself) may bind its key to PCRs, with a non-empty pcrs and
// pcr_bank only alongside it.
func TestTPMResidentModes(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		wantErr string
	}{
		{"tls_certificate", `    type        = "tls_certificate"
    mode        = "tpm_resident"
    common_name = "a"`, ""},
		{"x509_svid", `    type      = "x509_svid"
    mode      = "tpm_resident"
    spiffe_id = "spiffe://example.org/node"`, ""},
		{"x509_svid bound to PCRs", `    type      = "x509_svid"
    mode      = "tpm_resident"
    pcr_bank  = "sha384"
    pcrs      = [0, 7]
    spiffe_id = "spiffe://example.org/node"`, ""},
		{"tls_certificate bound to PCRs", `    type        = "tls_certificate"
    mode        = "tpm_resident"
    pcrs        = [7]
    common_name = "a"`,
			`p.hcl:6:5: policy "web": release "tls": pcrs with mode "tpm_resident" is only supported for type "x509_svid" (OpenSSL's tpm2 provider cannot use a PCR-bound key)`},
		{"empty pcrs", `    type      = "x509_svid"
    mode      = "tpm_resident"
    pcrs      = []
    spiffe_id = "spiffe://example.org/node"`,
			`p.hcl:6:17: policy "web": release "tls": pcrs cannot be empty`},
		{"pcr_bank without pcrs", `    type      = "x509_svid"
    mode      = "tpm_resident"
    pcr_bank  = "sha256"
    spiffe_id = "spiffe://example.org/node"`,
			`p.hcl:6:5: policy "web": release "tls": pcr_bank needs pcrs`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := policies.Parse([]byte(withRelease(tt.body)), "p.hcl")
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Parse: %v", err)
			case tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr):
				t.Fatalf("Parse = %v, want %q", err, tt.wantErr)
			}
		})
	}
}
