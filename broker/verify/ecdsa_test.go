package verify_test

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"math/big"
	"testing"

	"github.com/keybroker/keybroker/broker/verify"
)

// TestVerifyECDSA holds the verification of TPM-encoded ECDSA signatures
// to ecdsa.Verify's answer: valid signatures with and without leading
// zeros and high bits, zero, overlong and altered values.
func TestVerifyECDSA(t *testing.T) {
	for _, c := range []struct {
		name  string
		key   *ecdsa.PrivateKey
		sum   func([]byte) []byte
		bytes int
	}{
		{"P-256", akP256Key(), func(b []byte) []byte { s := sha256.Sum256(b); return s[:] }, 32},
		{"P-384", akP384Key(), func(b []byte) []byte { s := sha512.Sum384(b); return s[:] }, 48},
	} {
		t.Run(c.name, func(t *testing.T) {
			highBit, noHighBit := 0, 0
			for i := 0; i < 64 || highBit == 0 || noHighBit == 0; i++ {
				digest := c.sum([]byte{byte(i), byte(i >> 8)})
				r, s, err := ecdsa.Sign(rand.Reader, c.key, digest)
				if err != nil {
					t.Fatal(err)
				}
				if r.Bytes()[0]&0x80 != 0 {
					highBit++
				} else {
					noHighBit++
				}
				cases := map[string][2][]byte{
					"minimal":        {r.Bytes(), s.Bytes()},
					"fixed size":     {r.FillBytes(make([]byte, c.bytes)), s.FillBytes(make([]byte, c.bytes))},
					"leading zeros":  {append([]byte{0, 0}, r.Bytes()...), append([]byte{0}, s.Bytes()...)},
					"zero r":         {nil, s.Bytes()},
					"zero s":         {r.Bytes(), []byte{0, 0}},
					"r plus one":     {new(big.Int).Add(r, big.NewInt(1)).Bytes(), s.Bytes()},
					"r plus order":   {new(big.Int).Add(r, c.key.Curve.Params().N).Bytes(), s.Bytes()},
					"s is the order": {r.Bytes(), c.key.Curve.Params().N.Bytes()},
					"overlong r":     {append([]byte{1}, make([]byte, 66)...), s.Bytes()},
					"swapped":        {s.Bytes(), r.Bytes()},
				}
				for name, rs := range cases {
					want := ecdsa.Verify(&c.key.PublicKey, digest, new(big.Int).SetBytes(rs[0]), new(big.Int).SetBytes(rs[1]))
					if got := verify.VerifyECDSA(&c.key.PublicKey, digest, rs[0], rs[1]); got != want {
						t.Fatalf("%s: VerifyECDSA = %v, ecdsa.Verify = %v", name, got, want)
					}
					if name == "minimal" && !want {
						t.Fatal("a valid signature does not verify")
					}
				}
			}
		})
	}
}
