package issue_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/keybroker/keybroker/broker/issue"
)

func newSPIFFE(t *testing.T) (*issue.SPIFFE, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "spiffe")
	s, err := issue.LoadOrCreateSPIFFE(dir, "example.org", issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	return s, dir
}

func TestSPIFFEAuthorityPersists(t *testing.T) {
	s, dir := newSPIFFE(t)
	again, err := issue.LoadOrCreateSPIFFE(dir, "example.org", issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := s.BundleJWKS()
	b, _ := again.BundleJWKS()
	if string(a) != string(b) {
		t.Error("reloading the authority changed its bundle")
	}
	if fi, err := os.Stat(filepath.Join(dir, issue.JWTKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("JWT key mode = %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	if _, err := issue.LoadOrCreateSPIFFE(dir, "other.org", issue.CAOpts{}); err == nil || !strings.Contains(err.Error(), "is not for trust domain other.org") {
		t.Errorf("loading the authority for another trust domain: %v", err)
	}
	if _, err := issue.LoadOrCreateSPIFFE(t.TempDir(), "spiffe://bad domain", issue.CAOpts{}); err == nil || !strings.Contains(err.Error(), "invalid trust domain") {
		t.Errorf("bad trust domain: %v", err)
	}
}

func TestIssueX509SVIDVerifiesWithTheBundle(t *testing.T) {
	s, _ := newSPIFFE(t)
	id := spiffeid.RequireFromString("spiffe://example.org/node/abc")
	svid, err := s.IssueX509SVID(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := x509svid.Verify(svid.Chain, s.Bundle())
	if err != nil || got != id {
		t.Fatalf("x509svid.Verify = %v, %v; want %v", got, err, id)
	}
	parsed, err := x509svid.Parse(issue.CertificatesPEM(svid.Chain), svid.KeyPEM)
	if err != nil || parsed.ID != id {
		t.Fatalf("the SVID and its key do not parse as an X.509-SVID: %v", err)
	}
	if time.Until(svid.NotAfter) > time.Hour || time.Until(svid.NotAfter) < 59*time.Minute {
		t.Errorf("NotAfter = %v, want about an hour from now", svid.NotAfter)
	}
	// The bundle round-trips through its JWKS form.
	jwks, err := s.BundleJWKS()
	if err != nil {
		t.Fatal(err)
	}
	b, err := spiffebundle.Parse(s.TrustDomain(), jwks)
	if err != nil || len(b.X509Authorities()) != 1 || len(b.JWTAuthorities()) != 1 {
		t.Fatalf("bundle = %v, %v", b, err)
	}
}

func csrFor(t *testing.T, uris ...string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{}
	for _, u := range uris {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestSignX509SVID(t *testing.T) {
	s, _ := newSPIFFE(t)
	id := spiffeid.RequireFromString("spiffe://example.org/web")
	good := csrFor(t, id.String())
	tampered := append([]byte(nil), good...)
	tampered[len(tampered)-1] ^= 1
	withDNS := func() []byte {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}, DNSNames: []string{"evil.example"}}, key)
		return der
	}()
	tests := []struct {
		name    string
		csr     []byte
		id      spiffeid.ID
		ttl     time.Duration
		wantErr string
	}{
		{name: "good", csr: good, id: id, ttl: time.Hour},
		{name: "CSR for another ID", csr: csrFor(t, "spiffe://example.org/db"), id: id, ttl: time.Hour, wantErr: "csr must name exactly spiffe://example.org/web and nothing else"},
		{name: "two IDs", csr: csrFor(t, id.String(), "spiffe://example.org/db"), id: id, ttl: time.Hour, wantErr: "nothing else"},
		{name: "extra DNS name", csr: withDNS, id: id, ttl: time.Hour, wantErr: "nothing else"},
		{name: "bad signature", csr: tampered, id: id, ttl: time.Hour, wantErr: "csr"},
		{name: "other trust domain", csr: csrFor(t, "spiffe://other.org/web"), id: spiffeid.RequireFromString("spiffe://other.org/web"), ttl: time.Hour, wantErr: "is not in trust domain example.org"},
		{name: "garbage", csr: []byte("garbage"), id: id, ttl: time.Hour, wantErr: "unable to parse csr"},
		{name: "oversized", csr: make([]byte, issue.MaxCSRSize+1), id: id, ttl: time.Hour, wantErr: "csr must be between 1 and 4096 bytes"},
		{name: "ttl too long", csr: good, id: id, ttl: issue.MaxSVIDTTL + time.Second, wantErr: "svid ttl must be between"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svid, err := s.SignX509SVID(tc.csr, tc.id, tc.ttl)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("SignX509SVID = %v; want error %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got, _, err := x509svid.Verify(svid.Chain, s.Bundle()); err != nil || got != tc.id {
				t.Fatalf("x509svid.Verify = %v, %v", got, err)
			}
		})
	}
}

func TestIssueJWTSVID(t *testing.T) {
	s, _ := newSPIFFE(t)
	id := spiffeid.RequireFromString("spiffe://example.org/web")
	token, exp, err := s.IssueJWTSVID(id, []string{"db"}, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := jwtsvid.ParseAndValidate(token, s.Bundle(), []string{"db"})
	if err != nil || svid.ID != id || !svid.Expiry.Equal(exp.Truncate(time.Second)) {
		t.Fatalf("ParseAndValidate = %+v, %v", svid, err)
	}
	if _, err := jwtsvid.ParseAndValidate(token, s.Bundle(), []string{"other"}); err == nil {
		t.Error("a JWT-SVID validated for another audience")
	}
	other, _ := newSPIFFE(t)
	if _, err := jwtsvid.ParseAndValidate(token, other.Bundle(), []string{"db"}); err == nil {
		t.Error("a JWT-SVID validated with another trust domain authority's bundle")
	}
	for _, tc := range []struct {
		name     string
		audience []string
		wantErr  string
	}{
		{"no audience", nil, "audience is required"},
		{"too many", make([]string, issue.MaxAudiences+1), "at most 8 audiences"},
		{"empty audience", []string{""}, "each audience must be 1 to 256 bytes"},
	} {
		if _, _, err := s.IssueJWTSVID(id, tc.audience, time.Minute); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: %v; want %q", tc.name, err, tc.wantErr)
		}
	}
}

// Once its CA has expired, the authority issues no X509-SVID (for a key it
// makes or one the caller holds) rather than certificates that are already
// invalid.
func TestX509SVIDRefusedAfterCAExpiry(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now }
	s, err := issue.LoadOrCreateSPIFFE(t.TempDir(), "example.org", issue.CAOpts{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://example.org/w")
	if _, err := s.IssueX509SVID(id, time.Hour); err != nil {
		t.Fatalf("before expiry: %v", err)
	}
	now = s.Bundle().X509Authorities()[0].NotAfter.Add(time.Second)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for name, issueSVID := range map[string]func() (*issue.X509SVID, error){
		"fresh key": func() (*issue.X509SVID, error) { return s.IssueX509SVID(id, time.Hour) },
		"held key":  func() (*issue.X509SVID, error) { return s.IssueX509SVIDForKey(id, key.Public(), time.Hour) },
	} {
		svid, err := issueSVID()
		if svid != nil || err == nil || !strings.Contains(err.Error(), "ca certificate expired at") {
			t.Errorf("%s after the CA's expiry = %v, %v; want nothing and an expiry error", name, svid, err)
		}
	}
}
