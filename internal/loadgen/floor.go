package loadgen

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/internal/softtpm"
	"github.com/keybroker/keybroker/internal/tpmcred"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/sealing"
)

// Floor is the crypto floor of one release, in ms per operation: what no
// broker can avoid for a node of this key type connecting fresh. It
// matches the broker's BenchmarkCryptoFloor plus the server's side of one
// TLS 1.3 handshake and, for nodes with EK certificates, one EK certificate
// chain verification.
type Floor struct {
	// AKVerifyMs: one quote signature verified with the AK.
	AKVerifyMs float64 `json:"ak_verify_ms"`
	// MakeCredentialMs: one challenge secret encrypted to the EK (parsed
	// once, as verify.NodeIdentity.EKKey).
	MakeCredentialMs float64 `json:"make_credential_ms"`
	// ImportBlobMs: sealing.SealCredentialTo of a 32-byte payload to the
	// EK (parsed once).
	ImportBlobMs float64 `json:"import_blob_ms"`
	// CertificateMs: one P-256 key and its certificate signed by a CA.
	CertificateMs float64 `json:"certificate_ms"`
	// TLSHandshakeMs: the server's side of a TLS 1.3 handshake with a
	// P-256 certificate, time blocked reading the client excluded.
	TLSHandshakeMs float64 `json:"tls_handshake_ms"`
	// EKChainMs, for nodes with EK certificates (Opts.EKCA): one node's
	// EK certificate and intermediate parsed and its chain verified to the
	// CA's root (x509 Certificate.Verify), as the broker does once per
	// node. Absent otherwise.
	EKChainMs float64 `json:"ek_chain_ms,omitempty"`
	TotalMs   float64 `json:"total_ms"`
}

// floorBudget is how long each operation is repeated (at least
// floorMinRuns times); the fastest mean is not sought, the typical one is.
const (
	floorBudget  = 300 * time.Millisecond
	floorMinRuns = 20
)

// MeasureFloor times each floor operation in a loop, in process, with
// node's keys and, with ekCA (nil: none), its EK certificate.
func MeasureFloor(node *softtpm.Node, ekCA *softtpm.EKCA) (Floor, error) {
	ops, err := floorOps(node)
	if err != nil {
		return Floor{}, err
	}
	var f Floor
	out := []*float64{&f.AKVerifyMs, &f.MakeCredentialMs, &f.ImportBlobMs, &f.CertificateMs, &f.TLSHandshakeMs}
	if ekCA != nil {
		verify, err := ekChainVerifier(node, ekCA)
		if err != nil {
			return Floor{}, err
		}
		ops, out = append(ops, timed(verify)), append(out, &f.EKChainMs)
	}
	for i, op := range ops {
		ms, err := timeOp(op)
		if err != nil {
			return Floor{}, fmt.Errorf("unable to measure the crypto floor: %w", err)
		}
		*out[i] = ms
		f.TotalMs += ms
	}
	return f, nil
}

// timeOp is op's mean cost in ms; op returns the cost of one run.
func timeOp(op func() (time.Duration, error)) (float64, error) {
	var total time.Duration
	runs := 0
	for start := time.Now(); runs < floorMinRuns || time.Since(start) < floorBudget; runs++ {
		d, err := op()
		if err != nil {
			return 0, err
		}
		total += d
	}
	return float64(total) / float64(runs) / float64(time.Millisecond), nil
}

// timed is an operation whose cost is its wall time.
func timed(op func() error) func() (time.Duration, error) {
	return func() (time.Duration, error) {
		t0 := time.Now()
		err := op()
		return time.Since(t0), err
	}
}

// floorOps are the floor's operations in Floor's field order.
func floorOps(node *softtpm.Node) ([]func() (time.Duration, error), error) {
	verify, err := akVerifier(node)
	if err != nil {
		return nil, err
	}
	issue, tlsCfg, err := certIssuer()
	if err != nil {
		return nil, err
	}
	ek, err := tpmcred.NewKey(node.EKPublic())
	if err != nil {
		return nil, err
	}
	akName := node.AKName()
	secret, payload := make([]byte, challenge.SecretSize), make([]byte, 32)
	return []func() (time.Duration, error){
		timed(verify),
		timed(func() error {
			_, _, err := challenge.MakeCredentialTo(ek, akName, secret)
			return err
		}),
		timed(func() error {
			_, err := sealing.SealCredentialTo(ek, "floor", pb.CredentialType_TLS_CERTIFICATE, payload, nil)
			return err
		}),
		timed(issue),
		func() (time.Duration, error) { return serverHandshake(tlsCfg) },
	}, nil
}

