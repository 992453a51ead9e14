package issue

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/keybroker/keybroker/internal/atomicfile"
)

// Files of a SPIFFE authority's directory, besides the CA's ca.pem and
// ca-key.pem.
const JWTKeyFile = "jwt-key.pem"

// Limits on SVIDs.
const (
	MaxSVIDTTL   = 7 * 24 * time.Hour
	MaxCSRSize   = 4 << 10
	MaxAudiences = 8
	// MaxAudienceSize bounds each JWT-SVID audience, in bytes.
	MaxAudienceSize = 256
	// MaxCSRsPerRequest bounds the workload CSRs one request may ask to
	// have signed.
	MaxCSRsPerRequest = 64
	// MaxJWTSVIDTTL bounds a workload JWT-SVID's validity: JWTs cannot be
	// revoked, so they are short-lived whatever the entry allows.
	MaxJWTSVIDTTL = time.Hour
)

// SPIFFE is a trust domain's signing authority: an X.509 CA whose
// certificate names the trust domain, for X.509-SVIDs, and an ES256 key for
// JWT-SVIDs.
//
// Rotation: the X.509 authorities in the bundle are every certificate in the
// CA's ca.pem; the first signs. To rotate, append the next CA certificate
// to ca.pem of every broker and wait one SVID lifetime (it is then trusted
// everywhere), put its certificate first and its key in ca-key.pem (it
// signs; the previous stays in the bundle for validation), and after one
// more lifetime remove the previous certificate.
type SPIFFE struct {
	td     spiffeid.TrustDomain
	ca     *CA
	jwtKey *ecdsa.PrivateKey
	jwtKID string
}

// LoadOrCreateSPIFFE loads or creates the authority of trust domain td in
// dir: ca.pem and ca-key.pem (a P-256 CA naming spiffe://td) and
// jwt-key.pem (the JWT-SVID signing key, 0600).
func LoadOrCreateSPIFFE(dir, trustDomain string, opts CAOpts) (*SPIFFE, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, fmt.Errorf("invalid trust domain %q: %w", trustDomain, err)
	}
	if opts.CommonName == "" {
		opts.CommonName = "keybroker SPIFFE CA " + td.Name()
	}
	opts.URIs = []*url.URL{td.ID().URL()}
	ca, err := LoadOrCreateCA(dir, opts)
	if err != nil {
		return nil, err
	}
	if !hasURI(ca.cert, td.ID().URL()) {
		return nil, fmt.Errorf("unable to load SPIFFE authority: the CA in %s is not for trust domain %s", dir, td.Name())
	}
	key, err := LoadOrCreateSigningKey(filepath.Join(dir, JWTKeyFile))
	if err != nil {
		return nil, err
	}
	kid, err := KeyID(key.Public())
	if err != nil {
		return nil, err
	}
	return &SPIFFE{td: td, ca: ca, jwtKey: key, jwtKID: kid}, nil
}

func hasURI(cert *x509.Certificate, u *url.URL) bool {
	for _, got := range cert.URIs {
		if got.String() == u.String() {
			return true
		}
	}
	return false
}

// LoadSigningKey loads the ECDSA P-256 private key in the PEM file at path
// (PKCS#8, or SEC 1 as openssl writes it): a JWT signing key.
func LoadSigningKey(path string) (*ecdsa.PrivateKey, error) {
	return LoadKey(path, KeyOpts{})
}

// KeyOpts tune LoadKey and LoadOrCreateKey. The zero value loads a JWT
// key.
type KeyOpts struct {
	// What names the key in errors; empty: "JWT key".
	What string
	// OwnerOnly refuses a file readable or writable by group or others
	// (mode & 0o077), checked on the opened file.
	OwnerOnly bool
}

func (o KeyOpts) what() string {
	if o.What == "" {
		return "JWT key"
	}
	return o.What
}

// LoadKey loads the ECDSA P-256 private key in the PEM file at path, as
// LoadSigningKey does, with opts.
func LoadKey(path string, opts KeyOpts) (*ecdsa.PrivateKey, error) {
	data, err := readKeyFile(path, opts)
	if err != nil {
		return nil, fmt.Errorf("unable to load %s: %w", opts.what(), err)
	}
	return parseKey(data, opts)
}

