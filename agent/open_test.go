package agent_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/internal/tpmtest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/sealing"
)

// A credential whose import the TPM refuses does not stop the node from
// opening the next one: a renewing agent that was sent one bad envelope
// still opens its next credentials.
func TestOpenAfterARefusedImport(t *testing.T) {
	rw := tpmtest.Open(t)
	node, err := agent.NewNode(rw, agent.NodeOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	enc, err := node.EK().PublicArea().Encode()
	if err != nil {
		t.Fatal(err)
	}
	ekPub, err := tpm2.Unmarshal[tpm2.TPMTPublic](enc)
	if err != nil {
		t.Fatal(err)
	}
	seal := func(name string) *pb.Credential {
		c, err := sealing.SealCredential(ekPub, name, pb.CredentialType_SECRET, []byte("payload "+name), nil)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	bad := seal("bad")
	bad.Blob.Duplicate[len(bad.Blob.Duplicate)-1] ^= 1
	if _, err := node.Open(bad); !errors.Is(err, sealing.ErrImport) {
		t.Fatalf("Open of a tampered credential = %v; want %v", err, sealing.ErrImport)
	}
	for _, name := range []string{"next", "after"} {
		got, err := node.Open(seal(name))
		if err != nil || !bytes.Equal(got, []byte("payload "+name)) {
			t.Fatalf("Open of credential %q after a refused import = %q, %v", name, got, err)
		}
	}
}
