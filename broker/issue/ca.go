package issue

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/keybroker/keybroker/internal/atomicfile"
)

// File names inside the CA directory.
const (
	CACertFile = "ca.pem"
	CAKeyFile  = "ca-key.pem"
)

const (
	// DefaultCACommonName is the subject CN of a created CA when
	// CAOpts.CommonName is empty.
	DefaultCACommonName = "keybroker CA"
	// caValidityYears is how long a created CA is valid.
	caValidityYears = 10
	// backdate is subtracted from now for NotBefore, to tolerate clock skew
	// between the broker and relying parties.
	backdate = time.Minute
)

// CAOpts configures LoadOrCreateCA. The zero value is the production
// default.
type CAOpts struct {
	// CommonName is the subject CN of a newly created CA (default
	// DefaultCACommonName). It is ignored when the CA already exists.
	CommonName string
	// Now is the clock used for validity periods (default time.Now). Tests
	// set it; production leaves it nil.
	Now func() time.Time
	// URIs are put in a newly created CA's subject alternative names (a
	// SPIFFE CA names its trust domain). Ignored when the CA exists.
	URIs []*url.URL
}

// CA issues certificates from a key and certificate kept in a directory. It
// is immutable after LoadOrCreateCA and safe for concurrent use.
type CA struct {
	cert   *x509.Certificate
	signer crypto.Signer
	bundle []*x509.Certificate // cert first, then any other certs in ca.pem
	now    func() time.Time
}

// LoadOrCreateCA loads the CA from dir (CACertFile and CAKeyFile), or, when
// neither exists, creates dir (mode 0700) and a self-signed ECDSA P-256 CA
// valid for ten years whose key file is written atomically with mode 0600.
//
// ca.pem may hold further certificates after the CA's own (for example the
// previous CA during a rotation); they are part of BundlePEM but not used for
// signing. The key may be PKCS#8 ("PRIVATE KEY") or SEC1 ("EC PRIVATE KEY")
// and must match the first certificate. If only one of the two files exists,
// or the CA has expired, LoadOrCreateCA fails rather than replace anything.
func LoadOrCreateCA(dir string, opts CAOpts) (*CA, error) {
	if dir == "" {
		return nil, errors.New("unable to load ca: directory cannot be empty")
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certExists, err := exists(certPath)
	if err != nil {
		return nil, fmt.Errorf("unable to load ca: %w", err)
	}
	keyExists, err := exists(keyPath)
	if err != nil {
		return nil, fmt.Errorf("unable to load ca: %w", err)
	}
	switch {
	case certExists && keyExists:
		return loadCA(certPath, keyPath, now)
	case certExists:
		return nil, fmt.Errorf("unable to load ca: %s exists but %s does not", certPath, keyPath)
	case keyExists:
		return nil, fmt.Errorf("unable to load ca: %s exists but %s does not", keyPath, certPath)
	}
	cn := opts.CommonName
	if cn == "" {
		cn = DefaultCACommonName
	}
	return createCA(dir, certPath, keyPath, cn, opts.URIs, now)
}

func exists(path string) (bool, error) {
	_, err := os.Lstat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, err
	}
}

func createCA(dir, certPath, keyPath, cn string, uris []*url.URL, now func() time.Time) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("unable to create ca directory: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("unable to generate ca key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("unable to create ca: %w", err)
	}
	t := now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		URIs:                  uris,
		NotBefore:             t.Add(-backdate),
		NotAfter:              t.AddDate(caValidityYears, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// Leaves only: no intermediate CA can be made under this root.
		MaxPathLen:     0,
		MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("unable to create ca certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("unable to parse created ca certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("unable to encode ca key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	// The key first: a crash in between leaves a key without a certificate,
	// which the next start reports instead of silently making a second CA.
	if err := atomicfile.WriteNew(keyPath, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("unable to save ca key: %w", err)
	}
	if err := atomicfile.WriteNew(certPath, encodeCerts(cert), 0o644); err != nil {
		_ = os.Remove(keyPath)
		return nil, fmt.Errorf("unable to save ca certificate: %w", err)
	}
	return &CA{cert: cert, signer: key, bundle: []*x509.Certificate{cert}, now: now}, nil
}

// LoadCA loads a CA an operator keeps: the certificate (PEM, the CA's own
// first; further certificates join BundlePEM) and its key (PKCS#8 or SEC1
// PEM). It fails if the certificate is not a CA's, has expired, or does not
// match the key. Only opts.Now is used.
func LoadCA(certPath, keyPath string, opts CAOpts) (*CA, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return loadCA(certPath, keyPath, opts.Now)
}

func loadCA(certPath, keyPath string, now func() time.Time) (*CA, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("unable to load ca certificate: %w", err)
	}
	certs, err := parseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("unable to load ca certificate %s: %w", certPath, err)
	}
	cert := certs[0]
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, fmt.Errorf("unable to load ca certificate %s: not a ca certificate", certPath)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("unable to load ca certificate %s: key usage does not allow certificate signing", certPath)
	}
	if t := now(); t.After(cert.NotAfter) {
		return nil, fmt.Errorf("unable to load ca certificate %s: expired at %s", certPath, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("unable to load ca key: %w", err)
	}
	signer, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("unable to load ca key %s: %w", keyPath, err)
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("unable to load ca key %s: does not match certificate %s", keyPath, certPath)
	}
	return &CA{cert: cert, signer: signer, bundle: certs, now: now}, nil
}

// Certificate returns the CA certificate that signs. Callers must not modify
// it.
func (c *CA) Certificate() *x509.Certificate {
	return c.cert
}

// BundlePEM returns the CA certificate(s) as PEM: what agents and relying
// parties pin as trust roots.
func (c *CA) BundlePEM() []byte {
	return encodeCerts(c.bundle...)
}

// validity is the validity period of a leaf the CA signs now for ttl:
// backdated for clock skew, and cut to the CA's own NotAfter. It refuses
// once the CA has expired, rather than sign a certificate already
// invalid.
func (c *CA) validity(ttl time.Duration) (notBefore, notAfter time.Time, err error) {
	now := c.now()
	notAfter = now.Add(ttl)
	if notAfter.After(c.cert.NotAfter) {
		notAfter = c.cert.NotAfter
	}
	if !notAfter.After(now) {
		return time.Time{}, time.Time{}, fmt.Errorf("ca certificate expired at %s", c.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return now.Add(-backdate), notAfter, nil
}

// newSerial returns a random positive serial of at most 128 bits.
func newSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("unable to generate serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

func encodeCerts(certs ...*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}

func parseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected pem block %q", block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("unable to parse certificate: %w", err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, errors.New("no pem certificate found")
	}
	if len(bytes.TrimSpace(data)) != 0 {
		return nil, errors.New("trailing data after pem certificates")
	}
	return certs, nil
}

func parseKeyPEM(data []byte) (crypto.Signer, error) {
	block, rest := pem.Decode(data)
	if block != nil && block.Type == "EC PARAMETERS" {
		block, rest = pem.Decode(rest) // as written by openssl ecparam -genkey
	}
	if block == nil {
		return nil, errors.New("no pem private key found")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("trailing data after pem private key")
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unexpected pem block %q, want \"PRIVATE KEY\"", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("unable to parse private key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot sign", key)
	}
	return signer, nil
}
