package provenance_test

import (
	"crypto/sha256"
	"fmt"
	"testing"

	"github.com/keybroker/keybroker/internal/provenance"
	"github.com/keybroker/keybroker/internal/provenance/provenancetest"
)

// The agent builds a Trust from what the broker sent with the workload
// entries, then verifies a caller's bundle for its executable's SHA-256.
func ExampleTrust_Verify() {
	t := &testing.T{}
	exe := []byte("the workload's executable")
	signer := provenancetest.NewKeySigner(t)
	bundle := signer.Sign(t, exe) // what cosign sign-blob --bundle writes

	der, err := provenance.ParsePublicKey(signer.PublicKeyPEM) // a policy's signer block
	if err != nil {
		fmt.Println(err)
		return
	}
	trust, err := provenance.NewTrust([]provenance.Key{{Name: "release", DER: der}}, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	digest := sha256.Sum256(exe)
	selectors, err := trust.Verify(digest[:], bundle)
	fmt.Println(selectors, err)

	tampered := sha256.Sum256(append(exe, '!'))
	_, err = trust.Verify(tampered[:], bundle)
	fmt.Println(err != nil)
	// Output:
	// [key:release] <nil>
	// true
}
