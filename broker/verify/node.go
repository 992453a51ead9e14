package verify

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
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/internal/tpmcred"
)

// Input size limits. The broker's API enforces the same numbers.
const (
	MaxPublicSize      = 1 << 10
	MaxCertSize        = 8 << 10
	MaxIntermediates   = 8
	MaxQuoteAttestSize = 8 << 10
	MaxSignatureSize   = 1 << 10
	MaxQuotes          = 4
	MaxEventLogSize    = 1 << 20
	maxPCRIndex        = 23
	minRSABits         = 2048
	tpmSANManufacturer = "2.23.133.2.1"
	tpmSANModel        = "2.23.133.2.2"
	tpmSANVersion      = "2.23.133.2.3"
	oidSubjectAltName  = "2.5.29.17"
)

// CA is a named set of EK certificate authorities, such as a TPM vendor's
// roots and intermediates.
type CA struct {
	Name string
	// Roots are the trust anchors. Nil trusts nothing, never the system
	// roots.
	Roots         *x509.CertPool
	Intermediates *x509.CertPool
}

// Trust says which EKs are trusted. The zero value trusts nothing.
type Trust struct {
	// EKHashes lists EKs trusted by hash (see EKHash), with or without a
	// certificate.
	EKHashes []string
	// CAs lists the authorities an EK certificate may chain to.
	CAs []CA
	// Now is the time at which certificates must be valid; zero means now.
	Now time.Time

	ekSet map[string]struct{} // EKHashes, by Index; nil: EKHashes is scanned
	epoch [16]byte            // random, by Index: names this Trust in vouches
}

// Index returns t with its EKHashes indexed, so that checking an EK takes
// the same time whatever their number, and with a random Epoch naming it;
// what verifies many nodes with one Trust (a broker, the Vault plugin)
// indexes it once. Nothing of t may change afterwards.
func (t Trust) Index() Trust {
	t.ekSet = make(map[string]struct{}, len(t.EKHashes))
	for _, h := range t.EKHashes {
		t.ekSet[h] = struct{}{}
	}
	if _, err := rand.Read(t.epoch[:]); err != nil {
		panic(err) // crypto/rand does not fail
	}
	return t
}

// Epoch names an indexed Trust (Index): a Vouch made under it holds only
// under a Trust of the same epoch. It is zero for a Trust not indexed.
func (t Trust) Epoch() [16]byte { return t.epoch }

// trustsHash reports whether EKHashes lists hash.
func (t *Trust) trustsHash(hash string) bool {
	if t.ekSet != nil {
		_, ok := t.ekSet[hash]
		return ok
	}
	return slices.Contains(t.EKHashes, hash)
}

// EKCert holds the facts read from a verified EK certificate.
type EKCert struct {
	Manufacturer string // TPM manufacturer from the TPM SAN, e.g. "id:00001014"
	Model        string
	Version      string
	Subject      string
	Issuer       string
	NotAfter     time.Time
}

// NodeIdentity is a node whose EK is trusted and whose AK has the attributes
// of a restricted, TPM-resident signing key. It does not yet prove that the AK
// lives in the EK's TPM: that is what credential activation, checked in
// Quotes, adds.
type NodeIdentity struct {
	ekPublic tpm2.TPMTPublic
	ekKey    *tpmcred.Key // ekPublic, parsed to protect secrets to it
	ekName   []byte
	ekHash   string
	ekCA     string
	ekCert   *EKCert
	akPublic tpm2.TPMTPublic
	akKey    crypto.PublicKey
	akName   []byte
	akQNs    [][]byte // qualified names a quote by the AK may name (qualifiedNames)
	vouch    Vouch
}

