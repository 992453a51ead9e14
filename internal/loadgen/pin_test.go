package loadgen

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker/issue"
)

// tlsServer serves TLS 1.3 handshakes with cert on loopback until the test
// ends and returns its address.
func tlsServer(t *testing.T, cert tls.Certificate) string {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.(*tls.Conn).Handshake()
				_, _ = c.Read(make([]byte, 1))
			}()
		}
	}()
	return l.Addr().String()
}

// testCA is a broker CA, its bundle (PEM) and a serving certificate of it
// for 127.0.0.1.
func testCA(t *testing.T) (caPEM []byte, serving tls.Certificate) {
	t.Helper()
	ca, err := issue.LoadOrCreateCA(t.TempDir(), issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	serving, err = ca.ServingCertificate([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Certificate().Raw}), serving
}

func handshake(addr string, cfg *tls.Config) error {
	d := tls.Dialer{Config: cfg}
	c, err := d.DialContext(context.Background(), "tcp", addr)
	if err != nil {
		return err
	}
	return c.Close()
}

func TestPinVerified(t *testing.T) {
	caPEM, serving := testCA(t)
	addr := tlsServer(t, serving)
	base, err := agent.TLSConfig(addr, caPEM, "")
	if err != nil {
		t.Fatal(err)
	}
	pin := newPinned(base)
	cfg := pin.config
	for i := range 3 {
		if err := handshake(addr, cfg); err != nil {
			t.Fatalf("handshake %d with the broker's serving certificate: %v", i, err)
		}
		if len(pin.verified) != 1 {
			t.Fatalf("after handshake %d: %d certificates verified, want 1", i, len(pin.verified))
		}
	}

	// A serving certificate of another CA is refused, though the pinned
	// configuration has verified one already.
	_, other := testCA(t)
	if err := handshake(tlsServer(t, other), cfg); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("a certificate of another CA: got %v, want an unknown authority error", err)
	}

	// The pinned leaf with a key that is not its own: the server cannot
	// sign the handshake, and the client checks that on every connection.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	stolen := tls.Certificate{Certificate: serving.Certificate, PrivateKey: key}
	if err := handshake(tlsServer(t, stolen), cfg); err == nil || !strings.Contains(err.Error(), "signature") {
		t.Fatalf("the pinned certificate without its key: got %v, want a signature error", err)
	}

	// The right CA, but the certificate is not for the name dialled.
	named, err := agent.TLSConfig("localhost:1", caPEM, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(addr, pinVerified(named)); err == nil || !strings.Contains(err.Error(), "localhost") {
		t.Fatalf("a certificate for another name: got %v, want a name mismatch", err)
	}
}

func TestPinVerifiedBounded(t *testing.T) {
	ca, err := issue.LoadOrCreateCA(t.TempDir(), issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Certificate().Raw})
	base, err := agent.TLSConfig("127.0.0.1:1", caPEM, "")
	if err != nil {
		t.Fatal(err)
	}
	// More serving certificates of the CA than are remembered: each is
	// verified and accepted, and the set stays bounded.
	pin := newPinned(base)
	for i := range maxPinned + 4 {
		cert, err := ca.ServingCertificate([]string{"127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		if err := handshake(tlsServer(t, cert), pin.config); err != nil {
			t.Fatalf("serving certificate %d: %v", i, err)
		}
	}
	if n := len(pin.verified); n != maxPinned {
		t.Fatalf("%d certificates remembered, want %d", n, maxPinned)
	}
}

// connState is the state of a handshake with a server presenting cert's
// chain.
func connState(t *testing.T, cert tls.Certificate) tls.ConnectionState {
	t.Helper()
	var cs tls.ConnectionState
	for _, der := range cert.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		cs.PeerCertificates = append(cs.PeerCertificates, c)
	}
	return cs
}

// The first handshakes of a run verify the same certificate at once: it is
// remembered once, so that a rotated certificate still finds room.
func TestPinVerifiedConcurrentFirst(t *testing.T) {
	caPEM, serving := testCA(t)
	base, err := agent.TLSConfig("127.0.0.1:1", caPEM, "")
	if err != nil {
		t.Fatal(err)
	}
	pin := newPinned(base)
	cs := connState(t, serving)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- pin.verify(cs)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := len(pin.verified); n != 1 {
		t.Errorf("%d entries for one certificate, want 1", n)
	}
	if err := pin.verify(tls.ConnectionState{}); !errors.Is(err, errNoServerCertificate) {
		t.Errorf("no certificate: %v", err)
	}
}

// A remembered certificate is accepted only until the first expiry in its
// chain, on the configuration's clock; after it, it is verified again, and
// refused as expired.
func TestPinVerifiedExpiry(t *testing.T) {
	caPEM, serving := testCA(t)
	base, err := agent.TLSConfig("127.0.0.1:1", caPEM, "")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	base.Time = func() time.Time { return now }
	pin := newPinned(base)
	cs := connState(t, serving)
	if err := pin.verify(cs); err != nil {
		t.Fatal(err)
	}
	until := cs.PeerCertificates[0].NotAfter
	if got := pin.verified[0].until; !got.Equal(until) {
		t.Errorf("remembered until %v, want the leaf's expiry %v (the CA's is later)", got, until)
	}
	now = until.Add(-time.Second)
	if err := pin.verify(cs); err != nil {
		t.Errorf("a second before expiry: %v", err)
	}
	now = until.Add(time.Second)
	var invalid x509.CertificateInvalidError
	if err := pin.verify(cs); !errors.As(err, &invalid) || invalid.Reason != x509.Expired {
		t.Errorf("after expiry: %v, want the certificate refused as expired", err)
	}
}