// readKeyFile reads the key file at path, refusing with opts.OwnerOnly a
// mode that lets group or others in.
func readKeyFile(path string, opts KeyOpts) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if opts.OwnerOnly {
		fi, err := f.Stat()
		if err != nil {
			return nil, err
		}
		if m := fi.Mode().Perm(); m&0o077 != 0 {
			return nil, fmt.Errorf("%s is readable or writable by group or others (mode %04o): chmod 600 it", path, m)
		}
	}
	return io.ReadAll(io.LimitReader(f, maxKeyFile))
}

// maxKeyFile bounds a key file.
const maxKeyFile = 64 << 10

func parseSigningKey(data []byte) (*ecdsa.PrivateKey, error) { return parseKey(data, KeyOpts{}) }

func parseKey(data []byte, opts KeyOpts) (*ecdsa.PrivateKey, error) {
	signer, err := parseKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("unable to load %s: %w", opts.what(), err)
	}
	key, ok := signer.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, fmt.Errorf("unable to load %s: not an ECDSA P-256 key", opts.what())
	}
	return key, nil
}

// LoadOrCreateSigningKey loads the signing key at path as LoadSigningKey
// does, or, when there is no file, generates a P-256 key and writes it
// there (PKCS#8 PEM, 0600, atomically, never replacing a file).
func LoadOrCreateSigningKey(path string) (*ecdsa.PrivateKey, error) {
	return LoadOrCreateKey(path, KeyOpts{})
}

// LoadOrCreateKey is LoadOrCreateSigningKey with opts.
func LoadOrCreateKey(path string, opts KeyOpts) (*ecdsa.PrivateKey, error) {
	data, err := readKeyFile(path, opts)
	switch {
	case err == nil:
		return parseKey(data, opts)
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("unable to load %s: %w", opts.what(), err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("unable to generate %s: %w", opts.what(), err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("unable to encode %s: %w", opts.what(), err)
	}
	if err := atomicfile.WriteNew(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, fmt.Errorf("unable to write %s: %w", opts.what(), err)
	}
	return key, nil
}

// KeyID is the JWK key ID of a public key: the base64url of the first 16
// bytes of the SHA-256 of its PKIX (SubjectPublicKeyInfo) DER form.
func KeyID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("unable to encode JWT key: %w", err)
	}
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:16]), nil
}

// TrustDomain returns the authority's trust domain.
func (s *SPIFFE) TrustDomain() spiffeid.TrustDomain { return s.td }

// Bundle returns the trust domain's SPIFFE bundle: every X.509 authority in
// ca.pem and the JWT key.
func (s *SPIFFE) Bundle() *spiffebundle.Bundle {
	b := spiffebundle.FromX509Authorities(s.td, s.ca.bundle)
	// The key ID is fresh and the key a valid ECDSA key: cannot fail.
	_ = b.AddJWTAuthority(s.jwtKID, s.jwtKey.Public())
	return b
}

// BundleJWKS returns the bundle as a SPIFFE JWKS document.
func (s *SPIFFE) BundleJWKS() ([]byte, error) {
	b, err := s.Bundle().Marshal()
	if err != nil {
		return nil, fmt.Errorf("unable to encode SPIFFE bundle: %w", err)
	}
	return b, nil
}

// X509SVID is an issued X.509-SVID.
type X509SVID struct {
	ID          spiffeid.ID
	Certificate *x509.Certificate
	// Chain is the SVID then the intermediates (none: the CA is a root).
	Chain    []*x509.Certificate
	KeyPEM   []byte // PKCS#8, only when the authority made the key
	Serial   string
	NotAfter time.Time
}

// IssueX509SVID makes a fresh P-256 key and an X.509-SVID for id, valid for
// ttl (at most MaxSVIDTTL and never beyond the CA).
func (s *SPIFFE) IssueX509SVID(id spiffeid.ID, ttl time.Duration) (*X509SVID, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("unable to generate key: %w", err)
	}
	svid, err := s.sign(id, key.Public(), ttl)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("unable to encode key: %w", err)
	}
	svid.KeyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	return svid, nil
}

// IssueX509SVIDForKey issues an X.509-SVID for id and a key the caller
// vouches for (a tpm_resident release: a key certified inside the node's
// TPM), valid for ttl as IssueX509SVID's. KeyPEM is empty.
func (s *SPIFFE) IssueX509SVIDForKey(id spiffeid.ID, pub crypto.PublicKey, ttl time.Duration) (*X509SVID, error) {
	if pub == nil {
		return nil, errors.New("no public key to certify")
	}
	return s.sign(id, pub, ttl)
}