// Vouch is what Node concluded of an EK's trust that is costly to
// conclude again: which of Trust.CAs its certificate chained to, and until
// when that chain is valid. The broker seals it in the challenge it issues
// to the node (with the Trust's Epoch), so that NodeVouched rebuilds the
// node at Attest without verifying the chain a second time.
type Vouch struct {
	// CA is 1 + the index in Trust.CAs of the authority the EK
	// certificate chained to; 0 when the EK is trusted by hash.
	CA uint8
	// NotAfter is the earliest expiry of the certificates of that chain
	// (zero when CA is 0).
	NotAfter time.Time
}

// Vouch returns what Node concluded of the EK's trust.
func (n *NodeIdentity) Vouch() Vouch { return n.vouch }

// EKPublic returns the EK public area.
func (n *NodeIdentity) EKPublic() *tpm2.TPMTPublic { return &n.ekPublic }

// EKKey returns the EK parsed once to protect secrets to it: what
// challenge.MakeCredentialTo and sealing.SealCredentialTo take.
func (n *NodeIdentity) EKKey() *tpmcred.Key { return n.ekKey }

// EKHash returns the EK's identity hash (see EKHash).
func (n *NodeIdentity) EKHash() string { return n.ekHash }

// AKName returns the AK's TPM name (nameAlg || digest of the public area).
func (n *NodeIdentity) AKName() []byte { return slices.Clone(n.akName) }

// EKHash returns the identity of an EK: the lowercase hex SHA-256 of its
// public key in PKIX (SubjectPublicKeyInfo) DER form. It is the same whether
// computed from the TPM public area or from the EK certificate.
func EKHash(pub crypto.PublicKey) (string, error) {
	return ekHash(pub, false)
}

