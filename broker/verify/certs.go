package verify

import (
	"bytes"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"

	"crypto/x509"
)

// Trust configuration, read the same way by the broker (broker.hcl) and the
// Vault auth method (its config endpoint).

// ValidEKHash reports whether s is an EK hash as EKHash writes it: the
// lowercase hex of 32 bytes.
func ValidEKHash(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == 32 && hex.EncodeToString(b) == s
}

// ParseCertificates reads the certificates of an EK CA's roots or
// intermediates: PEM (every CERTIFICATE block; other blocks are skipped) or,
// when data holds no PEM block, DER.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	if !bytes.Contains(data, []byte("-----BEGIN ")) {
		certs, err := x509.ParseCertificates(data)
		switch {
		case err != nil:
			return nil, fmt.Errorf("is neither PEM nor a DER certificate: %w", err)
		case len(certs) == 0:
			return nil, errors.New("holds no certificate")
		}
		return certs, nil
	}
	return ParsePEMCertificates(data)
}

// ParsePEMCertificates reads every CERTIFICATE block of PEM data (other
// blocks are skipped); it holds at least one.
func ParsePEMCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for i, rest := 1, data; ; i++ {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", i, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("holds no PEM certificate")
	}
	return certs, nil
}
