package verify_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify"
)

// This file holds fixtures that need no TPM: keys generated in Go, TPMT_PUBLIC
// areas built around them, a software AK that signs whatever a test asks, and
// a small certificate authority. They reach checks that a real TPM would never
// trigger; the simulator tests in tpm_test.go show that real TPM output passes.

// Keys are generated once per test binary: RSA key generation dominates the
// run time otherwise.
var (
	ekRSAKey    = sync.OnceValue(func() *rsa.PrivateKey { return mustRSAKey(2048) })
	otherRSAKey = sync.OnceValue(func() *rsa.PrivateKey { return mustRSAKey(2048) })
	akRSAKey    = sync.OnceValue(func() *rsa.PrivateKey { return mustRSAKey(2048) })
	akRSA1024   = sync.OnceValue(func() *rsa.PrivateKey { return mustRSAKey(1024) })
	ekECCKey    = sync.OnceValue(func() *ecdsa.PrivateKey { return mustECDSAKey(elliptic.P256()) })
	akP256Key   = sync.OnceValue(func() *ecdsa.PrivateKey { return mustECDSAKey(elliptic.P256()) })
	akP384Key   = sync.OnceValue(func() *ecdsa.PrivateKey { return mustECDSAKey(elliptic.P384()) })
	akP521Key   = sync.OnceValue(func() *ecdsa.PrivateKey { return mustECDSAKey(elliptic.P521()) })
)

func mustRSAKey(bits int) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		panic(fmt.Sprintf("unable to generate an RSA-%d key: %v", bits, err))
	}
	return k
}

func mustECDSAKey(c elliptic.Curve) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		panic(fmt.Sprintf("unable to generate an ECDSA key: %v", err))
	}
	return k
}

// ekPublicRSA is the TCG reference RSA-2048 EK template holding key.
func ekPublicRSA(key *rsa.PublicKey) tpm2.TPMTPublic {
	pub := tpm2.RSAEKTemplate
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: key.N.Bytes()})
	return pub
}

// ekPublicECC is the TCG reference ECC P-256 EK template holding key.
func ekPublicECC(key *ecdsa.PublicKey) tpm2.TPMTPublic {
	pub := tpm2.ECCEKTemplate
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, eccPoint(key))
	return pub
}

func eccPoint(key *ecdsa.PublicKey) *tpm2.TPMSECCPoint {
	size := (key.Curve.Params().BitSize + 7) / 8
	return &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: key.X.FillBytes(make([]byte, size))},
		Y: tpm2.TPM2BECCParameter{Buffer: key.Y.FillBytes(make([]byte, size))},
	}
}

// akAttributes are those of go-tpm-tools' AK templates (FlagSignerDefault).
func akAttributes() tpm2.TPMAObject {
	return tpm2.TPMAObject{
		FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
		UserWithAuth: true, Restricted: true, SignEncrypt: true,
	}
}

// akPublicRSA is a restricted RSA signing key with the given scheme
// (RSASSA or RSAPSS) and hash.
func akPublicRSA(key *rsa.PublicKey, scheme, hash tpm2.TPMAlgID) tpm2.TPMTPublic {
	var details tpm2.TPMUAsymScheme
	switch scheme {
	case tpm2.TPMAlgRSAPSS:
		details = tpm2.NewTPMUAsymScheme(scheme, &tpm2.TPMSSigSchemeRSAPSS{HashAlg: hash})
	default:
		details = tpm2.NewTPMUAsymScheme(scheme, &tpm2.TPMSSigSchemeRSASSA{HashAlg: hash})
	}
	return tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgRSA,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: akAttributes(),
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme:    tpm2.TPMTRSAScheme{Scheme: scheme, Details: details},
			KeyBits:   tpm2.TPMIRSAKeyBits(key.N.BitLen()),
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: key.N.Bytes()}),
	}
}

// akPublicECC is a restricted ECDSA signing key on curve.
func akPublicECC(key *ecdsa.PublicKey, curve tpm2.TPMECCCurve, hash tpm2.TPMAlgID) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgECC,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: akAttributes(),
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: hash}),
			},
			CurveID: curve,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, eccPoint(key)),
	}
}