// akVerifier checks one of node's quote signatures with its AK.
func akVerifier(node *softtpm.Node) (func() error, error) {
	quotes, err := node.Quote(make([]byte, challenge.SecretSize))
	if err != nil || len(quotes) == 0 {
		return nil, fmt.Errorf("unable to quote for the crypto floor: %w", err)
	}
	akPub, err := tpm2.Unmarshal[tpm2.TPMTPublic](node.ChallengeRequest().GetAkPublic())
	if err != nil {
		return nil, err
	}
	key, err := tpm2.Pub(*akPub)
	if err != nil {
		return nil, err
	}
	sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](quotes[0].GetSignature())
	if err != nil {
		return nil, err
	}
	attest := quotes[0].GetAttest()
	bad := errors.New("quote signature does not verify")
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		s, err := sig.Signature.ECDSA()
		if err != nil {
			return nil, err
		}
		r, ss := new(big.Int).SetBytes(s.SignatureR.Buffer), new(big.Int).SetBytes(s.SignatureS.Buffer)
		return func() error {
			d := sha256.Sum256(attest)
			if !ecdsa.Verify(k, d[:], r, ss) {
				return bad
			}
			return nil
		}, nil
	case *rsa.PublicKey:
		s, err := sig.Signature.RSASSA()
		if err != nil {
			return nil, err
		}
		return func() error {
			d := sha256.Sum256(attest)
			if rsa.VerifyPKCS1v15(k, crypto.SHA256, d[:], s.Sig.Buffer) != nil {
				return bad
			}
			return nil
		}, nil
	}
	return nil, fmt.Errorf("AK key %T not supported", key)
}

// ekChainVerifier parses node's EK certificate and the intermediates it
// presents and verifies the chain to ekCA's root, as the broker does once
// per node (its TPM subject alternative name marked handled, as the
// broker's verify does).
func ekChainVerifier(node *softtpm.Node, ekCA *softtpm.EKCA) (func() error, error) {
	der, inters := node.EKCertificate()
	if der == nil {
		return nil, errors.New("the node has no EK certificate")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ekCA.Root())
	verify := func() error {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		for _, d := range inters {
			c, err := x509.ParseCertificate(d)
			if err != nil {
				return err
			}
			pool.AddCert(c)
		}
		cert.UnhandledCriticalExtensions = slices.DeleteFunc(cert.UnhandledCriticalExtensions,
			func(id asn1.ObjectIdentifier) bool { return id.Equal(oidSubjectAltName) })
		_, err = cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: pool,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		return err
	}
	if err := verify(); err != nil {
		return nil, fmt.Errorf("the node's EK certificate does not chain to the EK CA: %w", err)
	}
	return verify, nil
}

var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// certIssuer returns a P-256 key-and-certificate maker signing with a
// fresh CA, and a TLS server configuration with one of its certificates.
func certIssuer() (func() error, *tls.Config, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "floor CA"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, nil, err
	}
	caCert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "node-floor"},
		DNSNames: []string{"floor.nodes.test"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(2 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	issue := func() (*ecdsa.PrivateKey, []byte, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, key.Public(), caKey)
		return key, der, err
	}
	key, der, err := issue()
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	cfg := &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		RootCAs:      pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13,
	}
	return func() error { _, _, err := issue(); return err }, cfg, nil
}

// serverHandshake runs one TLS 1.3 handshake over loopback TCP and returns
// the server's work: the handshake's time less the time the server spent
// blocked reading the client.
func serverHandshake(cfg *tls.Config) (time.Duration, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	clientErr := make(chan error, 1)
	go func() {
		c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: cfg.RootCAs, ServerName: cfg.ServerName, MinVersion: tls.VersionTLS13})
		if err == nil {
			// Wait for the server to finish reading the client's Finished.
			_, _ = c.Read(make([]byte, 1))
			c.Close()
		}
		clientErr <- err
	}()
	raw, err := l.Accept()
	if err != nil {
		return 0, err
	}
	conn := &timedConn{Conn: raw}
	t0 := time.Now()
	srv := tls.Server(conn, cfg)
	err = srv.HandshakeContext(context.Background())
	work := time.Since(t0) - conn.reading
	srv.Close()
	if cerr := <-clientErr; err == nil {
		err = cerr
	}
	return work, err
}

// timedConn adds up the time spent in Read.
type timedConn struct {
	net.Conn
	reading time.Duration
}

func (c *timedConn) Read(p []byte) (int, error) {
	t0 := time.Now()
	n, err := c.Conn.Read(p)
	c.reading += time.Since(t0)
	return n, err
}
