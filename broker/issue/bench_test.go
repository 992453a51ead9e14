package issue_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/keybroker/keybroker/broker/issue"
)

// BenchmarkIssueTLS times one release's TLS certificate for a key the node
// holds (the tpm_resident path): the certificate alone, without key
// generation, so the encoding and parsing around the signature show.
func BenchmarkIssueTLS(b *testing.B) {
	ca, err := issue.LoadOrCreateCA(filepath.Join(b.TempDir(), "ca"), issue.CAOpts{})
	if err != nil {
		b.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	t := issue.TLSTemplate{
		CommonName:  "node-17",
		DNSNames:    []string{"node-17.example.internal", "node-17"},
		IPAddresses: []net.IP{net.ParseIP("10.0.0.17")},
		TTL:         24 * time.Hour,
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ca.IssueTLSForKey(t, key.Public()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkIssueX509SVID times one X509-SVID for a key the node holds.
func BenchmarkIssueX509SVID(b *testing.B) {
	s, err := issue.LoadOrCreateSPIFFE(filepath.Join(b.TempDir(), "spiffe"), "example.org", issue.CAOpts{})
	if err != nil {
		b.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://example.org/node/17")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.IssueX509SVIDForKey(id, key.Public(), time.Hour); err != nil {
			b.Fatal(err)
		}
	}
}
