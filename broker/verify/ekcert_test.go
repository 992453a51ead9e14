package verify_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify"
)

// verifiedFor completes a verification of node with a software quote from
// ak, so a test can read what only a *Verified exposes (EKCA, EKCert).
func verifiedFor(tb testing.TB, node *verify.NodeIdentity, ak softAK) *verify.Verified {
	tb.Helper()
	v, err := verify.Quotes(node, testNonceHash(), []verify.Quote{newQuoteSpec(tpm2.TPMAlgSHA256).quote(tb, ak)}, verify.Opts{})
	if err != nil {
		tb.Fatalf("verify.Quotes: %v", err)
	}
	return v
}

// ekPKI is a vendor root, an intermediate, and a second, unrelated vendor.
type ekPKI struct {
	root, inter, otherRoot, otherInter *testCA
}

func newEKPKI(tb testing.TB) ekPKI {
	root := newTestCA(tb, "Vendor EK Root", nil)
	other := newTestCA(tb, "Other EK Root", nil)
	return ekPKI{
		root: root, inter: newTestCA(tb, "Vendor EK Intermediate", root),
		otherRoot: other, otherInter: newTestCA(tb, "Other EK Intermediate", other),
	}
}

func TestNodeEKCertificate(t *testing.T) {
	pki := newEKPKI(t)
	ekKey := &ekRSAKey().PublicKey
	ekPub := tpm2.Marshal(ekPublicRSA(ekKey))
	ekHash := mustEKHash(t, ekKey)
	ak := defaultAK()

	vendor := verify.CA{Name: "vendor", Roots: pki.root.pool()}
	vendorWithInter := verify.CA{Name: "vendor", Roots: pki.root.pool(), Intermediates: pki.inter.pool()}
	other := verify.CA{Name: "other", Roots: pki.otherRoot.pool(), Intermediates: pki.otherInter.pool()}

	leaf := pki.inter.issueEK(t, ekKey, ekCertOpts{})
	notAfter := time.Now().Add(30 * 24 * time.Hour)
	shortLived := pki.inter.issueEK(t, ekKey, ekCertOpts{notAfter: notAfter})
	notYet := pki.inter.issueEK(t, ekKey, ekCertOpts{notBefore: time.Now().Add(24 * time.Hour)})
	forOtherKey := pki.inter.issueEK(t, &otherRSAKey().PublicKey, ekCertOpts{})
	byOther := pki.otherInter.issueEK(t, ekKey, ekCertOpts{})
	byRoot := pki.root.issueEK(t, ekKey, ekCertOpts{})
	// An attacker's own CA, presented as an intermediate, must not become a
	// trust anchor.
	rogue := newTestCA(t, "Vendor EK Root", nil)
	byRogue := rogue.issueEK(t, ekKey, ekCertOpts{})

	const (
		notChained = "ek_certificate does not chain to a trusted EK CA"
		mismatch   = "ek_certificate does not certify ek_public"
	)
	tests := []struct {
		name      string
		cert      []byte
		inter     [][]byte
		trust     verify.Trust
		wantCheck verify.Check
		wantErr   string
		wantCA    string // EKCA() of the result; "" when trusted by hash
	}{
		{name: "intermediate supplied by the request", cert: leaf, inter: [][]byte{pki.inter.der},
			trust: verify.Trust{CAs: []verify.CA{vendor}}, wantCA: "vendor"},
		{name: "intermediate configured in the CA", cert: leaf,
			trust: verify.Trust{CAs: []verify.CA{vendorWithInter}}, wantCA: "vendor"},
		{name: "intermediate supplied twice", cert: leaf, inter: [][]byte{pki.inter.der},
			trust: verify.Trust{CAs: []verify.CA{vendorWithInter}}, wantCA: "vendor"},
		{name: "issued by the root", cert: byRoot, trust: verify.Trust{CAs: []verify.CA{vendor}}, wantCA: "vendor"},
		{name: "second CA in the list", cert: leaf,
			trust: verify.Trust{CAs: []verify.CA{other, vendorWithInter}}, wantCA: "vendor"},
		{name: "other vendor's CA only", cert: byOther, trust: verify.Trust{CAs: []verify.CA{vendorWithInter}},
			wantCheck: verify.CheckEKTrust, wantErr: notChained},
		{name: "another CA", cert: leaf, inter: [][]byte{pki.inter.der}, trust: verify.Trust{CAs: []verify.CA{other}},
			wantCheck: verify.CheckEKTrust, wantErr: notChained},
		{name: "no CA and no hash", cert: leaf, inter: [][]byte{pki.inter.der},
			wantCheck: verify.CheckEKTrust, wantErr: notChained},
		{name: "intermediate missing", cert: leaf, trust: verify.Trust{CAs: []verify.CA{vendor}},
			wantCheck: verify.CheckEKTrust, wantErr: notChained},
		{name: "another CA's configured intermediates do not help", cert: leaf,
			trust: verify.Trust{CAs: []verify.CA{
				{Name: "other", Roots: pki.otherRoot.pool(), Intermediates: pki.inter.pool()}, vendor,
			}},
			wantCheck: verify.CheckEKTrust, wantErr: notChained},
		{name: "presented rogue root is not a trust anchor", cert: byRogue, inter: [][]byte{rogue.der},
			trust: verify.Trust{CAs: []verify.CA{vendor}}, wantCheck: verify.CheckEKTrust, wantErr: notChained},
		{name: "valid at Trust.Now", cert: shortLived, inter: [][]byte{pki.inter.der},
			trust: verify.Trust{CAs: []verify.CA{vendor}, Now: notAfter.Add(-time.Hour)}, wantCA: "vendor"},
		{name: "expired at Trust.Now", cert: shortLived, inter: [][]byte{pki.inter.der},
			trust:     verify.Trust{CAs: []verify.CA{vendor}, Now: notAfter.Add(time.Hour)},
			wantCheck: verify.CheckEKTrust, wantErr: notChained},
		{name: "not yet valid", cert: notYet, inter: [][]byte{pki.inter.der},
			trust: verify.Trust{CAs: []verify.CA{vendor}}, wantCheck: verify.CheckEKTrust, wantErr: notChained},
		{name: "expired but EK hash allowlisted", cert: shortLived, inter: [][]byte{pki.inter.der},
			trust: verify.Trust{CAs: []verify.CA{vendor}, EKHashes: []string{ekHash}, Now: notAfter.Add(time.Hour)}},
		{name: "chain fails but EK hash allowlisted", cert: byOther,
			trust: verify.Trust{CAs: []verify.CA{vendor}, EKHashes: []string{ekHash}}},
		{name: "certificate without CAs, EK hash allowlisted", cert: leaf, trust: verify.Trust{EKHashes: []string{ekHash}}},
		{name: "certificate for another key", cert: forOtherKey, inter: [][]byte{pki.inter.der},
			trust: verify.Trust{CAs: []verify.CA{vendor}}, wantCheck: verify.CheckEKTrust, wantErr: mismatch},
		{name: "certificate for another key, EK hash allowlisted", cert: forOtherKey, inter: [][]byte{pki.inter.der},
			trust:     verify.Trust{CAs: []verify.CA{vendor}, EKHashes: []string{ekHash}},
			wantCheck: verify.CheckEKTrust, wantErr: mismatch},
		{name: "garbage intermediate", cert: leaf, inter: [][]byte{[]byte("not DER")},
			trust:     verify.Trust{CAs: []verify.CA{vendor}, EKHashes: []string{ekHash}},
			wantCheck: verify.CheckInput, wantErr: "an ek_intermediates entry is not an X.509 certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := verify.Node(ekPub, tt.cert, tt.inter, ak.publicBytes(), verify.Opts{Trust: tt.trust})
			assertCheck(t, err, tt.wantCheck, tt.wantErr)
			if err != nil {
				return
			}
			if got := n.EKHash(); got != ekHash {
				t.Errorf("EKHash() = %s, want %s", got, ekHash)
			}
			v := verifiedFor(t, n, ak)
			if got := v.EKCA(); got != tt.wantCA {
				t.Errorf("EKCA() = %q, want %q", got, tt.wantCA)
			}
			if (v.EKCert() != nil) != (tt.wantCA != "") {
				t.Errorf("EKCert() = %+v: want facts exactly when a CA verified the certificate", v.EKCert())
			}
		})
	}
}

