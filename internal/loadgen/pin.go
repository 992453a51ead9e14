package loadgen

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"sync"
	"time"

	"github.com/keybroker/keybroker/agent"
)

// pinVerified returns cfg, which verifies the server's certificate chain to
// cfg.RootCAs for cfg.ServerName, changed to verify each distinct server
// certificate once: a connection presenting a leaf certificate already
// verified, before the first expiry in the chain it was verified with, is
// accepted without building its chain again. Every connection still checks
// that the server holds the leaf's key (TLS 1.3 CertificateVerify, which
// crypto/tls checks whatever the configuration). A fleet of thousands of
// nodes connecting to one broker would otherwise spend a third of the
// generator's TLS work verifying the same chain over and over, CPU taken
// from the broker it measures.
func pinVerified(cfg *tls.Config) *tls.Config {
	return newPinned(cfg).config
}

// generatorTLS is the TLS configuration the generator's nodes connect to
// the broker at addr with: the agent's (trusting caPEM, the broker's CA
// bundle), its chain verification pinned.
func generatorTLS(addr string, caPEM []byte) (*tls.Config, error) {
	cfg, err := agent.TLSConfig(addr, caPEM, "")
	if err != nil {
		return nil, err
	}
	return pinVerified(cfg), nil
}

func newPinned(cfg *tls.Config) *pinned {
	p := &pinned{roots: cfg.RootCAs, name: cfg.ServerName, now: cfg.Time, config: cfg.Clone()}
	if p.now == nil {
		p.now = time.Now
	}
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
	now    func() time.Time
	config *tls.Config // the pinning configuration

	mu       sync.RWMutex
	verified []pin
}

// pin is a leaf certificate verified, and until when its chain is valid.
type pin struct {
	der   []byte
	until time.Time
}

var errNoServerCertificate = errors.New("the server presented no certificate")

func (p *pinned) verify(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errNoServerCertificate
	}
	leaf := cs.PeerCertificates[0]
	now := p.now()
	if p.known(leaf.Raw, now) {
		return nil
	}
	inters := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inters.AddCert(c)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: p.roots, Intermediates: inters, DNSName: p.name, CurrentTime: now})
	if err != nil {
		return err
	}
	p.add(leaf.Raw, chainExpiry(chains[0]))
	return nil
}

// chainExpiry is the first NotAfter of chain's certificates.
func chainExpiry(chain []*x509.Certificate) time.Time {
	until := chain[0].NotAfter
	for _, c := range chain[1:] {
		if c.NotAfter.Before(until) {
			until = c.NotAfter
		}
	}
	return until
}

// maxPinned bounds the certificates remembered: a broker rotating its
// serving certificate during a run adds one each time.
const maxPinned = 16

// known says whether der was verified with a chain valid at now.
func (p *pinned) known(der []byte, now time.Time) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	for _, v := range p.verified {
		if bytes.Equal(v.der, der) {
			return now.Before(v.until)
		}
	}
	return false
}

// add remembers der, verified with a chain valid until until, once: the
// first handshakes of a run verify the same certificate at once.
func (p *pinned) add(der []byte, until time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, v := range p.verified {
		if bytes.Equal(v.der, der) {
			p.verified[i].until = until
			return
		}
	}
	if len(p.verified) < maxPinned {
		p.verified = append(p.verified, pin{der: bytes.Clone(der), until: until})
	}
}
