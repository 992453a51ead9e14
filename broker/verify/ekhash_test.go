package verify

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"math/big"
	"testing"
)

// The P-256 and RSA-2048 fast paths of EKHash encode exactly as x509 does.
func TestEKHashFastPaths(t *testing.T) {
	for range 64 {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		want, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendP256SPKI(nil, &k.PublicKey, false); !bytes.Equal(got, want) {
			t.Fatalf("appendP256SPKI = %x\nwant %x", got, want)
		}
		if got := appendP256SPKI(nil, &k.PublicKey, true); !bytes.Equal(got, want) {
			t.Fatalf("appendP256SPKI of a point on the curve = %x\nwant %x", got, want)
		}
		sum := sha256.Sum256(want)
		if h, err := EKHash(&k.PublicKey); err != nil || h != hex.EncodeToString(sum[:]) {
			t.Fatalf("EKHash = %s, %v; want %x", h, err, sum)
		}
	}
	for range 3 {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if got := appendRSA2048SPKI(nil, &k.PublicKey); !bytes.Equal(got, want) {
			t.Fatalf("appendRSA2048SPKI = %x\nwant %x", got, want)
		}
		// Another exponent is not the fast path's.
		other := k.PublicKey
		other.E = 3
		if appendRSA2048SPKI(nil, &other) != nil {
			t.Fatal("appendRSA2048SPKI encoded exponent 3")
		}
	}
	// Other curves take x509's path.
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	sum := sha256.Sum256(der)
	if h, err := EKHash(&k.PublicKey); err != nil || h != hex.EncodeToString(sum[:]) {
		t.Fatalf("EKHash(P-384) = %s, %v; want %x", h, err, sum)
	}
}

// A P-256 key whose coordinates are not field elements, or that is not
// on the curve, has no fast-path encoding, and EKHash refuses it rather
// than hash it.
func TestEKHashFastPathRefusals(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p := elliptic.P256().Params().P
	for _, tc := range []struct {
		name string
		x, y *big.Int
	}{
		{"x is p", new(big.Int).Set(p), k.Y},
		{"y past p", k.X, new(big.Int).Add(p, big.NewInt(1))},
		{"x negative", new(big.Int).Neg(k.X), k.Y},
		{"x missing", nil, k.Y},
	} {
		bad := &ecdsa.PublicKey{Curve: elliptic.P256(), X: tc.x, Y: tc.y}
		if got := appendP256SPKI(nil, bad, true); got != nil {
			t.Errorf("%s: appendP256SPKI of a known point = %x, want nil", tc.name, got)
		}
		if tc.x == nil {
			continue // ecdsa.PublicKey.Bytes, the path without onCurve, needs both coordinates
		}
		if got := appendP256SPKI(nil, bad, false); got != nil {
			t.Errorf("%s: appendP256SPKI = %x, want nil", tc.name, got)
		}
	}
	off := &ecdsa.PublicKey{Curve: elliptic.P256(), X: big.NewInt(1), Y: big.NewInt(1)}
	if got := appendP256SPKI(nil, off, false); got != nil {
		t.Errorf("appendP256SPKI of a point off the curve = %x, want nil", got)
	}
	if h, err := EKHash(off); err == nil {
		t.Errorf("EKHash of a point off the curve = %s, want an error", h)
	}
}
