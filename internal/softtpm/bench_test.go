package softtpm

import (
	"testing"
	"time"

	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/challenge"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/sealing"
)

// fleetSize is the fleet BenchmarkNewECCNode makes per operation.
const fleetSize = 10_000

// BenchmarkNewECCNode makes 10,000 ECC nodes per operation: what a load
// generator pays before its first request (key generation only).
func BenchmarkNewECCNode(b *testing.B) {
	for b.Loop() {
		start := time.Now()
		for range fleetSize {
			if _, err := New(Opts{Key: ECC}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/10k-nodes")
	}
}

// BenchmarkActivateQuoteOpen is a node's share of one release: Activate,
// Quote (one SHA-256 bank) and Open of a PCR-sealed credential; the
// broker's MakeCredential and SealCredential run outside the timer.
func BenchmarkActivateQuoteOpen(b *testing.B) {
	for _, key := range keyTypes {
		b.Run(key.String(), func(b *testing.B) {
			node := newNode(b, key)
			pcrs, err := node.PCRs(tpm2.TPMAlgSHA256)
			if err != nil {
				b.Fatal(err)
			}
			sel := &tpmpb.PCRs{Hash: tpmpb.HashAlgo_SHA256, Pcrs: pick(pcrs, 0, 7)}
			payload := random(b, 600)
			for b.Loop() {
				b.StopTimer()
				secret := random(b, challenge.SecretSize)
				blob, enc, err := challenge.MakeCredential(node.EKPublic(), node.AKName(), secret)
				if err != nil {
					b.Fatal(err)
				}
				cred, err := sealing.SealCredential(node.EKPublic(), "bench", pb.CredentialType_SECRET, payload, sel)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				got, err := node.Activate(&pb.ChallengeResponse{CredentialBlob: blob, EncryptedSecret: enc})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := node.Quote(got); err != nil {
					b.Fatal(err)
				}
				if _, err := node.Open(cred); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkQuote is one Quote of the node's SHA-256 bank with a 32-byte
// secret: the TPMS_ATTEST and TPMT_SIGNATURE encodings and the signature.
func BenchmarkQuote(b *testing.B) {
	for _, key := range keyTypes {
		b.Run(key.String(), func(b *testing.B) {
			node := newNode(b, key)
			secret := random(b, challenge.SecretSize)
			for b.Loop() {
				if _, err := node.Quote(secret); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOpen is one Open of a credential sealing.SealCredential made
// for the node: "bound" without PCRs (a TLS credential of loadgen), "sealed"
// under PolicyPCR over PCRs 0 and 7. The same credential is opened on every
// iteration: Open does not consume it.
func BenchmarkOpen(b *testing.B) {
	for _, key := range keyTypes {
		node := newNode(b, key)
		pcrs, err := node.PCRs(tpm2.TPMAlgSHA256)
		if err != nil {
			b.Fatal(err)
		}
		for _, mode := range []struct {
			name string
			sel  *tpmpb.PCRs
		}{
			{"bound", nil},
			{"sealed", &tpmpb.PCRs{Hash: tpmpb.HashAlgo_SHA256, Pcrs: pick(pcrs, 0, 7)}},
		} {
			b.Run(key.String()+"/"+mode.name, func(b *testing.B) {
				cred, err := sealing.SealCredential(node.EKPublic(), "bench", pb.CredentialType_SECRET, random(b, 600), mode.sel)
				if err != nil {
					b.Fatal(err)
				}
				for b.Loop() {
					if _, err := node.Open(cred); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
