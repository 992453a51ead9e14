package provenance_test

import (
	"crypto/sha256"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/provenance"
	"github.com/keybroker/keybroker/internal/provenance/provenancetest"
)

const (
	issuer  = "https://issuer.test/auth"
	subject = "builder@example.com"
)

func keyOf(t *testing.T, s *provenancetest.KeySigner) []byte {
	t.Helper()
	der, err := provenance.ParsePublicKey(s.PublicKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestVerify(t *testing.T) {
	artifact := []byte("the executable\n")
	digest := sha256.Sum256(artifact)
	modified := slices.Clone(artifact)
	modified[0] ^= 1

	release, other := provenancetest.NewKeySigner(t), provenancetest.NewKeySigner(t)
	sigstore, rogue := provenancetest.NewCA(t), provenancetest.NewCA(t)
	trust, err := provenance.NewTrust(
		[]provenance.Key{{Name: "release", DER: keyOf(t, release)}},
		[]provenance.Root{{Name: "sigstore", JSON: sigstore.TrustedRootJSON, Issuers: []string{issuer}}},
	)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		bundle  []byte
		want    []string
		wantErr string
	}{
		{name: "key", bundle: release.Sign(t, artifact), want: []string{"key:release"}},
		{name: "identity", bundle: sigstore.Sign(t, artifact, issuer, subject, provenancetest.SignOpts{}),
			want: []string{"identity:" + issuer + "/" + subject}},
		{name: "identity uri subject", bundle: sigstore.Sign(t, artifact, issuer, "https://ci.test/org/repo/.ci/release@refs/tags/v1", provenancetest.SignOpts{}),
			want: []string{"identity:" + issuer + "/https://ci.test/org/repo/.ci/release@refs/tags/v1"}},
		{name: "modified artifact, key", bundle: release.Sign(t, modified), wantErr: `signer "release": failed to verify signature: artifact does not match digest`},
		{name: "modified artifact, identity", bundle: sigstore.Sign(t, modified, issuer, subject, provenancetest.SignOpts{}),
			wantErr: `trusted root "sigstore": failed to verify signature: artifact does not match digest`},
		{name: "untrusted key", bundle: other.Sign(t, artifact), wantErr: `signer "release": failed to verify signature`},
		{name: "untrusted CA", bundle: rogue.Sign(t, artifact, issuer, subject, provenancetest.SignOpts{TimestampBy: sigstore}), wantErr: "failed to verify leaf certificate"},
		{name: "undeclared issuer", bundle: sigstore.Sign(t, artifact, "https://other.test", subject, provenancetest.SignOpts{}),
			wantErr: `certificate issuer "https://other.test" is not one the root declares`},
		{name: "no timestamp", bundle: sigstore.Sign(t, artifact, issuer, subject, provenancetest.SignOpts{NoTimestamp: true}),
			wantErr: `trusted root "sigstore": failed to verify timestamps: threshold not met for verified signed & log entry integrated timestamps: 0 < 1`},
		{name: "expired certificate", bundle: sigstore.Sign(t, artifact, issuer, subject, provenancetest.SignOpts{NotBefore: time.Now().Add(-time.Hour)}),
			wantErr: "failed to verify leaf certificate"},
		{name: "untrusted timestamp", bundle: sigstore.Sign(t, artifact, issuer, subject, provenancetest.SignOpts{TimestampBy: rogue}),
			wantErr: `trusted root "sigstore": failed to verify timestamps: threshold not met for verified signed & log entry integrated timestamps: 0 < 1; error: unable to verify signed timestamps: error while verifying signature`},
		{name: "not a bundle", bundle: []byte(`{"mediaType": 1}`), wantErr: "unable to parse the bundle"},
		{name: "unknown field", bundle: []byte(`{"unknown": 1}`), wantErr: "unable to parse the bundle"},
		{name: "too large", bundle: make([]byte, provenance.MaxBundleSize+1), wantErr: "exceeds"},
		{name: "SLSA provenance statement", bundle: release.SignStatement(t, artifact, "https://slsa.dev/provenance/v1"), want: []string{"key:release"}},
		{name: "SBOM statement", bundle: release.SignStatement(t, artifact, "https://spdx.dev/Document"),
			wantErr: `the bundle's attestation has predicate type "https://spdx.dev/Document", not build provenance`},
		{name: "provenance of another artifact", bundle: release.SignStatement(t, modified, "https://slsa.dev/provenance/v1"),
			wantErr: `signer "release": failed to verify signature: provided artifact digest does not match any digest in statement`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := trust.Verify(digest[:], tt.bundle)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Verify() = %v, %v; want error containing %q", got, err, tt.wantErr)
				}
				if got != nil {
					t.Fatalf("Verify() returned %v with an error", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify(): %v", err)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("Verify() = %v, want %v", got, tt.want)
			}
		})
	}
	// The refusals for a signature are ErrNoSignature.
	if _, err := trust.Verify(digest[:], other.Sign(t, artifact)); !errors.Is(err, provenance.ErrNoSignature) {
		t.Fatalf("untrusted key: %v, want ErrNoSignature", err)
	}
}

