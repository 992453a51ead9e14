package softtpm_test

import (
	"bytes"
	"crypto/rand"
	"fmt"

	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/internal/softtpm"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// A node activates a credential the broker made for its EK and AK, and
// quotes its PCRs with the activated secret.
func Example() {
	node, err := softtpm.New(softtpm.Opts{Key: softtpm.ECC})
	if err != nil {
		panic(err)
	}
	secret := make([]byte, challenge.SecretSize)
	rand.Read(secret)
	blob, enc, err := challenge.MakeCredential(node.EKPublic(), node.AKName(), secret)
	if err != nil {
		panic(err)
	}
	got, err := node.Activate(&pb.ChallengeResponse{CredentialBlob: blob, EncryptedSecret: enc})
	if err != nil {
		panic(err)
	}
	quotes, err := node.Quote(got)
	if err != nil {
		panic(err)
	}
	fmt.Println(bytes.Equal(got, secret), len(quotes), len(quotes[0].GetPcrs().GetValues()))
	// Output: true 1 24
}
