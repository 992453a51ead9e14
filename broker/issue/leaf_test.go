package issue

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"io"
	"math/big"
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// testCAWithKey is a self-signed CA whose key is key, made as createCA
// makes the broker's.
func testCAWithKey(t testing.TB, key crypto.Signer, subject pkix.Name) *CA {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               subject,
		NotBefore:             t0.Add(-time.Hour),
		NotAfter:              t0.AddDate(caValidityYears, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{cert: cert, signer: key, bundle: []*x509.Certificate{cert}, now: fixedClock(t0)}
}

// newKey generates a key: "p-256", "p-384", "p-521" or "rsa" (2048 bits).
func newKey(t testing.TB, kind string) crypto.Signer {
	t.Helper()
	var k crypto.Signer
	var err error
	switch kind {
	case "p-256":
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "p-384":
		k, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "p-521":
		k, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	case "rsa":
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		t.Fatalf("no key kind %q", kind)
	}
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// wantTBS is the TBSCertificate x509.CreateCertificate makes of l.
func wantTBS(t *testing.T, ca *CA, l *leafTemplate, pub crypto.PublicKey) []byte {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, l.x509(), ca.cert, pub, ca.signer)
	if err != nil {
		t.Fatalf("x509.CreateCertificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert.RawTBSCertificate
}

// TestLeafTBSMatchesX509 compares, byte for byte, the TBSCertificate
// encodeTBS makes with x509.CreateCertificate's for the same template,
// serial, times and keys: every certificate the release path issues must
// be the one Go would have made.
func TestLeafTBSMatchesX509(t *testing.T) {
	p256 := newKey(t, "p-256")
	p384 := newKey(t, "p-384")
	rsa2048 := newKey(t, "rsa")

	withSKID := testCAWithKey(t, newKey(t, "p-256"), pkix.Name{CommonName: DefaultCACommonName})
	if len(withSKID.cert.SubjectKeyId) == 0 {
		t.Fatal("the CA certificate has no subject key id")
	}
	noSKIDCert := *withSKID.cert
	noSKIDCert.SubjectKeyId = nil
	withoutSKID := &CA{cert: &noSKIDCert, signer: withSKID.signer, now: withSKID.now}
	utf8CA := testCAWithKey(t, withSKID.signer, pkix.Name{CommonName: "Zertifizierungsstelle für Knoten", Organization: []string{"Beispiel & Söhne"}})

	serial := big.NewInt(0x0123456789abcdef)
	highBit := new(big.Int).Lsh(big.NewInt(1), 127)                                    // encodes with a leading zero byte
	maxSerial := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 128), big.NewInt(1)) // newSerial's largest
	day := 24 * time.Hour
	server, client := x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth
	both := []x509.ExtKeyUsage{server, client}
	svidUsage := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement
	tlsLeaf := func(cn string, org []string, dns []string, ips []net.IP, eku ...x509.ExtKeyUsage) *leafTemplate {
		return &leafTemplate{serial: serial, commonName: cn, organization: org, dnsNames: dns, ipAddresses: ips,
			notBefore: t0.Add(-backdate), notAfter: t0.Add(day), keyUsage: x509.KeyUsageDigitalSignature, extKeyUsage: eku}
	}
	svid := func(id string) *leafTemplate {
		return &leafTemplate{serial: maxSerial, serialNumber: maxSerial.String(), uris: []*url.URL{spiffeid.RequireFromString(id).URL()},
			notBefore: t0.Add(-backdate), notAfter: t0.Add(time.Hour), keyUsage: svidUsage, extKeyUsage: both}
	}
	with := func(l *leafTemplate, f func(*leafTemplate)) *leafTemplate { f(l); return l }
	manyDNS := make([]string, 12)
	for i := range manyDNS {
		manyDNS[i] = strings.Repeat("n", 40) + ".node.example.internal"
	}
	long := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 61)

	tests := []struct {
		name string
		ca   *CA
		leaf *leafTemplate
		pub  crypto.PublicKey
	}{
		{name: "server, one dns name", ca: withSKID, leaf: tlsLeaf("web", nil, []string{"web.example"}, nil, server), pub: p256.Public()},
		{name: "client only", ca: withSKID, leaf: tlsLeaf("node-1", nil, nil, nil, client), pub: p256.Public()},
		{name: "both usages", ca: withSKID, leaf: tlsLeaf("svc", nil, []string{"svc"}, nil, server, client), pub: p256.Public()},
		{name: "kubelet: organization and client", ca: withSKID, leaf: tlsLeaf("system:node:n1", []string{"system:nodes"}, nil, nil, client), pub: p256.Public()},
		{name: "several organizations in set order", ca: withSKID, leaf: tlsLeaf("n", []string{"zeta", "alpha", "a much longer one", "ä", "b"}, nil, nil, client), pub: p256.Public()},
		{name: "empty organization value", ca: withSKID, leaf: tlsLeaf("n", []string{""}, nil, nil, client), pub: p256.Public()},
		{name: "wildcard and several dns names", ca: withSKID, leaf: tlsLeaf("web", nil, []string{"web.example", "*.web.example", "web"}, nil, server, client), pub: p256.Public()},
		{name: "ipv4 in 16 and 4 bytes, ipv6, mapped", ca: withSKID, leaf: tlsLeaf("", nil, nil, []net.IP{net.ParseIP("10.0.0.1"), net.IPv4(192, 0, 2, 7).To4(), net.ParseIP("2001:db8::1"), net.ParseIP("::ffff:198.51.100.2")}, server, client), pub: p256.Public()},
		{name: "no subject: critical subject alt names", ca: withSKID, leaf: tlsLeaf("", nil, []string{"only.example"}, []net.IP{net.ParseIP("::1")}, server), pub: p256.Public()},
		{name: "long names", ca: withSKID, leaf: tlsLeaf(strings.Repeat("c", 64), []string{strings.Repeat("o", 200)}, append([]string{long}, manyDNS...), nil, server), pub: p256.Public()},
		{name: "utf8 common name", ca: withSKID, leaf: tlsLeaf("nœud-1", nil, []string{"n1.example"}, nil, server), pub: p256.Public()},
		{name: "asterisk and ampersand are not printable", ca: withSKID, leaf: tlsLeaf("*.example", []string{"A&B"}, nil, nil, server), pub: p256.Public()},
		{name: "printable punctuation", ca: withSKID, leaf: tlsLeaf("a'(b)+,-./:=? z", nil, nil, nil, server), pub: p256.Public()},
		{name: "subject equals the ca's: no authority key id", ca: withSKID, leaf: tlsLeaf(DefaultCACommonName, nil, []string{"ca.example"}, nil, server), pub: p256.Public()},
		{name: "ca without subject key id", ca: withoutSKID, leaf: tlsLeaf("web", nil, []string{"web.example"}, nil, server), pub: p256.Public()},
		{name: "ca with a utf8 subject", ca: utf8CA, leaf: tlsLeaf("web", nil, []string{"web.example"}, nil, server), pub: p256.Public()},
		{name: "validity crossing 2050", ca: withSKID, leaf: with(tlsLeaf("web", nil, nil, nil, server), func(l *leafTemplate) {
			l.notBefore, l.notAfter = time.Date(2049, 12, 31, 23, 59, 59, 0, time.UTC), time.Date(2050, 1, 1, 0, 0, 0, 0, time.UTC)
		}), pub: p256.Public()},
		{name: "validity in 2100, sub-second, not utc", ca: withSKID, leaf: with(tlsLeaf("web", nil, nil, nil, server), func(l *leafTemplate) {
			l.notBefore = time.Date(2099, 6, 1, 1, 2, 3, 999_999_999, time.FixedZone("x", 5*3600+1800))
			l.notAfter = time.Date(2100, 2, 3, 4, 5, 6, 0, time.UTC)
		}), pub: p256.Public()},
		{name: "validity from 1999", ca: withSKID, leaf: with(tlsLeaf("web", nil, nil, nil, server), func(l *leafTemplate) {
			l.notBefore, l.notAfter = time.Date(1999, 12, 31, 23, 0, 0, 0, time.UTC), time.Date(2000, 1, 1, 1, 0, 0, 0, time.UTC)
		}), pub: p256.Public()},
		{name: "serial with the high bit set", ca: withSKID, leaf: with(tlsLeaf("web", nil, nil, nil, server), func(l *leafTemplate) { l.serial = highBit }), pub: p256.Public()},
		{name: "serial one", ca: withSKID, leaf: with(tlsLeaf("web", nil, nil, nil, server), func(l *leafTemplate) { l.serial = big.NewInt(1) }), pub: p256.Public()},
		{name: "p-384 subject key", ca: withSKID, leaf: tlsLeaf("web", nil, []string{"web.example"}, nil, server), pub: p384.Public()},
		{name: "rsa subject key", ca: withSKID, leaf: tlsLeaf("web", nil, []string{"web.example"}, nil, server), pub: rsa2048.Public()},
		{name: "svid", ca: withSKID, leaf: svid("spiffe://example.org/node/abc"), pub: p256.Public()},
		{name: "svid with a long path", ca: withSKID, leaf: svid("spiffe://example.org/" + strings.Repeat("segment/", 40) + "end"), pub: p256.Public()},
		{name: "svid for an rsa key", ca: withSKID, leaf: svid("spiffe://example.org/workload"), pub: rsa2048.Public()},
		{name: "svid from a ca without subject key id", ca: withoutSKID, leaf: svid("spiffe://example.org/w"), pub: p384.Public()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := tt.leaf.encodeTBS(tt.ca.cert, tt.pub)
			if !ok {
				t.Fatal("encodeTBS left the template to x509.CreateCertificate")
			}
			if want := wantTBS(t, tt.ca, tt.leaf, tt.pub); !bytes.Equal(got, want) {
				t.Errorf("TBSCertificate differs from x509.CreateCertificate's\n got %s\nwant %s", hex.EncodeToString(got), hex.EncodeToString(want))
			}
		})
	}
}