func TestNewTrustRefusals(t *testing.T) {
	k := keyOf(t, provenancetest.NewKeySigner(t))
	ca := provenancetest.NewCA(t)
	tests := []struct {
		name    string
		keys    []provenance.Key
		roots   []provenance.Root
		wantErr string
	}{
		{name: "bad name", keys: []provenance.Key{{Name: "a:b", DER: k}}, wantErr: `name "a:b" must be`},
		{name: "twice", keys: []provenance.Key{{Name: "a", DER: k}, {Name: "a", DER: k}}, wantErr: `signer "a" is listed twice`},
		{name: "bad key", keys: []provenance.Key{{Name: "a", DER: []byte("x")}}, wantErr: "unable to parse the public key"},
		{name: "bad root", roots: []provenance.Root{{Name: "r", JSON: []byte("{}"), Issuers: []string{issuer}}}, wantErr: `trusted root "r": unable to parse the trusted root`},
		{name: "no issuers", roots: []provenance.Root{{Name: "r", JSON: ca.TrustedRootJSON}}, wantErr: "1 to 32 issuers are required"},
		{name: "issuer not a URL", roots: []provenance.Root{{Name: "r", JSON: ca.TrustedRootJSON, Issuers: []string{"issuer"}}}, wantErr: "must be an https:// URL"},
		{name: "ambiguous issuers", roots: []provenance.Root{
			{Name: "r", JSON: ca.TrustedRootJSON, Issuers: []string{"https://a.test"}},
			{Name: "s", JSON: ca.TrustedRootJSON, Issuers: []string{"https://a.test/auth"}},
		}, wantErr: "make signed:identity selectors ambiguous"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := provenance.NewTrust(tt.keys, tt.roots)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("NewTrust() = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestSplitIdentity(t *testing.T) {
	issuers := []string{"https://oauth2.sigstore.dev/auth", "https://token.actions.githubusercontent.com"}
	iss, sub, err := provenance.SplitIdentity("https://oauth2.sigstore.dev/auth/alice@example.com", issuers)
	if err != nil || iss != issuers[0] || sub != "alice@example.com" {
		t.Fatalf("SplitIdentity() = %q, %q, %v", iss, sub, err)
	}
	if _, _, err := provenance.SplitIdentity("https://oauth2.sigstore.dev/alice@example.com", issuers); err == nil {
		t.Fatal("SplitIdentity accepted an undeclared issuer")
	}
	if _, _, err := provenance.SplitIdentity("https://oauth2.sigstore.dev/auth/", issuers); err == nil {
		t.Fatal("SplitIdentity accepted an empty subject")
	}
}
