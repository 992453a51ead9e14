package softtpm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math/big"
	"time"
)

// EKCA is a TPM vendor's EK certificate authority in software, shaped as
// vendors' are: an ECDSA P-256 root and an ECDSA P-256 intermediate that
// issues the EK certificates. A node made with Opts.EKCA presents its EK
// certificate and the intermediate (ek_intermediates), so a broker trusts
// it with the root alone (an ek_ca block's roots). Its methods are safe for
// concurrent use.
type EKCA struct {
	root, inter *x509.Certificate
	interKey    *ecdsa.PrivateKey
	rootPEM     []byte
	san         []byte // the EK certificates' SubjectAltName value
}

// The EK certificates' TPM subject alternative name (TCG EK Credential
// Profile): manufacturer, model and version of a TPM that is not one.
const (
	ekManufacturer = "id:534F4654" // "SOFT"
	ekModel        = "softtpm"
	ekVersion      = "id:00010000"
)

var (
	oidSubjectAltName  = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidTPMManufacturer = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel        = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion      = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
	oidEKCertificate   = asn1.ObjectIdentifier{2, 23, 133, 8, 1} // tcg-kp-EKCertificate
)

// ekCertLife is how long the CA and the EK certificates are valid.
const ekCertLife = 10 * 365 * 24 * time.Hour

// NewEKCA makes a fresh root and intermediate, named after name in their
// subjects.
func NewEKCA(name string) (*EKCA, error) {
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("unable to generate the EK CA root key: %w", err)
	}
	interKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("unable to generate the EK CA intermediate key: %w", err)
	}
	san, err := tpmSAN()
	if err != nil {
		return nil, fmt.Errorf("unable to encode the TPM subject alternative name: %w", err)
	}
	now := time.Now()
	caTemplate := func(cn string, pathLen int) *x509.Certificate {
		return &x509.Certificate{
			SerialNumber: big.NewInt(1),
			Subject:      pkix.Name{Organization: []string{"keybroker softtpm"}, CommonName: cn},
			NotBefore:    now.Add(-time.Hour), NotAfter: now.Add(ekCertLife),
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			BasicConstraintsValid: true, IsCA: true, MaxPathLen: pathLen, MaxPathLenZero: pathLen == 0,
		}
	}
	rootTmpl := caTemplate(name+" EK Root CA", 1)
	root, err := createCert(rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		return nil, fmt.Errorf("unable to create the EK CA root: %w", err)
	}
	interTmpl := caTemplate(name+" EK Issuing CA", 0)
	interTmpl.SerialNumber = big.NewInt(2)
	inter, err := createCert(interTmpl, root, &interKey.PublicKey, rootKey)
	if err != nil {
		return nil, fmt.Errorf("unable to create the EK CA intermediate: %w", err)
	}
	return &EKCA{
		root: root, inter: inter, interKey: interKey, san: san,
		rootPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}),
	}, nil
}

func createCert(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// Root returns the root certificate, the one a broker trusts.
func (ca *EKCA) Root() *x509.Certificate { return ca.root }

// RootPEM returns the root certificate in PEM, as an ek_ca block's roots
// read it.
func (ca *EKCA) RootPEM() []byte { return append([]byte(nil), ca.rootPEM...) }

// Intermediate returns the issuing certificate, DER, as a node presents it
// in ek_intermediates.
func (ca *EKCA) Intermediate() []byte { return append([]byte(nil), ca.inter.Raw...) }

// Issue returns a DER EK certificate for ek issued by the intermediate, as
// a TPM vendor makes one: empty subject, a critical subject alternative
// name with the TPM manufacturer, model and version, key usage
// keyEncipherment (RSA) or keyAgreement (ECC), the tcg-kp-EKCertificate
// extended key usage and a random serial number.
func (ca *EKCA) Issue(ek crypto.PublicKey) ([]byte, error) {
	usage := x509.KeyUsageKeyAgreement
	if _, ok := ek.(*ecdsa.PublicKey); !ok {
		usage = x509.KeyUsageKeyEncipherment
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("unable to make a serial number: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    now.Add(-time.Hour), NotAfter: now.Add(ekCertLife),
		KeyUsage:              usage,
		BasicConstraintsValid: true,
		UnknownExtKeyUsage:    []asn1.ObjectIdentifier{oidEKCertificate},
		ExtraExtensions:       []pkix.Extension{{Id: oidSubjectAltName, Critical: true, Value: ca.san}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.inter, ek, ca.interKey)
	if err != nil {
		return nil, fmt.Errorf("unable to issue the EK certificate: %w", err)
	}
	return der, nil
}

// tpmSAN is a SubjectAltName value: GeneralNames holding one
// directoryName with the TPM's manufacturer, model and version.
func tpmSAN() ([]byte, error) {
	rdn, err := asn1.Marshal(pkix.RDNSequence{{
		{Type: oidTPMManufacturer, Value: ekManufacturer},
		{Type: oidTPMModel, Value: ekModel},
		{Type: oidTPMVersion, Value: ekVersion},
	}})
	if err != nil {
		return nil, err
	}
	dirName, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: rdn})
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(asn1.RawValue{Tag: asn1.TagSequence, IsCompound: true, Bytes: dirName})
}