// A refusal names every CA it tried in the cause (for operator logs), never in
// the message (which the node sees).
func TestNodeEKCertificateErrorCause(t *testing.T) {
	pki := newEKPKI(t)
	ekKey := &ekRSAKey().PublicKey
	cert := pki.inter.issueEK(t, ekKey, ekCertOpts{})
	trust := verify.Trust{CAs: []verify.CA{
		{Name: "other", Roots: pki.otherRoot.pool()},
		{Name: "vendor-without-intermediate", Roots: pki.root.pool()},
	}}
	_, err := verify.Node(tpm2.Marshal(ekPublicRSA(ekKey)), cert, nil, defaultAK().publicBytes(), verify.Opts{Trust: trust})
	assertCheck(t, err, verify.CheckEKTrust, "ek_certificate does not chain to a trusted EK CA")
	for _, name := range []string{"other: ", "vendor-without-intermediate: "} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name CA %q", err, name)
		}
	}
	var ce *verify.CheckError
	if !errors.As(err, &ce) || strings.Contains(ce.Msg, "vendor") || strings.Contains(ce.Msg, "other") || ce.Err == nil {
		t.Errorf("CheckError = %+v: want a message without CA names and a cause", ce)
	}
}

func TestEKCertFacts(t *testing.T) {
	pki := newEKPKI(t)
	ekKey := &ekRSAKey().PublicKey
	notAfter := time.Now().Add(48 * time.Hour).Truncate(time.Second).UTC()
	subject := pkix.Name{CommonName: "EK of node-7"}
	cert := pki.inter.issueEK(t, ekKey, ekCertOpts{notAfter: notAfter, subject: subject})
	ak := defaultAK()
	n, err := verify.Node(tpm2.Marshal(ekPublicRSA(ekKey)), cert, [][]byte{pki.inter.der}, ak.publicBytes(), verify.Opts{Trust: verify.Trust{CAs: []verify.CA{{Name: "vendor", Roots: pki.root.pool()}}}})

	if err != nil {
		t.Fatal(err)
	}
	v := verifiedFor(t, n, ak)
	want := verify.EKCert{
		Manufacturer: testManufacturer, Model: testModel, Version: testVersion,
		Subject: "CN=EK of node-7", Issuer: pki.inter.cert.Subject.String(), NotAfter: notAfter,
	}
	got := v.EKCert()
	if got == nil || *got != want {
		t.Fatalf("EKCert() = %+v, want %+v", got, want)
	}
	got.Manufacturer = "changed"
	if v.EKCert().Manufacturer != testManufacturer {
		t.Error("changing the EKCert returned changed the Verified")
	}
}

