package ear_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/keybroker/keybroker/broker/ear"
)

// A relying party verifies the result a node handed it with the broker's
// JWKS (GetAttestationResultKeys, or "keybroker ear jwks") and the nonce it
// gave the node, then reads the appraisal.
func ExampleVerify() {
	// The broker's side: its result key signs the result of an allowed
	// decision (ear.FromOutcome builds it from the decision).
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signer, _ := ear.NewSigner(key)
	jwks, _ := signer.JWKS()
	nonce := []byte("relying-party-nonce")
	now := time.Now()
	token, _ := signer.Sign(&ear.Result{
		Profile: ear.Profile, IssuedAt: now.Unix(), Expiry: now.Add(5 * time.Minute).Unix(),
		VerifierID: ear.VerifierID{Build: "keybroker v1", Developer: ear.Developer},
		Nonce:      "cmVseWluZy1wYXJ0eS1ub25jZQ",
		Submods: map[string]ear.Appraisal{ear.Submod: {Status: ear.StatusAffirming,
			TrustVector: &ear.TrustVector{InstanceIdentity: ear.TrustworthyInstance, Configuration: ear.ApprovedConfig},
			PolicyID:    ear.PolicyIDPrefix + "3f1c…"}},
		ReceiptID: "20260101T000000.000000000Z-0123456789abcdef", EKHash: "5e9a…",
	})

	// The relying party's side.
	r, err := ear.Verify(token, jwks, ear.VerifyOpts{Nonce: nonce})
	if err != nil {
		fmt.Println("refused:", err)
		return
	}
	a := r.Submods[ear.Submod]
	fmt.Println(a.Status, a.TrustVector.InstanceIdentity, a.TrustVector.Configuration, r.ReceiptID)
	// Output: affirming 2 2 20260101T000000.000000000Z-0123456789abcdef
}