// SignX509SVID signs a workload's PKCS#10 request for id. The request must be
// self-signed and name exactly id as its only URI SAN, and nothing else.
func (s *SPIFFE) SignX509SVID(csrDER []byte, id spiffeid.ID, ttl time.Duration) (*X509SVID, error) {
	if len(csrDER) == 0 || len(csrDER) > MaxCSRSize {
		return nil, fmt.Errorf("csr must be between 1 and %d bytes", MaxCSRSize)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("unable to parse csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("csr signature does not verify: %w", err)
	}
	if len(csr.URIs) != 1 || csr.URIs[0].String() != id.String() || len(csr.DNSNames) > 0 || len(csr.IPAddresses) > 0 || len(csr.EmailAddresses) > 0 {
		return nil, fmt.Errorf("csr must name exactly %s and nothing else", id)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, errors.New("csr key must be P-256, P-384 or RSA-2048+")
		}
	default:
		if rk, ok := csr.PublicKey.(interface{ Size() int }); !ok || rk.Size() < 256 {
			return nil, errors.New("csr key must be P-256, P-384 or RSA-2048+")
		}
	}
	return s.sign(id, csr.PublicKey, ttl)
}

func (s *SPIFFE) sign(id spiffeid.ID, pub crypto.PublicKey, ttl time.Duration) (*X509SVID, error) {
	if !id.MemberOf(s.td) {
		return nil, fmt.Errorf("%s is not in trust domain %s", id, s.td.Name())
	}
	if ttl <= 0 || ttl > MaxSVIDTTL {
		return nil, fmt.Errorf("svid ttl must be between 1s and %s", MaxSVIDTTL)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	notBefore, notAfter, err := s.ca.validity(ttl)
	if err != nil {
		return nil, err
	}
	der, err := s.ca.signLeaf(&leafTemplate{
		serial:       serial,
		serialNumber: serial.String(),
		uris:         []*url.URL{id.URL()},
		notBefore:    notBefore,
		notAfter:     notAfter,
		keyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		extKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, pub)
	if err != nil {
		return nil, fmt.Errorf("unable to sign svid: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("unable to parse issued svid: %w", err)
	}
	return &X509SVID{ID: id, Certificate: cert, Chain: []*x509.Certificate{cert}, Serial: fmt.Sprintf("%x", serial), NotAfter: cert.NotAfter}, nil
}

// IssueJWTSVID signs a JWT-SVID (ES256, kid of the bundle's JWT key) for id
// and audience, valid for ttl (at most MaxSVIDTTL).
func (s *SPIFFE) IssueJWTSVID(id spiffeid.ID, audience []string, ttl time.Duration) (string, time.Time, error) {
	switch {
	case !id.MemberOf(s.td):
		return "", time.Time{}, fmt.Errorf("%s is not in trust domain %s", id, s.td.Name())
	case len(audience) == 0:
		return "", time.Time{}, errors.New("audience is required")
	case len(audience) > MaxAudiences:
		return "", time.Time{}, fmt.Errorf("at most %d audiences", MaxAudiences)
	case ttl <= 0 || ttl > MaxSVIDTTL:
		return "", time.Time{}, fmt.Errorf("svid ttl must be between 1s and %s", MaxSVIDTTL)
	}
	for _, a := range audience {
		if a == "" || len(a) > MaxAudienceSize {
			return "", time.Time{}, errors.New("each audience must be 1 to 256 bytes")
		}
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: s.jwtKey, KeyID: s.jwtKID}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", time.Time{}, fmt.Errorf("unable to create JWT signer: %w", err)
	}
	now := s.ca.now()
	exp := now.Add(ttl)
	token, err := jwt.Signed(signer).Claims(jwt.Claims{
		Subject:  id.String(),
		Audience: jwt.Audience(audience),
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(exp),
	}).Serialize()
	if err != nil {
		return "", time.Time{}, fmt.Errorf("unable to sign JWT-SVID: %w", err)
	}
	return token, exp, nil
}

// CertificatesPEM encodes certificates as PEM, in order.
func CertificatesPEM(certs []*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}
