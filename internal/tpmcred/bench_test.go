package tpmcred_test

import (
	"bytes"
	"crypto/rand"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/internal/tpmcred"
)

// benchShapes are the EKs nodes have: the TCG default RSA-2048 and P-256
// EKs, and P-384 (swtpm's ECC EK, the high-range templates).
var benchShapes = []string{"RSA-2048 SHA-256 AES-128", "ECC P-256 SHA-256 AES-128", "ECC P-384 SHA-384 AES-256"}

// BenchmarkMakeCredential compares Key.MakeCredential with go-tpm's
// tpm2.CreateCredential, each with the EK parsed once:
//
//	go test -run '^$' -bench . -benchmem ./internal/tpmcred/
func BenchmarkMakeCredential(b *testing.B) {
	name := append([]byte{0x00, 0x0b}, bytes.Repeat([]byte{0xa5}, 32)...)
	secret := make([]byte, 32)
	benchBoth(b, func(b *testing.B, k *tpmcred.Key) {
		if _, _, err := k.MakeCredential(rand.Reader, name, secret); err != nil {
			b.Fatal(err)
		}
	}, func(b *testing.B, k tpm2.LabeledEncapsulationKey) {
		if _, _, err := tpm2.CreateCredential(rand.Reader, k, name, secret); err != nil {
			b.Fatal(err)
		}
	})
}

// BenchmarkDuplicate compares Key.Duplicate of a sealed object's
// TPMT_SENSITIVE (a 32-byte seed and a 32-byte secret) with go-tpm's
// tpm2.CreateDuplicate.
func BenchmarkDuplicate(b *testing.B) {
	name := append([]byte{0x00, 0x0b}, bytes.Repeat([]byte{0xa5}, 32)...)
	sensitive := make([]byte, 2+2+2+32+2+32)
	benchBoth(b, func(b *testing.B, k *tpmcred.Key) {
		if _, _, err := k.Duplicate(rand.Reader, name, sensitive); err != nil {
			b.Fatal(err)
		}
	}, func(b *testing.B, k tpm2.LabeledEncapsulationKey) {
		if _, _, err := tpm2.CreateDuplicate(rand.Reader, k, name, sensitive); err != nil {
			b.Fatal(err)
		}
	})
}

// BenchmarkNewKey is the cost of parsing an EK, paid once per node.
func BenchmarkNewKey(b *testing.B) {
	for _, s := range benchShapes {
		pub := shapeByName(b, s).pub(b)
		b.Run(s, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := tpmcred.NewKey(pub); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func benchBoth(b *testing.B, ours func(*testing.B, *tpmcred.Key), theirs func(*testing.B, tpm2.LabeledEncapsulationKey)) {
	for _, s := range benchShapes {
		pub := shapeByName(b, s).pub(b)
		key, err := tpmcred.NewKey(pub)
		if err != nil {
			b.Fatal(err)
		}
		goKey, err := tpm2.ImportEncapsulationKey(pub)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(s+"/tpmcred", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				ours(b, key)
			}
		})
		b.Run(s+"/go-tpm", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				theirs(b, goKey)
			}
		})
	}
}

func shapeByName(tb testing.TB, name string) shape {
	for _, s := range shapes {
		if s.name == name {
			return s
		}
	}
	tb.Fatalf("no shape %q", name)
	return shape{}
}
