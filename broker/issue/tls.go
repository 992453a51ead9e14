package issue

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

const (
	// MaxTLSTTL is the longest lifetime IssueTLS accepts.
	MaxTLSTTL = 365 * 24 * time.Hour
	// ServingTTL is the lifetime of ServingCertificate's certificates.
	ServingTTL = 30 * 24 * time.Hour
	// maxCommonName is the X.509 upper bound for a CN (ub-common-name).
	maxCommonName = 64
)

// TLSTemplate describes a TLS certificate to issue. It is validated by
// IssueTLS: TTL in (0, MaxTLSTTL], and at least a common name or a name.
type TLSTemplate struct {
	// CommonName is the subject CN. Verifiers match names against DNSNames
	// and IPAddresses only; the CN is not copied into them.
	CommonName string
	// Organization is the subject O (Kubernetes reads it as the client
	// certificate's groups).
	Organization []string
	// DNSNames are subject alternative names; a leading "*." wildcard is
	// allowed.
	DNSNames []string
	// IPAddresses are subject alternative names.
	IPAddresses []net.IP
	// TTL is the lifetime from now. NotAfter is cut to the CA's own NotAfter
	// when it would outlive the CA.
	TTL time.Duration
	// Server and Client select the extended key usages serverAuth and
	// clientAuth; when both are false the certificate gets both.
	Server, Client bool
}

// TLSCredential is an issued key and certificate.
type TLSCredential struct {
	// KeyPEM is the new private key, PKCS#8 in a "PRIVATE KEY" block.
	KeyPEM []byte
	// CertificatePEM is the leaf certificate.
	CertificatePEM []byte
	// ChainPEM holds the issuing CA certificate, which follows the leaf in a
	// TLS handshake (append it to CertificatePEM for a full chain file).
	ChainPEM []byte
	// Serial is the certificate serial number in lowercase hex without
	// leading zeros (big.Int.Text(16)).
	Serial string
	// NotBefore and NotAfter are the validity period.
	NotBefore, NotAfter time.Time
	// Certificate is the parsed leaf.
	Certificate *x509.Certificate
}

// IssueTLS makes a fresh ECDSA P-256 key and a certificate for it signed by
// the CA, following t. It returns an error naming every problem with t.
func (c *CA) IssueTLS(t TLSTemplate) (*TLSCredential, error) {
	key, cert, err := c.issueTLS(t)
	if err != nil {
		return nil, fmt.Errorf("unable to issue tls certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("unable to issue tls certificate: unable to encode key: %w", err)
	}
	return &TLSCredential{
		KeyPEM:         pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		CertificatePEM: encodeCerts(cert),
		ChainPEM:       encodeCerts(c.cert),
		Serial:         cert.SerialNumber.Text(16),
		NotBefore:      cert.NotBefore,
		NotAfter:       cert.NotAfter,
		Certificate:    cert,
	}, nil
}

// ServingCertificate returns a certificate for the broker's own listener,
// valid for ServingTTL with serverAuth only. Each name is an IP address if it
// parses as one and a DNS name otherwise; the first name is also the CN. The
// chain includes the CA certificate.
func (c *CA) ServingCertificate(names []string) (tls.Certificate, error) {
	if len(names) == 0 {
		return tls.Certificate{}, errors.New("unable to issue serving certificate: at least one name is required")
	}
	t := TLSTemplate{TTL: ServingTTL, Server: true}
	if len(names[0]) <= maxCommonName {
		t.CommonName = names[0]
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			t.IPAddresses = append(t.IPAddresses, ip)
		} else {
			t.DNSNames = append(t.DNSNames, n)
		}
	}
	key, cert, err := c.issueTLS(t)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("unable to issue serving certificate: %w", err)
	}
	return tls.Certificate{
		Certificate: [][]byte{cert.Raw, c.cert.Raw},
		PrivateKey:  key,
		Leaf:        cert,
	}, nil
}

