package resident_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"strings"
	"testing"

	"github.com/google/go-tpm-tools/client"
	legacy "github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/keybroker/keybroker/internal/tpmtest"
	"github.com/keybroker/keybroker/resident"
)

// direct reaches rw for each signature, as an agent holding its TPM open
// does.
func direct(rw io.ReadWriter) resident.TPMFunc {
	return func(fn func(io.ReadWriter) error) error { return fn(rw) }
}

func extend(t *testing.T, rw io.ReadWriter, pcr int, event string) {
	t.Helper()
	sum := sha256.Sum256([]byte(event))
	if err := legacy.PCRExtend(rw, tpmutil.Handle(pcr), legacy.AlgSHA256, sum[:], ""); err != nil {
		t.Fatal(err)
	}
}

func sign(t *testing.T, s crypto.Signer) ([]byte, []byte, error) {
	t.Helper()
	digest := sha256.Sum256([]byte("handshake transcript"))
	sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
	return digest[:], sig, err
}

// TestSigner: a resident key signs inside the TPM through Signer, and the
// signature verifies with its public key; each signature flushes what it
// loaded (tpmtest fails the test on a leak).
func TestSigner(t *testing.T) {
	rw := tpmtest.Open(t)
	ak, err := client.AttestationKeyRSA(rw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ak.Close)
	k, err := resident.Create(rw, uint32(ak.Handle()), bytes.Repeat([]byte{1}, 32), "node-svid")
	if err != nil {
		t.Fatal(err)
	}
	// The key as a TSS2 key file holds it, without the certify.
	file, err := k.PEM()
	if err != nil {
		t.Fatal(err)
	}
	back, err := resident.ParsePEM(file)
	if err != nil {
		t.Fatal(err)
	}
	s, err := back.Signer(direct(rw))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		digest, sig, err := sign(t, s)
		if err != nil {
			t.Fatalf("Sign: %v", err)
		}
		if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), digest, sig) {
			t.Fatal("the TPM's signature does not verify with the key's public half")
		}
	}
	if _, err := (&resident.Key{Public: k.Public}).Signer(direct(rw)); err == nil {
		t.Error("Signer accepted a key without its private blob")
	}
}

// TestPCRBoundKey: a key bound to PCRs carries the PolicyPCR of their
// values as its authPolicy (the digest PCRs.PolicyDigest computes from
// the values, as the broker does), without userWithAuth; it signs while
// the PCRs hold those values and the TPM refuses once one is extended.
func TestPCRBoundKey(t *testing.T) {
	rw := tpmtest.Open(t)
	extend(t, rw, 7, "secure boot on")
	ak, err := client.AttestationKeyRSA(rw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ak.Close)
	sel, err := resident.ParsePCRs("sha256:7,0")
	if err != nil {
		t.Fatal(err)
	}
	if got := sel.String(); got != "sha256:0,7" {
		t.Errorf("String() = %q", got)
	}
	k, err := resident.CreateWith(rw, uint32(ak.Handle()), bytes.Repeat([]byte{1}, 32), "node-svid", resident.CreateOpts{PCRs: sel})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](k.Public)
	if err != nil {
		t.Fatal(err)
	}
	if pub.ObjectAttributes.UserWithAuth {
		t.Error("a PCR-bound key signs with its password (userWithAuth)")
	}
	pcrs, err := client.ReadPCRs(rw, legacy.PCRSelection{Hash: legacy.AlgSHA256, PCRs: []int{0, 7}})
	if err != nil {
		t.Fatal(err)
	}
	want, err := sel.PolicyDigest([][]byte{pcrs.GetPcrs()[0], pcrs.GetPcrs()[7]})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pub.AuthPolicy.Buffer, want) {
		t.Fatalf("authPolicy = %x, PolicyDigest of the PCR values = %x", pub.AuthPolicy.Buffer, want)
	}

	s, err := k.Signer(direct(rw))
	if err != nil {
		t.Fatal(err)
	}
	digest, sig, err := sign(t, s)
	if err != nil {
		t.Fatalf("Sign in the state the key is bound to: %v", err)
	}
	if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), digest, sig) {
		t.Fatal("the signature does not verify")
	}
	// The password alone does not authorize it.
	unbound := *k
	unbound.PCRs = nil
	us, err := unbound.Signer(direct(rw))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := sign(t, us); err == nil {
		t.Error("a PCR-bound key signed without its policy session")
	}

	extend(t, rw, 7, "another bootloader")
	if _, _, err := sign(t, s); err == nil || !strings.Contains(err.Error(), "the TPM did not sign with the resident key") {
		t.Fatalf("Sign after PCR 7 changed = %v, want the TPM's refusal", err)
	}
}

func TestParsePCRs(t *testing.T) {
	for _, tt := range []struct{ in, wantErr string }{
		{"0,7", `PCR selection "0,7": want BANK:I,J,... such as sha256:0,7`},
		{"sha1:0", `PCR selection "sha1:0": bank "sha1" is not sha256, sha384 or sha512`},
		{"sha256:24", `PCR selection "sha256:24": "24" is not a PCR from 0 to 23`},
		{"sha256:0,,7", `PCR selection "sha256:0,,7": "" is not a PCR from 0 to 23`},
		{"sha256:7,7", `PCR selection "sha256:7,7": PCR 7 is listed twice`},
		{"sha256:0,16", `PCR selection "sha256:0,16": PCR 16 can be reset by software at locality 0 and cannot bind a key or a secret`},
		{"sha256:23", `PCR selection "sha256:23": PCR 23 can be reset by software at locality 0 and cannot bind a key or a secret`},
		{"sha256:", `PCR selection "sha256:": want BANK:I,J,... such as sha256:0,7`},
	} {
		t.Run(tt.in, func(t *testing.T) {
			if _, err := resident.ParsePCRs(tt.in); err == nil || err.Error() != tt.wantErr {
				t.Fatalf("ParsePCRs = %v, want %q", err, tt.wantErr)
			}
		})
	}
}
