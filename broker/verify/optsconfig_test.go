package verify_test

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify"
)

// ParseOpts is the one parser of ek_allow, ek_ca, allow_sha1 and pcr_banks,
// for broker.hcl and the Vault auth method's config endpoint: each problem
// is located and worded once.
func TestParseOpts(t *testing.T) {
	ca := newTestCA(t, "vendor root", nil)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.der})
	hash := strings.Repeat("ab", 32)
	src := func(entry int, data []byte) []verify.CertSource {
		return []verify.CertSource{{Entry: entry, Data: data}}
	}
	type loc struct {
		attr        string
		index       int
		list        string
		entry       int
		msgContains string
	}
	tests := []struct {
		name  string
		in    verify.OptsConfig
		want  []loc
		check func(t *testing.T, o verify.Opts)
	}{
		{name: "nothing written", in: verify.OptsConfig{},
			want: []loc{{"", -1, "", -1, "no EK is trusted: set ek_allow or ek_ca"}}},
		{name: "identity_log_pcr default", in: verify.OptsConfig{EKAllow: []string{hash}},
			check: func(t *testing.T, o verify.Opts) {
				if o.IdentityLogPCR != 0 || o.IdentityLogOff {
					t.Fatalf("identity log PCR %d off %v, want the default", o.IdentityLogPCR, o.IdentityLogOff)
				}
			}},
		{name: "identity_log_pcr set", in: verify.OptsConfig{EKAllow: []string{hash}, IdentityLogPCR: intp(12)},
			check: func(t *testing.T, o verify.Opts) {
				if o.IdentityLogPCR != 12 || o.IdentityLogOff {
					t.Fatalf("identity log PCR %d off %v, want 12", o.IdentityLogPCR, o.IdentityLogOff)
				}
			}},
		{name: "identity_log_pcr off", in: verify.OptsConfig{EKAllow: []string{hash}, IdentityLogPCR: intp(0)},
			check: func(t *testing.T, o verify.Opts) {
				if !o.IdentityLogOff {
					t.Fatal("identity_log_pcr = 0 did not turn the record off")
				}
			}},
		{name: "identity_log_pcr resettable by DRTM", in: verify.OptsConfig{EKAllow: []string{hash}, IdentityLogPCR: intp(17)},
			want: []loc{{"identity_log_pcr", -1, "", -1, "identity_log_pcr: PCR 17 cannot hold the identity record: use one of 10-15 (0 turns the identity record off)"}}},
		{name: "ek_allow written empty", in: verify.OptsConfig{EKAllow: []string{}},
			want: []loc{{"ek_allow", -1, "", -1, "no EK is trusted: ek_allow is empty and there is no ek_ca"}}},
		{name: "defaults: SHA-1 refused, every bank counts", in: verify.OptsConfig{EKAllow: []string{hash}},
			check: func(t *testing.T, o verify.Opts) {
				if o.AllowSHA1 || o.Banks != nil || !slices.Equal(o.Trust.EKHashes, []string{hash}) {
					t.Errorf("opts = %+v", o)
				}
				if o.Counts(tpm2.TPMAlgSHA1) != true || !o.Counts(tpm2.TPMAlgSHA512) {
					t.Error("with no pcr_banks every bank counts (SHA-1 to be refused)")
				}
			}},
		{name: "allow_sha1 and pcr_banks reach the Opts",
			in: verify.OptsConfig{EKAllow: []string{hash}, AllowSHA1: true, PCRBanks: []string{"sha1", "sha384"}},
			check: func(t *testing.T, o verify.Opts) {
				if !o.AllowSHA1 || !slices.Equal(o.Banks, []tpm2.TPMAlgID{tpm2.TPMAlgSHA1, tpm2.TPMAlgSHA384}) {
					t.Errorf("opts = %+v", o)
				}
				if o.Counts(tpm2.TPMAlgSHA256) {
					t.Error("sha256 counts though pcr_banks leaves it out")
				}
			}},
		{name: "pcr_banks problems",
			in: verify.OptsConfig{EKAllow: []string{hash}, PCRBanks: []string{"sha1", "md5", "sha256", "sha256"}},
			want: []loc{
				{"pcr_banks", 0, "", -1, "pcr_banks: sha1 needs allow_sha1"},
				{"pcr_banks", 1, "", -1, `pcr_banks: "md5" is not sha1, sha256, sha384 or sha512`},
				{"pcr_banks", 3, "", -1, `pcr_banks: "sha256" is listed twice`},
			}},
		{name: "pcr_banks empty", in: verify.OptsConfig{EKAllow: []string{hash}, PCRBanks: []string{}},
			want: []loc{{"pcr_banks", -1, "", -1, "pcr_banks cannot be empty; leave it out to count every bank"}}},
		{name: "ek_allow entries", in: verify.OptsConfig{EKAllow: []string{hash, strings.ToUpper(hash), "abc"}},
			want: []loc{
				{"ek_allow", 1, "", -1, `ek_allow entry "` + strings.ToUpper(hash) + `" is not a lowercase hex SHA-256 EK hash`},
				{"ek_allow", 2, "", -1, `ek_allow entry "abc" is not a lowercase hex SHA-256 EK hash`},
			}},
		{name: "an ek_ca trusts its roots", in: verify.OptsConfig{EKCAs: []verify.CAConfig{{Name: "vendor", Roots: src(0, caPEM)}}},
			check: func(t *testing.T, o verify.Opts) {
				if len(o.Trust.CAs) != 1 || o.Trust.CAs[0].Name != "vendor" {
					t.Fatalf("CAs = %+v", o.Trust.CAs)
				}
				if _, err := ca.cert.Verify(x509.VerifyOptions{Roots: o.Trust.CAs[0].Roots}); err != nil {
					t.Errorf("root not in the pool: %v", err)
				}
			}},
		{name: "ek_ca problems", in: verify.OptsConfig{EKCAs: []verify.CAConfig{
			{Name: "vendor", Roots: src(0, caPEM)},
			{Name: "vendor", Roots: src(0, caPEM)},
			{Name: " padded", Roots: src(0, caPEM)},
			{Name: "no-roots"},
			{Name: "files", Roots: []verify.CertSource{
				{Entry: 0, Name: "good.pem", Data: caPEM},
				{Entry: 1, Name: "garbage.crt", Data: []byte{0x30, 0x03, 0x01, 0x02}},
				{Entry: 2, Name: "missing.pem", Err: errors.New("unable to read missing.pem: no such file")},
			}, Intermediates: []verify.CertSource{{Entry: 0, Data: []byte("hello"), PEMOnly: true}}},
		}},
			want: []loc{
				{"ek_ca", 1, "", -1, `ek_ca "vendor" is defined twice`},
				{"ek_ca", 2, "", -1, `ek_ca name " padded" cannot be empty or start or end with spaces`},
				{"ek_ca", 3, "roots", -1, `ek_ca "no-roots" roots: cannot be empty`},
				{"ek_ca", 4, "roots", 1, `ek_ca "files" roots: garbage.crt: is neither PEM nor a DER certificate`},
				{"ek_ca", 4, "roots", 2, `ek_ca "files" roots: unable to read missing.pem: no such file`},
				{"ek_ca", 4, "intermediates", 0, `ek_ca "files" intermediates: holds no PEM certificate`},
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, problems := verify.ParseOpts(tt.in)
			if len(problems) != len(tt.want) {
				t.Fatalf("problems = %v, want %d", problems, len(tt.want))
			}
			for i, w := range tt.want {
				p := problems[i]
				if p.Attr != w.attr || p.Index != w.index || p.List != w.list || p.Entry != w.entry || !strings.Contains(p.Error(), w.msgContains) {
					t.Errorf("problem %d = %+v (%v), want %+v", i, p, p.Err, w)
				}
			}
			if tt.check != nil {
				tt.check(t, o)
			}
		})
	}
}

func intp(i int) *int { return &i }