// TestEKCertSAN covers the TPM subject alternative name: TCG EK certificates
// have an empty subject, so their SAN is critical and holds only a
// directoryName that crypto/x509 does not understand.
func TestEKCertSAN(t *testing.T) {
	pki := newEKPKI(t)
	ekKey := &ekRSAKey().PublicKey
	ekPub := tpm2.Marshal(ekPublicRSA(ekKey))
	ak := defaultAK()
	trust := verify.Trust{CAs: []verify.CA{{Name: "vendor", Roots: pki.root.pool(), Intermediates: pki.inter.pool()}}}

	onlyCN := sanOf(t, directoryName(t, pkix.RDNSequence{{{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "tpm"}}}))
	modelOnly := sanOf(t, directoryName(t, pkix.RDNSequence{{{Type: oidTPMModel, Value: "m"}}}))
	separateRDNs := sanOf(t, directoryName(t, pkix.RDNSequence{
		{{Type: oidTPMManufacturer, Value: "id:00001014"}},
		{{Type: oidTPMModel, Value: "m"}},
		{{Type: oidTPMVersion, Value: "v"}},
	}))
	dnsName := asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 2, Bytes: []byte("node.example")}
	withDNS := sanOf(t, directoryName(t, pkix.RDNSequence{{{Type: oidTPMManufacturer, Value: "id:00001014"}}}), dnsName)
	// crypto/x509 skips directoryName contents, so only verify sees that
	// this one holds an INTEGER instead of a Name.
	badDirName := sanOf(t, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: []byte{0x02, 0x01, 0x05}})

	tests := []struct {
		name             string
		opts             ekCertOpts
		wantCheck        verify.Check
		wantErr          string
		wantManufacturer string
		wantModel        string
	}{
		{name: "critical TPM SAN", wantManufacturer: testManufacturer, wantModel: testModel},
		{name: "non-critical TPM SAN", opts: ekCertOpts{sanNotCritical: true},
			wantManufacturer: testManufacturer, wantModel: testModel},
		{name: "attributes in separate RDNs", opts: ekCertOpts{san: separateRDNs},
			wantManufacturer: "id:00001014", wantModel: "m"},
		{name: "TPM SAN next to a DNS name", opts: ekCertOpts{san: withDNS}, wantManufacturer: "id:00001014"},
		{name: "no SAN", opts: ekCertOpts{noSAN: true, subject: pkix.Name{CommonName: "ek"}}},
		{name: "critical SAN without TPM attributes", opts: ekCertOpts{san: onlyCN},
			wantCheck: verify.CheckEKTrust, wantErr: "ek_certificate does not chain to a trusted EK CA"},
		{name: "critical SAN with a model but no manufacturer", opts: ekCertOpts{san: modelOnly},
			wantCheck: verify.CheckEKTrust, wantErr: "ek_certificate does not chain to a trusted EK CA"},
		{name: "malformed directoryName", opts: ekCertOpts{san: badDirName},
			wantCheck: verify.CheckInput, wantErr: "ek_certificate has a malformed subject alternative name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert := pki.inter.issueEK(t, ekKey, tt.opts)
			n, err := verify.Node(ekPub, cert, nil, ak.publicBytes(), verify.Opts{Trust: trust})
			assertCheck(t, err, tt.wantCheck, tt.wantErr)
			if err != nil {
				return
			}
			got := verifiedFor(t, n, ak).EKCert()
			if got.Manufacturer != tt.wantManufacturer || got.Model != tt.wantModel {
				t.Errorf("EKCert() = %+v, want manufacturer %q and model %q", got, tt.wantManufacturer, tt.wantModel)
			}
		})
	}
}

