// Package resident is the node half of tpm_resident releases and what both
// halves agree on: the agent creates a signing key inside its TPM under the
// storage root key, certifies it with its AK (TPM2_Certify) over
// QualifyingData, sends the certify with Attest, and writes the
// certificate the broker signed with the key as a TSS2 PEM that OpenSSL's
// tpm2 provider and tpm2-tss-engine load. No private key leaves the TPM.
//
// The broker half (broker/verify.Verified.WithResidentKeys) verifies the
// certify and never touches a TPM.
package resident

import (
	"crypto/sha256"
)

// Label separates a certify's qualifying data from the quote's, which is
// the activated challenge secret itself.
const Label = "keybroker tpm_resident v1"

// MaxNameSize bounds a release name in a ResidentKey.
const MaxNameSize = 128

// QualifyingData is the qualifying data of the AK's TPM2_Certify of the
// key for release name, in the attestation whose activated challenge
// secret is secret: SHA-256(Label || 0x00 || secret || name). It binds the
// certify to this challenge (only the TPM that activated the secret knows
// it) and to one release.
func QualifyingData(secret []byte, name string) []byte {
	h := sha256.New()
	h.Write([]byte(Label))
	h.Write([]byte{0})
	h.Write(secret)
	h.Write([]byte(name))
	return h.Sum(nil)
}