// TestLeafFallback: what encodeTBS does not encode goes to
// x509.CreateCertificate, which issues it (or refuses it) as before.
func TestLeafFallback(t *testing.T) {
	ca := testCAWithKey(t, newKey(t, "p-256"), pkix.Name{CommonName: "ca"})
	p521 := newKey(t, "p-521")
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p256 := newKey(t, "p-256")
	leaf := func() *leafTemplate {
		return &leafTemplate{serial: big.NewInt(7), commonName: "web", dnsNames: []string{"web.example"},
			notBefore: t0, notAfter: t0.Add(time.Hour), keyUsage: x509.KeyUsageDigitalSignature, extKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	}
	tests := []struct {
		name    string
		leaf    func(*leafTemplate)
		pub     crypto.PublicKey
		wantErr string // from x509.CreateCertificate; empty: issued
	}{
		{name: "p-521 subject key", pub: p521.Public()},
		{name: "ed25519 subject key", pub: edPub},
		{name: "another extended key usage", leaf: func(l *leafTemplate) { l.extKeyUsage = append(l.extKeyUsage, x509.ExtKeyUsageCodeSigning) }, pub: p256.Public()},
		{name: "year 10000", leaf: func(l *leafTemplate) { l.notAfter = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }, pub: p256.Public(), wantErr: "cannot represent time as GeneralizedTime"},
		{name: "common name not utf-8", leaf: func(l *leafTemplate) { l.commonName = "a\xffb" }, pub: p256.Public(), wantErr: "asn1: string not valid UTF-8"},
		{name: "organization not utf-8", leaf: func(l *leafTemplate) { l.organization = []string{"ok", "\xc3"} }, pub: p256.Public(), wantErr: "asn1: string not valid UTF-8"},
		{name: "dns name not ascii", leaf: func(l *leafTemplate) { l.dnsNames = []string{"bücher.example"} }, pub: p256.Public(), wantErr: "cannot be encoded as an IA5String"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := leaf()
			if tt.leaf != nil {
				tt.leaf(l)
			}
			if _, ok := l.encodeTBS(ca.cert, tt.pub); ok {
				t.Fatal("encodeTBS encoded a template it should leave to x509.CreateCertificate")
			}
			der, err := ca.signLeaf(l, tt.pub)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || der != nil {
					t.Fatalf("signLeaf = %d bytes, %v; want an error containing %q", len(der), err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			cert, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			if err := cert.CheckSignatureFrom(ca.cert); err != nil {
				t.Errorf("the certificate does not verify with the CA: %v", err)
			}
		})
	}
}

// TestSignLeafNonP256CA: a CA whose key is not ECDSA P-256 signs through
// x509.CreateCertificate, and its certificates verify.
func TestSignLeafNonP256CA(t *testing.T) {
	for name, key := range map[string]crypto.Signer{
		"p-384": newKey(t, "p-384"),
		"rsa":   newKey(t, "rsa"),
	} {
		t.Run(name, func(t *testing.T) {
			ca := testCAWithKey(t, key, pkix.Name{CommonName: "ca"})
			cred, err := ca.IssueTLS(TLSTemplate{CommonName: "web", DNSNames: []string{"web.example"}, TTL: time.Hour, Server: true})
			if err != nil {
				t.Fatal(err)
			}
			pool := x509.NewCertPool()
			pool.AddCert(ca.cert)
			if _, err := cred.Certificate.Verify(x509.VerifyOptions{Roots: pool, DNSName: "web.example", CurrentTime: t0}); err != nil {
				t.Errorf("Verify: %v", err)
			}
		})
	}
}

// TestSignLeafVerifies: certificates from the encoder parse, verify to the
// CA for the usages asked and no other, and SVIDs pass go-spiffe's
// x509svid.Verify, for every subject key type the release path takes.
func TestSignLeafVerifies(t *testing.T) {
	s, err := LoadOrCreateSPIFFE(t.TempDir(), "example.org", CAOpts{Now: fixedClock(t0)})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(s.ca.cert)
	keys := map[string]crypto.PublicKey{
		"p-256": newKey(t, "p-256").Public(),
		"p-384": newKey(t, "p-384").Public(),
		"rsa":   newKey(t, "rsa").Public(),
	}
	server, client := x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth
	for name, pub := range keys {
		t.Run(name, func(t *testing.T) {
			for _, tmpl := range []TLSTemplate{
				{CommonName: "web", DNSNames: []string{"web.example"}, IPAddresses: []net.IP{net.ParseIP("10.1.2.3")}, TTL: time.Hour, Server: true},
				{CommonName: "system:node:n1", Organization: []string{"system:nodes"}, TTL: time.Hour, Client: true},
			} {
				cred, err := s.ca.IssueTLSForKey(tmpl, pub)
				if err != nil {
					t.Fatal(err)
				}
				if _, ok := (&leafTemplate{serial: cred.Certificate.SerialNumber}).encodeTBS(s.ca.cert, pub); !ok {
					t.Fatal("the certificate was not encoded by encodeTBS")
				}
				want, other := server, client
				if tmpl.Client {
					want, other = client, server
				}
				if _, err := cred.Certificate.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{want}}); err != nil {
					t.Errorf("Verify for %v: %v", want, err)
				}
				if _, err := cred.Certificate.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{other}}); err == nil {
					t.Errorf("Verify for %v succeeded", other)
				}
				if !slices.Equal(cred.Certificate.Subject.Organization, tmpl.Organization) || cred.Certificate.Subject.CommonName != tmpl.CommonName {
					t.Errorf("subject = %v", cred.Certificate.Subject)
				}
				if !bytes.Equal(cred.Certificate.AuthorityKeyId, s.ca.cert.SubjectKeyId) {
					t.Errorf("AuthorityKeyId = %x, want the CA's %x", cred.Certificate.AuthorityKeyId, s.ca.cert.SubjectKeyId)
				}
			}
			id := spiffeid.RequireFromString("spiffe://example.org/node/" + name)
			svid, err := s.IssueX509SVIDForKey(id, pub, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			got, _, err := x509svid.Verify(svid.Chain, x509bundle.FromX509Authorities(s.td, s.ca.bundle), x509svid.WithTime(t0))
			if err != nil || got != id {
				t.Errorf("x509svid.Verify = %v, %v; want %v", got, err, id)
			}
			if svid.Certificate.Subject.SerialNumber != svid.Certificate.SerialNumber.String() {
				t.Errorf("subject serialNumber = %q, want the serial %s", svid.Certificate.Subject.SerialNumber, svid.Certificate.SerialNumber)
			}
		})
	}
}