// softAK is an AK whose private key the test holds. It signs anything, which
// a TPM-resident restricted key never does, so tests can reach every check.
type softAK struct {
	pub    tpm2.TPMTPublic
	signer crypto.Signer
	scheme tpm2.TPMAlgID // RSASSA, RSAPSS or ECDSA
	hash   tpm2.TPMAlgID // signature hash
}

func newSoftRSAAK(key *rsa.PrivateKey, scheme, hash tpm2.TPMAlgID) softAK {
	return softAK{pub: akPublicRSA(&key.PublicKey, scheme, hash), signer: key, scheme: scheme, hash: hash}
}

func newSoftECCAK(key *ecdsa.PrivateKey, hash tpm2.TPMAlgID) softAK {
	curve := tpm2.TPMECCNistP256
	if key.Curve == elliptic.P384() {
		curve = tpm2.TPMECCNistP384
	}
	return softAK{pub: akPublicECC(&key.PublicKey, curve, hash), signer: key, scheme: tpm2.TPMAlgECDSA, hash: hash}
}

// defaultAK is the software stand-in for go-tpm-tools' AttestationKeyRSA.
func defaultAK() softAK { return newSoftRSAAK(akRSAKey(), tpm2.TPMAlgRSASSA, tpm2.TPMAlgSHA256) }

// publicBytes is the TPMT_PUBLIC encoding of the AK.
func (ak softAK) publicBytes() []byte { return tpm2.Marshal(ak.pub) }

// sign returns the TPMT_SIGNATURE of attest, as a TPM would produce it.
func (ak softAK) sign(tb testing.TB, attest []byte) []byte {
	tb.Helper()
	h := mustHash(tb, ak.hash)
	d := h.New()
	d.Write(attest)
	digest := d.Sum(nil)
	switch ak.scheme {
	case tpm2.TPMAlgRSASSA, tpm2.TPMAlgRSAPSS:
		var opts crypto.SignerOpts = h
		if ak.scheme == tpm2.TPMAlgRSAPSS {
			opts = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: h}
		}
		sig, err := ak.signer.Sign(rand.Reader, digest, opts)
		if err != nil {
			tb.Fatalf("unable to sign: %v", err)
		}
		s := &tpm2.TPMSSignatureRSA{Hash: ak.hash, Sig: tpm2.TPM2BPublicKeyRSA{Buffer: sig}}
		return tpm2.Marshal(tpm2.TPMTSignature{SigAlg: ak.scheme, Signature: tpm2.NewTPMUSignature(ak.scheme, s)})
	case tpm2.TPMAlgECDSA:
		der, err := ak.signer.Sign(rand.Reader, digest, h)
		if err != nil {
			tb.Fatalf("unable to sign: %v", err)
		}
		var rs struct{ R, S *big.Int }
		if _, err := asn1.Unmarshal(der, &rs); err != nil {
			tb.Fatalf("unable to parse the ECDSA signature: %v", err)
		}
		s := &tpm2.TPMSSignatureECC{
			Hash:       ak.hash,
			SignatureR: tpm2.TPM2BECCParameter{Buffer: rs.R.Bytes()},
			SignatureS: tpm2.TPM2BECCParameter{Buffer: rs.S.Bytes()},
		}
		return tpm2.Marshal(tpm2.TPMTSignature{SigAlg: ak.scheme, Signature: tpm2.NewTPMUSignature(ak.scheme, s)})
	}
	tb.Fatalf("unknown scheme 0x%04x", uint16(ak.scheme))
	return nil
}

func mustHash(tb testing.TB, alg tpm2.TPMAlgID) crypto.Hash {
	tb.Helper()
	h, err := alg.Hash()
	if err != nil {
		tb.Fatal(err)
	}
	return h
}

// quoteSpec describes a TPMS_ATTEST of type QUOTE. Tests start from
// newQuoteSpec and change one thing.
type quoteSpec struct {
	extraData []byte
	bank      tpm2.TPMAlgID
	selected  []uint32          // PCRs in the quote's selection
	pcrs      map[uint32][]byte // values digested into pcrDigest, and reported
	clock     tpm2.TPMSClockInfo
	firmware  uint64
}

// testSecret is the challenge secret of the software quotes; Quotes is given
// its SHA-256.
var testSecret = []byte("0123456789abcdef0123456789abcdef")