// TestEKCertSANWithOtherNames pins a documented choice: once verify finds
// a TPM manufacturer in a critical SAN it marks the whole SAN handled, even
// if the SAN also holds names that neither verify nor crypto/x509 reads (here
// an otherName). Nothing downstream uses those names.
func TestEKCertSANWithOtherNames(t *testing.T) {
	pki := newEKPKI(t)
	ekKey := &ekRSAKey().PublicKey
	otherName := asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true,
		Bytes: mustMarshal(t, asn1.ObjectIdentifier{1, 2, 3, 4})}
	san := sanOf(t, directoryName(t, pkix.RDNSequence{{{Type: oidTPMManufacturer, Value: "id:00001014"}}}), otherName)
	cert := pki.inter.issueEK(t, ekKey, ekCertOpts{san: san})
	_, err := verify.Node(tpm2.Marshal(ekPublicRSA(ekKey)), cert, nil, defaultAK().publicBytes(), verify.Opts{Trust: verify.Trust{CAs: []verify.CA{{Name: "vendor", Roots: pki.root.pool(), Intermediates: pki.inter.pool()}}}})

	assertCheck(t, err, "", "")
}

func mustMarshal(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func rsaEKFromCert(k crypto.PublicKey) tpm2.TPMTPublic { return ekPublicRSA(k.(*rsa.PublicKey)) }

func eccEKFromCert(k crypto.PublicKey) tpm2.TPMTPublic { return ekPublicECC(k.(*ecdsa.PublicKey)) }

func readDER(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func readPEM(tb testing.TB, name string) []byte {
	tb.Helper()
	block, _ := pem.Decode(readDER(tb, name))
	if block == nil || block.Type != "CERTIFICATE" {
		tb.Fatalf("%s holds no PEM certificate", name)
	}
	return block.Bytes
}

func mustParse(tb testing.TB, der []byte) *x509.Certificate {
	tb.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// TestCAWithoutRoots checks that a CA whose Roots pool is nil trusts
// nothing. crypto/x509 falls back to the system roots when
// VerifyOptions.Roots is nil, and anyone can get a certificate from a public
// CA for a key they hold (any TLS certificate), which would then pass as an
// EK certificate. The test installs its own "public" root as the system pool
// to prove that pool is not consulted. The system pool is loaded once per
// process, so this must stay the only test that could load it.
func TestCAWithoutRoots(t *testing.T) {
	public := newTestCA(t, "Public Web CA", nil)
	dir := t.TempDir()
	file := filepath.Join(dir, "roots.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: public.der}), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SSL_CERT_FILE", file)
	t.Setenv("SSL_CERT_DIR", dir)

	ekKey := &ekRSAKey().PublicKey
	cert := public.issueEK(t, ekKey, ekCertOpts{noSAN: true, subject: pkix.Name{CommonName: "www.example.com"}})
	_, err := verify.Node(tpm2.Marshal(ekPublicRSA(ekKey)), cert, nil, defaultAK().publicBytes(), verify.Opts{Trust: verify.Trust{CAs: []verify.CA{{Name: "misconfigured"}}}})

	assertCheck(t, err, verify.CheckEKTrust, "ek_certificate does not chain to a trusted EK CA")
	if !strings.Contains(err.Error(), "misconfigured: no roots configured") {
		t.Errorf("error %q does not say the CA has no roots", err)
	}
}
