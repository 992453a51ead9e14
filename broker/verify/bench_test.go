package verify_test

import (
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify"
)

// BenchmarkNode checks the EK and AK of a node as the broker does for
// every Challenge and Attest: a P-256 EK trusted by hash (an indexed
// Trust) and a P-256 AK, the keys of loadgen's nodes, and the RSA pair of
// go-tpm-tools' templates.
func BenchmarkNode(b *testing.B) {
	for _, c := range []struct {
		name   string
		ek, ak []byte
		ekHash string
	}{
		{"ecc", tpm2.Marshal(ekPublicECC(&ekECCKey().PublicKey)), newSoftECCAK(akP256Key(), tpm2.TPMAlgSHA256).publicBytes(), mustEKHash(b, &ekECCKey().PublicKey)},
		{"rsa", tpm2.Marshal(ekPublicRSA(&ekRSAKey().PublicKey)), defaultAK().publicBytes(), mustEKHash(b, &ekRSAKey().PublicKey)},
	} {
		opts := verify.Opts{Trust: verify.Trust{EKHashes: []string{c.ekHash}}.Index()}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := verify.Node(c.ek, nil, nil, c.ak, opts); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkQuotes verifies one sha256 quote of 8 PCRs by a P-256 AK.
func BenchmarkQuotes(b *testing.B) {
	ak := newSoftECCAK(akP256Key(), tpm2.TPMAlgSHA256)
	ek := ekPublicECC(&ekECCKey().PublicKey)
	n, err := verify.Node(tpm2.Marshal(ek), nil, nil, ak.publicBytes(), verify.Opts{
		Trust: verify.Trust{EKHashes: []string{mustEKHash(b, &ekECCKey().PublicKey)}},
	})
	if err != nil {
		b.Fatal(err)
	}
	quotes := []verify.Quote{newQuoteSpec(tpm2.TPMAlgSHA256).quote(b, ak)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := verify.Quotes(n, testNonceHash(), quotes, verify.Opts{}); err != nil {
			b.Fatal(err)
		}
	}
}