// faultySigner signs with the right key over the wrong message: a
// well-formed signature that does not verify.
type faultySigner struct{ crypto.Signer }

func (f faultySigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	wrong := slices.Clone(digest)
	wrong[0] ^= 0xff
	return f.Signer.Sign(r, wrong, opts)
}

// TestSignLeafFaultySigner: a signer whose signature does not verify with
// the CA certificate issues nothing, on the encoder's path as on
// x509.CreateCertificate's.
func TestSignLeafFaultySigner(t *testing.T) {
	p256CA := testCAWithKey(t, newKey(t, "p-256"), pkix.Name{CommonName: "ca"})
	p384CA := testCAWithKey(t, newKey(t, "p-384"), pkix.Name{CommonName: "ca"})
	tests := []struct {
		name    string
		ca      *CA
		wantErr string
	}{
		{name: "encoder", ca: p256CA, wantErr: "unable to issue tls certificate: unable to sign certificate: signature returned by the ca key does not verify with the ca certificate"},
		{name: "x509.CreateCertificate", ca: p384CA, wantErr: "unable to issue tls certificate: unable to sign certificate: x509: signature returned by signer is invalid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			faulty := *tt.ca
			faulty.signer = faultySigner{tt.ca.signer}
			cred, err := faulty.IssueTLS(TLSTemplate{CommonName: "web", TTL: time.Hour})
			if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) || cred != nil {
				t.Fatalf("IssueTLS with a faulty signer = %v, %v; want nothing and %q", cred, err, tt.wantErr)
			}
			s := &SPIFFE{td: spiffeid.RequireTrustDomainFromString("example.org"), ca: &faulty}
			svid, err := s.IssueX509SVID(spiffeid.RequireFromString("spiffe://example.org/w"), time.Hour)
			if err == nil || !strings.HasPrefix(err.Error(), "unable to sign svid: ") || svid != nil {
				t.Fatalf("IssueX509SVID with a faulty signer = %v, %v; want nothing and an error", svid, err)
			}
		})
	}
}

