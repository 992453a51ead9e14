package etcdtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// certValidity is how long the generated certificates are valid; a test
// never runs that long.
const certValidity = 24 * time.Hour

func (c *Cluster) serverCert() string { return filepath.Join(c.dir, "server.crt") }
func (c *Cluster) serverKey() string  { return filepath.Join(c.dir, "server.key") }

// writeCerts creates a CA, a server certificate every member uses for client
// and peer traffic (127.0.0.1, ::1, localhost), and a client certificate,
// all ECDSA P-256, writes them as PEM into the cluster's directory and
// builds the client's TLS configuration.
func (c *Cluster) writeCerts() error {
	now := time.Now()
	caKey, _, caDER, err := issue(&x509.Certificate{
		Subject:               pkix.Name{CommonName: "etcdtest CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, nil, nil)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return fmt.Errorf("unable to parse the generated CA certificate: %w", err)
	}
	_, srvKey, srvDER, err := issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "etcdtest server"},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(certValidity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:    []string{"localhost"},
	}, ca, caKey)
	if err != nil {
		return err
	}
	_, cliKey, cliDER, err := issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "etcdtest client"},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(certValidity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca, caKey)
	if err != nil {
		return err
	}
	c.CAFile = filepath.Join(c.dir, "ca.crt")
	c.CertFile = filepath.Join(c.dir, "client.crt")
	c.KeyFile = filepath.Join(c.dir, "client.key")
	files := []struct {
		path, typ string
		der       []byte
	}{
		{c.CAFile, "CERTIFICATE", caDER},
		{c.serverCert(), "CERTIFICATE", srvDER},
		{c.serverKey(), "PRIVATE KEY", srvKey},
		{c.CertFile, "CERTIFICATE", cliDER},
		{c.KeyFile, "PRIVATE KEY", cliKey},
	}
	for _, f := range files {
		data := pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der})
		if err := os.WriteFile(f.path, data, 0o600); err != nil {
			return fmt.Errorf("unable to write %s: %w", filepath.Base(f.path), err)
		}
	}
	return c.loadClientTLS()
}

// issue creates a P-256 key and a certificate for it from tmpl, signed by
// parent and parentKey or self-signed when parent is nil. It returns the key,
// the key in PKCS #8 DER and the certificate in DER.
func issue(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*ecdsa.PrivateKey, []byte, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("unable to generate a key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("unable to draw a serial number: %w", err)
	}
	tmpl.SerialNumber = serial
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("unable to create the %q certificate: %w", tmpl.Subject.CommonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("unable to encode a key: %w", err)
	}
	return key, keyDER, der, nil
}

// loadClientTLS builds the client's TLS configuration from the files just
// written, so a configuration read from them (as an operator's would be)
// is what the tests exercise.
func (c *Cluster) loadClientTLS() error {
	pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return fmt.Errorf("unable to load the client certificate: %w", err)
	}
	caPEM, err := os.ReadFile(c.CAFile)
	if err != nil {
		return fmt.Errorf("unable to read the CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("no certificate in %s", filepath.Base(c.CAFile))
	}
	c.tlsConf = &tls.Config{
		Certificates: []tls.Certificate{pair},
		RootCAs:      pool,
		MinVersion:   tls.VersionTLS12,
	}
	return nil
}
