package sealing_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/keybroker/keybroker/internal/tpmtest"
	"github.com/keybroker/keybroker/sealing"
)

var payload = []byte("-----BEGIN PRIVATE KEY-----\nnot a real key\n-----END PRIVATE KEY-----\n")

func TestTPMBoundOpensOnlyOnItsTPM(t *testing.T) {
	rw := tpmtest.OpenSeeded(t, 2)
	ek, err := client.EndorsementKeyRSA(rw)
	if err != nil {
		t.Fatal(err)
	}
	env, err := sealing.Wrap(ek.PublicKey(), payload, sealing.WrapOpts{KeyID: "tls"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := sealing.Open(ek, env)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("Open on the right TPM = %q, %v", got, err)
	}
	ek.Close()
	rw.Close()

	other := tpmtest.OpenSeeded(t, 3)
	otherEK, err := client.EndorsementKeyRSA(other)
	if err != nil {
		t.Fatal(err)
	}
	defer otherEK.Close()
	if _, err := sealing.Open(otherEK, env); !errors.Is(err, sealing.ErrImport) {
		t.Fatalf("Open on another TPM = %v; want %v", err, sealing.ErrImport)
	}
}

func TestPCRSealedOpensOnlyInAttestedState(t *testing.T) {
	rw := tpmtest.Open(t)
	ek, err := client.EndorsementKeyRSA(rw)
	if err != nil {
		t.Fatal(err)
	}
	defer ek.Close()
	pcrs, err := client.ReadPCRs(rw, tpm2.PCRSelection{Hash: tpm2.AlgSHA256, PCRs: []int{0, 7}})
	if err != nil {
		t.Fatal(err)
	}
	env, err := sealing.Wrap(ek.PublicKey(), payload, sealing.WrapOpts{PCRs: pcrs})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := sealing.Open(ek, env); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("Open in the sealed state = %q, %v", got, err)
	}
	sum := sha256.Sum256([]byte("changed boot"))
	if err := tpm2.PCRExtend(rw, tpmutil.Handle(7), tpm2.AlgSHA256, sum[:], ""); err != nil {
		t.Fatal(err)
	}
	if _, err := sealing.Open(ek, env); !errors.Is(err, sealing.ErrImport) {
		t.Fatalf("Open after a PCR change = %v; want %v", err, sealing.ErrImport)
	}
}

func TestOpenRefusesTamperedEnvelopes(t *testing.T) {
	rw := tpmtest.Open(t)
	ek, err := client.EndorsementKeyRSA(rw)
	if err != nil {
		t.Fatal(err)
	}
	defer ek.Close()
	env, err := sealing.Wrap(ek.PublicKey(), payload, sealing.WrapOpts{})
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(env.JWE, ".")
	// Another base64url character in the ciphertext: still well-formed,
	// but the GCM tag no longer matches.
	ct := []byte(parts[3])
	if ct[0] == 'A' {
		ct[0] = 'B'
	} else {
		ct[0] = 'A'
	}
	parts[3] = string(ct)
	tests := []struct {
		name    string
		env     *sealing.Envelope
		wantErr string
	}{
		{"no blob", &sealing.Envelope{JWE: env.JWE}, "envelope has no import blob"},
		{"ciphertext changed", &sealing.Envelope{Blob: env.Blob, JWE: strings.Join(parts, ".")}, "unable to decrypt JWE"},
		{"not a JWE", &sealing.Envelope{Blob: env.Blob, JWE: "garbage"}, "unable to parse JWE"},
		{"oversized JWE", &sealing.Envelope{Blob: env.Blob, JWE: strings.Repeat("a", sealing.MaxJWESize+1)}, "envelope JWE is too large"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := sealing.Open(ek, tc.env)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || got != nil {
				t.Fatalf("Open = %q, %v; want error %q", got, err, tc.wantErr)
			}
		})
	}
}