// FuzzLeafTBS: for any subject strings, names, addresses, times and
// usages, the TBSCertificate encodeTBS makes is x509.CreateCertificate's;
// what it does not encode, it leaves to x509.CreateCertificate.
func FuzzLeafTBS(f *testing.F) {
	f.Add("web", "system:nodes", "", "web.example", []byte{10, 0, 0, 1}, "node/1", int64(1_741_064_767), int64(3600), uint8(1), uint16(x509.KeyUsageDigitalSignature), false)
	f.Add("nœud", "zeta", "alpha", "*.example", []byte(net.ParseIP("2001:db8::1")), "", int64(2_524_607_999), int64(2), uint8(3), uint16(0x1ff), false)
	f.Add("", "", "", "", []byte(nil), "a/b", int64(-631_152_000), int64(1), uint8(0), uint16(0), true)
	f.Add("Smith & Sons", "R&D", "", "", []byte{192, 0, 2, 1}, "", int64(0), int64(60), uint8(1), uint16(1), false)
	f.Add("a&b*", "", "", "x", []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, "p q/%", int64(4_102_444_800), int64(1<<40), uint8(2), uint16(0x8000), true)
	f.Add("\xff", "\xc3", "", "bücher", []byte{1, 2}, "é", int64(253_402_300_799), int64(1), uint8(7), uint16(5), false)
	ca := testCAWithKey(f, newKey(f, "p-256"), pkix.Name{CommonName: DefaultCACommonName})
	pub := newKey(f, "p-256").Public()
	f.Fuzz(func(t *testing.T, cn, org1, org2, dns string, ip []byte, uriPath string, notBefore, ttl int64, eku uint8, ku uint16, svid bool) {
		l := &leafTemplate{
			serial:    big.NewInt(notBefore & 0xffffff),
			notBefore: time.Unix(notBefore, 0),
			notAfter:  time.Unix(notBefore, 0).Add(time.Duration(ttl) * time.Second),
			keyUsage:  x509.KeyUsage(ku),
		}
		if svid {
			l.serialNumber = cn
			l.uris = []*url.URL{{Scheme: "spiffe", Host: "example.org", Path: "/" + uriPath}}
		} else {
			l.commonName = cn
		}
		for _, o := range []string{org1, org2} {
			if o != "" {
				l.organization = append(l.organization, o)
			}
		}
		if dns != "" {
			l.dnsNames = []string{dns, "second.example"}
		}
		if len(ip) > 0 {
			l.ipAddresses = []net.IP{ip}
		}
		for i, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageCodeSigning} {
			if eku&(1<<i) != 0 {
				l.extKeyUsage = append(l.extKeyUsage, u)
			}
		}
		got, ok := l.encodeTBS(ca.cert, pub)
		der, err := x509.CreateCertificate(rand.Reader, l.x509(), ca.cert, pub, ca.signer)
		switch {
		case !ok:
			return // left to x509.CreateCertificate, whatever it does
		case err != nil:
			t.Fatalf("encodeTBS encoded what x509.CreateCertificate refuses: %v", err)
		}
		// The TBSCertificate read off the DER: x509 makes certificates it
		// cannot parse back (an IP address of 2 bytes, say).
		var cert, want cryptobyte.String
		if input := cryptobyte.String(der); !input.ReadASN1(&cert, cbasn1.SEQUENCE) || !cert.ReadASN1Element(&want, cbasn1.SEQUENCE) {
			t.Fatalf("x509.CreateCertificate made no certificate: %x", der)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("TBSCertificate differs from x509.CreateCertificate's\n got %x\nwant %x", got, []byte(want))
		}
	})
}