func testNonceHash() [32]byte { return sha256.Sum256(testSecret) }

// newQuoteSpec quotes PCRs 0-7 of bank, PCR i holding the byte i repeated.
func newQuoteSpec(bank tpm2.TPMAlgID) quoteSpec {
	size := 32
	if h, err := bank.Hash(); err == nil {
		size = h.Size()
	}
	s := quoteSpec{
		extraData: testSecret,
		bank:      bank,
		pcrs:      map[uint32][]byte{},
		clock:     tpm2.TPMSClockInfo{Clock: 123456, ResetCount: 7, RestartCount: 3, Safe: true},
		firmware:  0x20240101,
	}
	for i := range uint32(8) {
		s.selected = append(s.selected, i)
		s.pcrs[i] = bytesOf(byte(i), size)
	}
	return s
}

func bytesOf(b byte, n int) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = b
	}
	return out
}

// attest builds the TPMS_ATTEST; pcrDigest uses the AK's signature hash, as
// a TPM does.
func (s quoteSpec) attest(tb testing.TB, ak softAK) tpm2.TPMSAttest {
	tb.Helper()
	d := mustHash(tb, ak.hash).New()
	sel := make([]byte, 3)
	for _, i := range slices.Sorted(slices.Values(s.selected)) {
		sel[i/8] |= 1 << (i % 8)
		d.Write(s.pcrs[i])
	}
	return tpm2.TPMSAttest{
		Magic:           tpm2.TPMGeneratedValue,
		Type:            tpm2.TPMSTAttestQuote,
		QualifiedSigner: qualifiedName(tb, tpm2.PrimaryHandleName(tpm2.TPMRHOwner), &ak.pub), // an owner primary, as go-tpm-tools makes AKs
		ExtraData:       tpm2.TPM2BData{Buffer: s.extraData},
		ClockInfo:       s.clock,
		FirmwareVersion: s.firmware,
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
			PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: s.bank, PCRSelect: sel}}},
			PCRDigest: tpm2.TPM2BDigest{Buffer: d.Sum(nil)},
		}),
	}
}

// quote signs the spec with ak and reports the spec's PCR values.
func (s quoteSpec) quote(tb testing.TB, ak softAK) verify.Quote {
	tb.Helper()
	att := s.attest(tb, ak)
	return signedQuote(tb, ak, tpm2.Marshal(att), s.bank, s.pcrs)
}

func signedQuote(tb testing.TB, ak softAK, attest []byte, bank tpm2.TPMAlgID, pcrs map[uint32][]byte) verify.Quote {
	tb.Helper()
	reported := map[uint32][]byte{}
	for i, v := range pcrs {
		reported[i] = slices.Clone(v)
	}
	return verify.Quote{Attest: attest, Signature: ak.sign(tb, attest), Bank: bank, PCRs: reported}
}

// trustedNode returns the identity of a node whose EK is trusted by hash and
// whose AK is ak.
func trustedNode(tb testing.TB, ak softAK) *verify.NodeIdentity {
	tb.Helper()
	ek := ekPublicRSA(&ekRSAKey().PublicKey)
	n, err := verify.Node(tpm2.Marshal(ek), nil, nil, ak.publicBytes(), verify.Opts{
		Trust:     verify.Trust{EKHashes: []string{mustEKHash(tb, &ekRSAKey().PublicKey)}},
		AllowSHA1: true,
	})

	if err != nil {
		tb.Fatalf("verify.Node: %v", err)
	}
	return n
}

func mustEKHash(tb testing.TB, key crypto.PublicKey) string {
	tb.Helper()
	h, err := verify.EKHash(key)
	if err != nil {
		tb.Fatal(err)
	}
	return h
}