// ekHash is EKHash; onCurve tells that pub, if an ECDSA key, is known to
// be a point on its curve (checkEK's tpmcred.NewKey checked it), so that
// encoding it need not check it again.
func ekHash(pub crypto.PublicKey, onCurve bool) (string, error) {
	// The SPKIs of the fast paths are encoded on the stack.
	var buf [len(rsa2048SPKIPrefix) + 256 + len(rsa2048SPKISuffix)]byte
	var der []byte
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			der = appendP256SPKI(buf[:0], k, onCurve)
		}
	case *rsa.PublicKey:
		der = appendRSA2048SPKI(buf[:0], k)
	}
	if der == nil {
		var err error
		if der, err = x509.MarshalPKIXPublicKey(pub); err != nil {
			return "", fmt.Errorf("unable to encode EK public key: %w", err)
		}
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// rsa2048SPKIPrefix is the DER of an RSA-2048 SubjectPublicKeyInfo up to
// its modulus: SEQUENCE { SEQUENCE { rsaEncryption, NULL }, BIT STRING {
// SEQUENCE { INTEGER (257 bytes: 0x00 and the modulus), ...
var rsa2048SPKIPrefix = [...]byte{
	0x30, 0x82, 0x01, 0x22, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
	0x03, 0x82, 0x01, 0x0f, 0x00, 0x30, 0x82, 0x01, 0x0a, 0x02, 0x82, 0x01, 0x01, 0x00,
}

// rsa2048SPKISuffix is the exponent 65537 that ends it: INTEGER 0x010001 }}}.
var rsa2048SPKISuffix = [...]byte{0x02, 0x03, 0x01, 0x00, 0x01}

// appendRSA2048SPKI appends x509.MarshalPKIXPublicKey of an RSA key with a
// 2048-bit modulus and exponent 65537 (the RSA EK of the TCG template) to
// dst, or returns nil for any other key.
func appendRSA2048SPKI(dst []byte, k *rsa.PublicKey) []byte {
	if k.N == nil || k.N.BitLen() != 2048 || k.E != 65537 {
		return nil
	}
	dst = append(dst, rsa2048SPKIPrefix[:]...)
	n := len(dst)
	dst = append(dst, make([]byte, 256)...)
	k.N.FillBytes(dst[n:])
	return append(dst, rsa2048SPKISuffix[:]...)
}

// p256SPKIPrefix is the DER of a P-256 SubjectPublicKeyInfo up to its
// uncompressed point: SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 },
// BIT STRING (66 bytes, no unused bits) }.
var p256SPKIPrefix = [...]byte{
	0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
	0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
}

// appendP256SPKI appends x509.MarshalPKIXPublicKey of a P-256 key (the ECC
// EK of every node) to dst, without asn1's reflection: it is hashed twice
// per release. It returns nil if k does not encode (TestEKHashFastPaths
// holds it to x509); with onCurve, k is known to be a point on P-256 and
// its coordinates are encoded as they are.
func appendP256SPKI(dst []byte, k *ecdsa.PublicKey, onCurve bool) []byte {
	if !onCurve {
		pt, err := k.Bytes() // 0x04 || X || Y, 65 bytes; checks the point
		if err != nil || len(pt) != 65 {
			return nil
		}
		return append(append(dst, p256SPKIPrefix[:]...), pt...)
	}
	p := elliptic.P256().Params().P
	if k.X == nil || k.Y == nil || k.X.Sign() < 0 || k.Y.Sign() < 0 || k.X.Cmp(p) >= 0 || k.Y.Cmp(p) >= 0 {
		return nil
	}
	dst = append(append(dst, p256SPKIPrefix[:]...), 4)
	n := len(dst)
	dst = append(dst, make([]byte, 64)...)
	k.X.FillBytes(dst[n : n+32])
	k.Y.FillBytes(dst[n+32:])
	return dst
}

// Node checks the EK (trusted by hash or by certificate chain, opts.Trust)
// and the AK (attributes, algorithm, size; a SHA-1 name only with
// opts.AllowSHA1). ekPublic and akPublic are TPMT_PUBLIC encodings; ekCert
// and intermediates are DER and may be empty.
func Node(ekPublic, ekCert []byte, intermediates [][]byte, akPublic []byte, opts Opts) (*NodeIdentity, error) {
	return node(ekPublic, ekCert, intermediates, akPublic, opts, nil)
}

// NodeVouched is Node for the material a node presented again with its
// answer, which Node accepted under opts.Trust (the same Epoch) when the node
// asked for its challenge, concluding v: every check of Node is made again
// but the EK certificate's chain, which is taken from v while the chain is
// valid (after v.NotAfter, or with a CA trust no longer has, the chain is
// verified again).
func NodeVouched(ekPublic, ekCert []byte, intermediates [][]byte, akPublic []byte, opts Opts, v Vouch) (*NodeIdentity, error) {
	return node(ekPublic, ekCert, intermediates, akPublic, opts, &v)
}

func node(ekPublic, ekCert []byte, intermediates [][]byte, akPublic []byte, opts Opts, v *Vouch) (*NodeIdentity, error) {
	switch {
	case len(ekPublic) == 0:
		return nil, fail(CheckInput, "ek_public is empty", nil)
	case len(ekPublic) > MaxPublicSize:
		return nil, fail(CheckInput, "ek_public is too large", nil)
	case len(akPublic) == 0:
		return nil, fail(CheckInput, "ak_public is empty", nil)
	case len(akPublic) > MaxPublicSize:
		return nil, fail(CheckInput, "ak_public is too large", nil)
	case len(ekCert) > MaxCertSize:
		return nil, fail(CheckInput, "ek_certificate is too large", nil)
	case len(intermediates) > MaxIntermediates:
		return nil, fail(CheckInput, "too many ek_intermediates", nil)
	}
	for _, c := range intermediates {
		if len(c) > MaxCertSize {
			return nil, fail(CheckInput, "an ek_intermediates entry is too large", nil)
		}
	}
	n := &NodeIdentity{}
	if err := n.checkEK(ekPublic, ekCert, intermediates, opts.Trust, v); err != nil {
		return nil, err
	}
	if err := n.checkAK(akPublic, opts.AllowSHA1); err != nil {
		return nil, err
	}
	return n, nil
}

func (n *NodeIdentity) checkEK(ekPublic, ekCertDER []byte, intermediates [][]byte, trust Trust, v *Vouch) error {
	pub, err := decodePublic(ekPublic)
	if err != nil {
		return exactFailure(CheckInput, "ek_public", "TPMT_PUBLIC", err)
	}
	attrs := pub.ObjectAttributes
	if !attrs.Restricted || !attrs.Decrypt || attrs.SignEncrypt || !attrs.FixedTPM || !attrs.FixedParent {
		return fail(CheckEKTrust, "ek_public is not a restricted, fixed decryption key", nil)
	}
	key, err := tpm2.Pub(*pub)
	if err != nil {
		return fail(CheckInput, "ek_public holds no usable public key", err)
	}
	// NewKey validates an ECC point as onCurve does: onCurve only tells
	// which refusal a key NewKey refuses gets.
	ekKey, err := tpmcred.NewKey(pub)
	if err != nil {
		if k, ok := key.(*ecdsa.PublicKey); ok && !onCurve(pub, k) {
			return fail(CheckInput, "EK public key is not a point on "+curveName(k), nil)
		}
		return fail(CheckInput, "ek_public cannot receive a credential", err)
	}
	hash, err := ekHash(key, true) // NewKey checked the point
	if err != nil {
		return fail(CheckInput, "ek_public holds no usable public key", err)
	}
	name, err := objectName(pub, ekPublic)
	if err != nil {
		return fail(CheckInput, "unable to compute the EK name", err)
	}
	n.ekPublic, n.ekKey, n.ekHash, n.ekName = *pub, ekKey, hash, name

	var certErr error
	if len(ekCertDER) > 0 {
		ca, facts, vouch, err := ekCertTrust(key, ekCertDER, intermediates, trust, v)
		if err == nil {
			n.ekCA, n.ekCert, n.vouch = ca, facts, vouch
			return nil
		}
		// Malformed input and a certificate for another key are refused
		// outright; a certificate that does not chain may still belong
		// to an EK trusted by hash.
		var ce *CheckError
		if !errors.As(err, &ce) || ce.Check != CheckEKTrust || ce.Msg == msgCertKeyMismatch {
			return err
		}
		certErr = err
	}
	if trust.trustsHash(hash) {
		return nil
	}
	if certErr != nil {
		return certErr
	}
	return fail(CheckEKTrust, "EK is not trusted", nil)
}

const msgCertKeyMismatch = "ek_certificate does not certify ek_public"

// ekCertTrust checks the EK certificate: with v (NodeVouched), by
// vouchedEKCert while v holds, else by verifyEKCert.
func ekCertTrust(ekKey crypto.PublicKey, der []byte, intermediates [][]byte, trust Trust, v *Vouch) (string, *EKCert, Vouch, error) {
	if v != nil && v.holds(trust) {
		ca, facts, err := vouchedEKCert(ekKey, der, intermediates, trust, *v)
		return ca, facts, *v, err
	}
	return verifyEKCert(ekKey, der, intermediates, trust)
}

// maxVouchedCA is the number of leading Trust.CAs a Vouch can name.
const maxVouchedCA = 254

// holds reports whether v can stand for verifying its chain again under
// trust now.
func (v Vouch) holds(trust Trust) bool {
	if v.CA == 0 {
		return true
	}
	return int(v.CA) <= len(trust.CAs) && !trustNow(trust).After(v.NotAfter)
}

func trustNow(trust Trust) time.Time {
	if trust.Now.IsZero() {
		return time.Now()
	}
	return trust.Now
}

// parseEKCert parses the EK certificate and the intermediates presented,
// refusing malformed ones and a certificate of another key, and reads the
// certificate's facts.
func parseEKCert(ekKey crypto.PublicKey, der []byte, intermediates [][]byte) (*x509.Certificate, []*x509.Certificate, *EKCert, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, fail(CheckInput, "ek_certificate is not an X.509 certificate", err)
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if k, ok := cert.PublicKey.(equaler); !ok || !k.Equal(ekKey) {
		return nil, nil, nil, fail(CheckEKTrust, msgCertKeyMismatch, nil)
	}
	facts := &EKCert{
		Subject:  cert.Subject.String(),
		Issuer:   cert.Issuer.String(),
		NotAfter: cert.NotAfter,
	}
	if err := readTPMSAN(cert, facts); err != nil {
		return nil, nil, nil, fail(CheckInput, "ek_certificate has a malformed subject alternative name", err)
	}
	var presented []*x509.Certificate
	for _, d := range intermediates {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, nil, nil, fail(CheckInput, "an ek_intermediates entry is not an X.509 certificate", err)
		}
		presented = append(presented, c)
	}
	return cert, presented, facts, nil
}

