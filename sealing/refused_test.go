package sealing_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/keybroker/keybroker/internal/tpmtest"
	"github.com/keybroker/keybroker/sealing"
)

// One refused envelope (sealed to PCRs the TPM no longer holds) does not
// stop the same EK from opening the next envelope: a node renewing after a
// refused credential still opens what it is given.
func TestOpenAfterARefusedEnvelope(t *testing.T) {
	rw := tpmtest.Open(t)
	ek, err := client.EndorsementKeyRSA(rw)
	if err != nil {
		t.Fatal(err)
	}
	defer ek.Close()
	pcrs, err := client.ReadPCRs(rw, tpm2.PCRSelection{Hash: tpm2.AlgSHA256, PCRs: []int{7}})
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := sealing.Wrap(ek.PublicKey(), payload, sealing.WrapOpts{PCRs: pcrs})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("changed boot"))
	if err := tpm2.PCRExtend(rw, tpmutil.Handle(7), tpm2.AlgSHA256, sum[:], ""); err != nil {
		t.Fatal(err)
	}
	if _, err := sealing.Open(ek, sealed); !errors.Is(err, sealing.ErrImport) {
		t.Fatalf("Open after a PCR change = %v; want %v", err, sealing.ErrImport)
	}
	bound, err := sealing.Wrap(ek.PublicKey(), payload, sealing.WrapOpts{KeyID: "next"})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := sealing.Open(ek, bound); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("Open of the next envelope with the same EK = %q, %v", got, err)
	}
}