// assertCheck fails the test unless err is a *verify.CheckError for check
// with message msg. An empty check means err must be nil.
func assertCheck(tb testing.TB, err error, check verify.Check, msg string) {
	tb.Helper()
	if check == "" {
		if err != nil {
			tb.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		tb.Fatalf("got no error, want %s: %s", check, msg)
	}
	if got := verify.FailedCheck(err); got != check {
		tb.Fatalf("FailedCheck = %q, want %q (error: %v)", got, check, err)
	}
	var ce *verify.CheckError
	if !errors.As(err, &ce) {
		tb.Fatalf("error %v is not a *verify.CheckError", err)
	}
	if ce.Msg != msg {
		tb.Fatalf("message = %q, want %q", ce.Msg, msg)
	}
	if want := string(check) + ": " + msg; !strings.HasPrefix(err.Error(), want) {
		tb.Fatalf("error text = %q, want it to start with %q", err.Error(), want)
	}
}

// testCA is a certificate authority for EK certificates.
type testCA struct {
	cert *x509.Certificate
	der  []byte
	key  *ecdsa.PrivateKey
}

var serial atomic.Int64

func nextSerial() *big.Int { return big.NewInt(1000 + serial.Add(1)) }

// newTestCA returns a root CA if parent is nil, else an intermediate.
func newTestCA(tb testing.TB, name string, parent *testCA) *testCA {
	tb.Helper()
	key := mustECDSAKey(elliptic.P256())
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{Organization: []string{"keybroker test"}, CommonName: name},
		NotBefore:             time.Now().Add(-24 * time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	issuer, signer := tmpl, crypto.Signer(key)
	if parent != nil {
		issuer, signer = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, &key.PublicKey, signer)
	if err != nil {
		tb.Fatalf("unable to create CA %s: %v", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return &testCA{cert: cert, der: der, key: key}
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// ekCertOpts shape an EK certificate. The zero value is a TCG-style EK
// certificate: empty subject, critical SAN with the TPM directoryName.
type ekCertOpts struct {
	notBefore, notAfter time.Time
	san                 []byte // SAN extension value; nil means tpmSAN(...)
	noSAN               bool
	sanNotCritical      bool
	subject             pkix.Name
}

const (
	testManufacturer = "id:4B425230"
	testModel        = "keybroker-sim"
	testVersion      = "id:00010002"
)

// issueEK issues an EK certificate for key.
func (ca *testCA) issueEK(tb testing.TB, key crypto.PublicKey, o ekCertOpts) []byte {
	tb.Helper()
	if o.notBefore.IsZero() {
		o.notBefore = time.Now().Add(-time.Hour)
	}
	if o.notAfter.IsZero() {
		o.notAfter = time.Now().Add(365 * 24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               o.subject,
		NotBefore:             o.notBefore,
		NotAfter:              o.notAfter,
		KeyUsage:              x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		UnknownExtKeyUsage:    []asn1.ObjectIdentifier{{2, 23, 133, 8, 1}}, // tcg-kp-EKCertificate
	}
	if !o.noSAN {
		san := o.san
		if san == nil {
			san = tpmSAN(tb, testManufacturer, testModel, testVersion)
		}
		tmpl.ExtraExtensions = []pkix.Extension{{
			Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Critical: !o.sanNotCritical, Value: san,
		}}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key, ca.key)
	if err != nil {
		tb.Fatalf("unable to issue the EK certificate: %v", err)
	}
	return der
}

var (
	oidTPMManufacturer = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel        = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion      = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
)

// tpmSAN is a SubjectAltName value holding only a directoryName with the
// TPM manufacturer, model and version (TCG EK Credential Profile 3.2.9).
func tpmSAN(tb testing.TB, manufacturer, model, version string) []byte {
	tb.Helper()
	return sanOf(tb, directoryName(tb, pkix.RDNSequence{{
		{Type: oidTPMManufacturer, Value: manufacturer},
		{Type: oidTPMModel, Value: model},
		{Type: oidTPMVersion, Value: version},
	}}))
}

// directoryName is the GeneralName [4] EXPLICIT Name.
func directoryName(tb testing.TB, rdn pkix.RDNSequence) asn1.RawValue {
	tb.Helper()
	b, err := asn1.Marshal(rdn)
	if err != nil {
		tb.Fatal(err)
	}
	return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: b}
}

// sanOf encodes GeneralNames.
func sanOf(tb testing.TB, names ...asn1.RawValue) []byte {
	tb.Helper()
	var body []byte
	for _, n := range names {
		b, err := asn1.Marshal(n)
		if err != nil {
			tb.Fatal(err)
		}
		body = append(body, b...)
	}
	b, err := asn1.Marshal(asn1.RawValue{Tag: asn1.TagSequence, IsCompound: true, Bytes: body})
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