// errNoChain is the refusal of a certificate that chains to no trusted CA.
func errNoChain(cause error) error {
	return fail(CheckEKTrust, "ek_certificate does not chain to a trusted EK CA", cause)
}

// verifyEKCert verifies the EK certificate's chain to one of trust.CAs and
// returns the CA's name, the certificate's facts and the Vouch of it.
func verifyEKCert(ekKey crypto.PublicKey, der []byte, intermediates [][]byte, trust Trust) (string, *EKCert, Vouch, error) {
	cert, presented, facts, err := parseEKCert(ekKey, der, intermediates)
	if err != nil {
		return "", nil, Vouch{}, err
	}
	now := trustNow(trust)
	var errs []error
	for i, ca := range trust.CAs {
		if ca.Roots == nil { // x509 would fall back to the system roots
			errs = append(errs, fmt.Errorf("%s: no roots configured", ca.Name))
			continue
		}
		inter := x509.NewCertPool()
		if ca.Intermediates != nil {
			inter = ca.Intermediates.Clone()
		}
		for _, c := range presented {
			inter.AddCert(c)
		}
		chains, err := cert.Verify(x509.VerifyOptions{
			Roots: ca.Roots, Intermediates: inter, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		})
		if err == nil && i < maxVouchedCA {
			return ca.Name, facts, Vouch{CA: uint8(i + 1), NotAfter: chainNotAfter(chains[0])}, nil
		}
		if err == nil { // a CA a Vouch cannot name: verified again at Attest
			return ca.Name, facts, Vouch{CA: 255}, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", ca.Name, err))
	}
	return "", nil, Vouch{}, errNoChain(errors.Join(errs...))
}

// vouchedEKCert is verifyEKCert for a certificate whose chain v vouches
// for: the certificate and intermediates are parsed and checked as
// verifyEKCert does, the chain is not verified again. A v without a CA (the
// EK was trusted by hash, its certificate chaining nowhere) answers as a
// certificate that does not chain.
func vouchedEKCert(ekKey crypto.PublicKey, der []byte, intermediates [][]byte, trust Trust, v Vouch) (string, *EKCert, error) {
	_, _, facts, err := parseEKCert(ekKey, der, intermediates)
	if err != nil {
		return "", nil, err
	}
	if v.CA == 0 {
		return "", nil, errNoChain(errors.New("vouched: no chain"))
	}
	return trust.CAs[v.CA-1].Name, facts, nil
}

// chainNotAfter is the earliest expiry of chain's certificates.
func chainNotAfter(chain []*x509.Certificate) time.Time {
	var t time.Time
	for i, c := range chain {
		if i == 0 || c.NotAfter.Before(t) {
			t = c.NotAfter
		}
	}
	return t
}

// readTPMSAN reads the TPM manufacturer, model and version from the EK
// certificate's subject alternative name (a directoryName, TCG EK Credential
// Profile) and, when it finds a TPM manufacturer there, marks the critical SAN
// as handled so that x509 chain verification does not reject it. (x509
// already treats a SAN holding DNS, email, IP or URI names as handled.)
func readTPMSAN(cert *x509.Certificate, facts *EKCert) error {
	var san *pkix.Extension
	for i := range cert.Extensions {
		if cert.Extensions[i].Id.String() == oidSubjectAltName {
			san = &cert.Extensions[i]
		}
	}
	if san == nil {
		return nil
	}
	var names asn1.RawValue
	if rest, err := asn1.Unmarshal(san.Value, &names); err != nil || len(rest) > 0 {
		return fmt.Errorf("unable to parse GeneralNames")
	}
	found := false
	for rest := names.Bytes; len(rest) > 0; {
		var gn asn1.RawValue
		var err error
		if rest, err = asn1.Unmarshal(rest, &gn); err != nil {
			return fmt.Errorf("unable to parse GeneralName: %w", err)
		}
		if gn.Class != asn1.ClassContextSpecific || gn.Tag != 4 {
			continue
		}
		var rdn pkix.RDNSequence
		if _, err := asn1.Unmarshal(gn.Bytes, &rdn); err != nil {
			return fmt.Errorf("unable to parse directoryName: %w", err)
		}
		for _, set := range rdn {
			for _, atv := range set {
				s, _ := atv.Value.(string)
				switch atv.Type.String() {
				case tpmSANManufacturer:
					facts.Manufacturer, found = s, true
				case tpmSANModel:
					facts.Model = s
				case tpmSANVersion:
					facts.Version = s
				}
			}
		}
	}
	if found {
		cert.UnhandledCriticalExtensions = slices.DeleteFunc(cert.UnhandledCriticalExtensions,
			func(id asn1.ObjectIdentifier) bool { return id.String() == oidSubjectAltName })
	}
	return nil
}

func (n *NodeIdentity) checkAK(akPublic []byte, allowSHA1 bool) error {
	pub, err := decodePublic(akPublic)
	if err != nil {
		return exactFailure(CheckInput, "ak_public", "TPMT_PUBLIC", err)
	}
	a := pub.ObjectAttributes
	var missing []string
	for _, c := range []struct {
		ok   bool
		name string
	}{
		{a.Restricted, "restricted"}, {a.SignEncrypt, "sign"}, {a.FixedTPM, "fixedTPM"},
		{a.FixedParent, "fixedParent"}, {a.SensitiveDataOrigin, "sensitiveDataOrigin"},
	} {
		if !c.ok {
			missing = append(missing, c.name)
		}
	}
	if len(missing) > 0 {
		return fail(CheckAK, fmt.Sprintf("AK lacks attributes %v", missing), nil)
	}
	if a.Decrypt {
		return fail(CheckAK, "AK must not be a decryption key", nil)
	}
	switch pub.NameAlg {
	case tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384, tpm2.TPMAlgSHA512:
	case tpm2.TPMAlgSHA1:
		if !allowSHA1 {
			return fail(CheckAK, "AK name algorithm SHA-1 is not allowed", nil)
		}
	default:
		return fail(CheckAK, fmt.Sprintf("AK name algorithm 0x%04x is not supported", uint16(pub.NameAlg)), nil)
	}
	key, err := tpm2.Pub(*pub)
	if err != nil {
		return fail(CheckAK, "AK holds no usable public key", err)
	}
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return fail(CheckAK, fmt.Sprintf("AK RSA key has %d bits, want at least %d", k.N.BitLen(), minRSABits), nil)
		}
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fail(CheckAK, "AK ECC curve is not P-256 or P-384", nil)
		}
		if !onCurve(pub, k) {
			return fail(CheckAK, "AK public key is not a point on "+curveName(k), nil)
		}
	default:
		return fail(CheckAK, "AK key type is not RSA or ECC", nil)
	}
	name, err := objectName(pub, akPublic)
	if err != nil {
		return fail(CheckAK, "unable to compute the AK name", err)
	}
	qns, err := qualifiedNames(n.ekName, pub.NameAlg, name)
	if err != nil {
		return fail(CheckAK, "unable to compute the AK's qualified names", err)
	}
	n.akPublic, n.akKey, n.akName, n.akQNs = *pub, key, name, qns
	return nil
}
