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