// IssueTLSForKey signs a certificate following t for pub, a key the
// caller holds (such as a key inside a node's TPM, whose certify
// broker/verify checked). KeyPEM is empty.
func (c *CA) IssueTLSForKey(t TLSTemplate, pub crypto.PublicKey) (*TLSCredential, error) {
	cert, err := c.signTLS(t, pub)
	if err != nil {
		return nil, fmt.Errorf("unable to issue tls certificate: %w", err)
	}
	return &TLSCredential{
		CertificatePEM: encodeCerts(cert),
		ChainPEM:       encodeCerts(c.cert),
		Serial:         cert.SerialNumber.Text(16),
		NotBefore:      cert.NotBefore,
		NotAfter:       cert.NotAfter,
		Certificate:    cert,
	}, nil
}

func (c *CA) issueTLS(t TLSTemplate) (crypto.Signer, *x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("unable to generate key: %w", err)
	}
	cert, err := c.signTLS(t, key.Public())
	if err != nil {
		return nil, nil, err
	}
	return key, cert, nil
}

// signTLS signs a certificate following t for pub.
func (c *CA) signTLS(t TLSTemplate, pub crypto.PublicKey) (*x509.Certificate, error) {
	if err := t.validate(); err != nil {
		return nil, fmt.Errorf("invalid template: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	notBefore, notAfter, err := c.validity(t.TTL)
	if err != nil {
		return nil, err
	}
	var eku []x509.ExtKeyUsage
	if t.Server || !t.Client {
		eku = append(eku, x509.ExtKeyUsageServerAuth)
	}
	if t.Client || !t.Server {
		eku = append(eku, x509.ExtKeyUsageClientAuth)
	}
	der, err := c.signLeaf(&leafTemplate{
		serial:       serial,
		commonName:   t.CommonName,
		organization: t.Organization,
		dnsNames:     t.DNSNames,
		ipAddresses:  t.IPAddresses,
		notBefore:    notBefore,
		notAfter:     notAfter,
		keyUsage:     x509.KeyUsageDigitalSignature,
		extKeyUsage:  eku,
	}, pub)
	if err != nil {
		return nil, fmt.Errorf("unable to sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("unable to parse issued certificate: %w", err)
	}
	return cert, nil
}

// validate reports every problem with t.
func (t TLSTemplate) validate() error {
	var errs []error
	switch {
	case t.TTL <= 0:
		errs = append(errs, errors.New("ttl must be positive"))
	case t.TTL > MaxTLSTTL:
		errs = append(errs, fmt.Errorf("ttl %s exceeds the maximum of %s", t.TTL, MaxTLSTTL))
	}
	if t.CommonName == "" && len(t.DNSNames) == 0 && len(t.IPAddresses) == 0 {
		errs = append(errs, errors.New("a common name, dns name or ip address is required"))
	}
	if len(t.CommonName) > maxCommonName {
		errs = append(errs, fmt.Errorf("common name is longer than %d characters", maxCommonName))
	}
	for _, n := range t.DNSNames {
		if err := validateDNSName(n); err != nil {
			errs = append(errs, fmt.Errorf("dns name %q %w", n, err))
		}
	}
	for _, ip := range t.IPAddresses {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			errs = append(errs, fmt.Errorf("ip address %v is invalid", ip))
		}
	}
	return errors.Join(errs...)
}

// validateDNSName returns an error completing "dns name %q ...". It accepts
// letters, digits, '-' and '_' in labels of 1 to 63 characters, and "*" as a
// whole first label.
func validateDNSName(name string) error {
	if name == "" {
		return errors.New("cannot be empty")
	}
	if len(name) > 253 {
		return errors.New("is longer than 253 characters")
	}
	for i, label := range strings.Split(name, ".") {
		if label == "*" && i == 0 && strings.Contains(name, ".") {
			continue
		}
		if label == "" || len(label) > 63 {
			return errors.New("has an empty or overlong label")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return errors.New("has a label starting or ending with '-'")
		}
		for j := 0; j < len(label); j++ {
			switch ch := label[j]; {
			case 'a' <= ch && ch <= 'z', 'A' <= ch && ch <= 'Z', '0' <= ch && ch <= '9', ch == '-', ch == '_':
			default:
				return fmt.Errorf("contains invalid character %q", ch)
			}
		}
	}
	return nil
}
