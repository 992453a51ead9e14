package resident_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"log"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm-tools/simulator"

	"github.com/keybroker/keybroker/resident"
)

// A node creates a key for release "web" inside its TPM, certified by its
// AK for the challenge whose activated secret is secret, sends the certify
// with Attest, and writes the key as a TSS2 key file next to the
// certificate the broker signed.
func ExampleCreate() {
	sim, err := simulator.Get()
	if err != nil {
		log.Fatal(err)
	}
	defer sim.Close()
	ak, err := client.AttestationKeyRSA(sim)
	if err != nil {
		log.Fatal(err)
	}
	defer ak.Close()
	secret := bytes.Repeat([]byte{0x42}, 32) // from TPM2_ActivateCredential

	key, err := resident.Create(sim, uint32(ak.Handle()), secret, "web")
	if err != nil {
		log.Fatal(err)
	}
	// key.Public, key.CertifyInfo and key.Signature go into the
	// AttestRequest's resident_keys; key.Private stays on the node.
	file, err := key.PEM()
	if err != nil {
		log.Fatal(err)
	}
	back, err := resident.ParsePEM(file)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(file[:32]))
	fmt.Println(bytes.Equal(back.Public, key.Public))
	// Output:
	// -----BEGIN TSS2 PRIVATE KEY-----
	// true
}

// A node SVID's key bound to PCR 7: created with a PolicyPCR over the
// value PCR 7 holds now, it signs through the TPM (as crypto.Signer, for
// crypto/tls) only while PCR 7 keeps that value.
func ExampleKey_Signer() {
	sim, err := simulator.Get()
	if err != nil {
		log.Fatal(err)
	}
	defer sim.Close()
	ak, err := client.AttestationKeyRSA(sim)
	if err != nil {
		log.Fatal(err)
	}
	defer ak.Close()
	secret := bytes.Repeat([]byte{0x42}, 32) // from TPM2_ActivateCredential
	pcrs, err := resident.ParsePCRs("sha256:7")
	if err != nil {
		log.Fatal(err)
	}
	key, err := resident.CreateWith(sim, uint32(ak.Handle()), secret, "node-svid", resident.CreateOpts{PCRs: pcrs})
	if err != nil {
		log.Fatal(err)
	}
	// The agent reaches its TPM per signature; here it stays open.
	signer, err := key.Signer(func(fn func(io.ReadWriter) error) error { return fn(sim) })
	if err != nil {
		log.Fatal(err)
	}
	digest := sha256.Sum256([]byte("TLS 1.3 CertificateVerify content"))
	sig, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ecdsa.VerifyASN1(signer.Public().(*ecdsa.PublicKey), digest[:], sig))
	// Output:
	// true
}
