package loadgen

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"sync"
	"time"
)

// pinVerified returns cfg, which verifies the server's certificate chain to
// cfg.RootCAs for cfg.ServerName, changed to verify each distinct server
// certificate once: a connection presenting a leaf certificate already
// verified (and not expired since) is accepted without building its chain
// again. Every connection still checks that the server holds the leaf's
// key (TLS 1.3 CertificateVerify, which crypto/tls checks whatever the
// configuration). A fleet of thousands of nodes connecting to one broker
// would otherwise spend a third of the generator's TLS work verifying the
// same chain over and over, CPU taken from the broker it measures.
func pinVerified(cfg *tls.Config) *tls.Config {
	return newPinned(cfg).config
}

func newPinned(cfg *tls.Config) *pinned {
	p := &pinned{roots: cfg.RootCAs, name: cfg.ServerName, config: cfg.Clone()}
	// The chain is verified by VerifyConnection, which crypto/tls calls on
	// every handshake; InsecureSkipVerify only turns off its own
	// verification, not the CertificateVerify signature check.
	p.config.InsecureSkipVerify = true
	p.config.VerifyConnection = p.verify
	return p
}

// pinned is the set of server certificates verified so far.
type pinned struct {
	roots  *x509.CertPool
	name   string
	config *tls.Config // the pinning configuration

	mu       sync.RWMutex
	verified [][]byte // leaf certificates' DER
}

var errNoServerCertificate = errors.New("the server presented no certificate")

func (p *pinned) verify(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errNoServerCertificate
	}
	leaf := cs.PeerCertificates[0]
	if p.known(leaf.Raw) && time.Now().Before(leaf.NotAfter) {
		return nil
	}
	inters := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inters.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: p.roots, Intermediates: inters, DNSName: p.name}); err != nil {
		return err
	}
	p.mu.Lock()
	if len(p.verified) < maxPinned {
		p.verified = append(p.verified, bytes.Clone(leaf.Raw))
	}
	p.mu.Unlock()
	return nil
}

// maxPinned bounds the certificates remembered: a broker rotating its
// serving certificate during a run adds one each time.
const maxPinned = 16

func (p *pinned) known(der []byte) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	for _, v := range p.verified {
		if bytes.Equal(v, der) {
			return true
		}
	}
	return false
}
