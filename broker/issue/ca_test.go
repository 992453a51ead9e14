package issue

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

func newTestCA(t *testing.T, now time.Time) (*CA, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := LoadOrCreateCA(dir, CAOpts{Now: fixedClock(now)})
	if err != nil {
		t.Fatalf("LoadOrCreateCA: %v", err)
	}
	return ca, dir
}

func TestCreateThenLoad(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "ca")
	created, err := LoadOrCreateCA(dir, CAOpts{CommonName: "test CA", Now: fixedClock(t0)})
	if err != nil {
		t.Fatal(err)
	}
	cert := created.Certificate()
	switch {
	case cert.Subject.CommonName != "test CA":
		t.Errorf("CN = %q, want %q", cert.Subject.CommonName, "test CA")
	case !cert.IsCA || !cert.BasicConstraintsValid:
		t.Errorf("not a CA certificate")
	case cert.KeyUsage&x509.KeyUsageCertSign == 0:
		t.Errorf("key usage %v lacks cert sign", cert.KeyUsage)
	case !cert.NotBefore.Equal(t0.Add(-time.Minute)):
		t.Errorf("NotBefore = %v, want %v", cert.NotBefore, t0.Add(-time.Minute))
	case !cert.NotAfter.Equal(t0.AddDate(10, 0, 0)):
		t.Errorf("NotAfter = %v, want %v", cert.NotAfter, t0.AddDate(10, 0, 0))
	case cert.CheckSignatureFrom(cert) != nil:
		t.Errorf("not self-signed: %v", cert.CheckSignatureFrom(cert))
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("CA key is %T, want ECDSA P-256", cert.PublicKey)
	}
	if cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.BitLen() > 128 {
		t.Errorf("serial %v is not a positive 128-bit number", cert.SerialNumber)
	}
	assertMode(t, filepath.Join(dir, CAKeyFile), 0o600)
	assertMode(t, dir, 0o700)
	assertNoTempFiles(t, dir)

	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
		t.Errorf("key file is not a PKCS#8 PEM block")
	}

	// A different CN on load is ignored: the CA on disk wins.
	loaded, err := LoadOrCreateCA(dir, CAOpts{CommonName: "other", Now: fixedClock(t0.Add(time.Hour))})
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Certificate().Equal(created.Certificate()) {
		t.Errorf("loaded CA differs from created CA")
	}
	if !bytes.Equal(loaded.BundlePEM(), created.BundlePEM()) {
		t.Errorf("BundlePEM differs after load")
	}
	if !created.signer.Public().(*ecdsa.PublicKey).Equal(loaded.signer.Public()) {
		t.Errorf("loaded key differs from created key")
	}
	// What the loaded CA signs verifies against the created bundle.
	cred, err := loaded.IssueTLS(TLSTemplate{CommonName: "x", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(created.BundlePEM())
	if _, err := cred.Certificate.Verify(x509.VerifyOptions{
		Roots: pool, CurrentTime: t0.Add(time.Hour), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		t.Errorf("certificate from loaded CA does not verify: %v", err)
	}
}

func TestDefaultCommonName(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir(), CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	if cn := ca.Certificate().Subject.CommonName; cn != "keybroker CA" {
		t.Errorf("CN = %q, want %q", cn, "keybroker CA")
	}
}

func TestLoadCAErrors(t *testing.T) {
	_, goodDir := newTestCA(t, t0)
	_, otherDir := newTestCA(t, t0)
	read := func(dir, name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	goodCert, goodKey := read(goodDir, CACertFile), read(goodDir, CAKeyFile)
	otherKey := read(otherDir, CAKeyFile)
	leaf, err := LoadOrCreateCA(goodDir, CAOpts{Now: fixedClock(t0)})
	if err != nil {
		t.Fatal(err)
	}
	cred, err := leaf.IssueTLS(TLSTemplate{CommonName: "leaf", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		cert    []byte // nil: no file
		key     []byte
		now     time.Time
		wantErr string
	}{
		{name: "cert without key", cert: goodCert, wantErr: "ca.pem exists but"},
		{name: "key without cert", key: goodKey, wantErr: "ca-key.pem exists but"},
		{name: "garbage cert", cert: []byte("not pem"), key: goodKey, wantErr: "no pem certificate found"},
		{name: "key in cert file", cert: goodKey, key: goodKey, wantErr: `unexpected pem block "PRIVATE KEY"`},
		{name: "garbage key", cert: goodCert, key: []byte("junk"), wantErr: "no pem private key found"},
		{name: "mismatched key", cert: goodCert, key: otherKey, wantErr: "does not match certificate"},
		{name: "leaf as ca", cert: cred.CertificatePEM, key: cred.KeyPEM, wantErr: "not a ca certificate"},
		{name: "expired", cert: goodCert, key: goodKey, now: t0.AddDate(11, 0, 0), wantErr: "expired at"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.cert != nil {
				if err := os.WriteFile(filepath.Join(dir, CACertFile), tt.cert, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if tt.key != nil {
				if err := os.WriteFile(filepath.Join(dir, CAKeyFile), tt.key, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			now := tt.now
			if now.IsZero() {
				now = t0
			}
			_, err := LoadOrCreateCA(dir, CAOpts{Now: fixedClock(now)})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("LoadOrCreateCA error = %v, want it to contain %q", err, tt.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "unable to load ca") {
				t.Errorf("error %q does not name the operation", err)
			}
			// Nothing was replaced.
			if tt.cert != nil && !bytes.Equal(read(dir, CACertFile), tt.cert) {
				t.Errorf("ca.pem was modified")
			}
			if tt.key != nil && !bytes.Equal(read(dir, CAKeyFile), tt.key) {
				t.Errorf("ca-key.pem was modified")
			}
		})
	}
}

func TestLoadSEC1KeyAndBundle(t *testing.T) {
	ca, dir := newTestCA(t, t0)
	_, otherDir := newTestCA(t, t0)
	other, err := LoadOrCreateCA(otherDir, CAOpts{Now: fixedClock(t0)})
	if err != nil {
		t.Fatal(err)
	}
	// An operator-provided SEC1 key and a ca.pem carrying a second
	// (previous) CA after the signing one.
	sec1, err := x509.MarshalECPrivateKey(ca.signer.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})
	if err := os.WriteFile(filepath.Join(dir, CAKeyFile), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	bundle := append(ca.BundlePEM(), other.BundlePEM()...)
	if err := os.WriteFile(filepath.Join(dir, CACertFile), bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadOrCreateCA(dir, CAOpts{Now: fixedClock(t0)})
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Certificate().Equal(ca.Certificate()) {
		t.Errorf("signing certificate is not the first in ca.pem")
	}
	if !bytes.Equal(loaded.BundlePEM(), bundle) {
		t.Errorf("BundlePEM does not carry both CAs")
	}
}

func assertMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s has mode %#o, want %#o", path, got, want)
	}
}

func assertNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file %s left in %s", e.Name(), dir)
		}
	}
}
