package sealing

import (
	"fmt"

	"github.com/google/go-tpm-tools/client"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm/tpm2"

	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// SealCredential wraps payload to the TPM whose EK public area is ek and
// returns it as the keybroker API's Credential: TPM_BOUND when pcrs is nil,
// PCR_SEALED to those values (one bank) otherwise. The broker's releases
// and the Vault auth method's sealed tokens are both made here, so a node
// opens either with the same code.
func SealCredential(ek *tpm2.TPMTPublic, name string, typ pb.CredentialType, payload []byte, pcrs *tpmpb.PCRs) (*pb.Credential, error) {
	key, err := tpm2.Pub(*ek)
	if err != nil {
		return nil, fmt.Errorf("unable to use the EK: %w", err)
	}
	env, err := Wrap(key, payload, WrapOpts{PCRs: pcrs, KeyID: name})
	if err != nil {
		return nil, err
	}
	blob, err := BlobToProto(env.Blob)
	if err != nil {
		return nil, err
	}
	cred := &pb.Credential{Name: name, Type: typ, Mode: pb.ReleaseMode_TPM_BOUND, Blob: blob, Jwe: env.JWE}
	if pcrs != nil {
		cred.Mode = pb.ReleaseMode_PCR_SEALED
	}
	return cred, nil
}

// OpenCredential opens a Credential made by SealCredential inside the TPM
// under ek (loaded with its policy session, as client.EndorsementKeyRSA and
// client.EndorsementKeyECC return it) and returns its payload. The import
// blob is parsed strictly (see BlobFromProto) before the TPM sees it.
func OpenCredential(ek *client.Key, c *pb.Credential) ([]byte, error) {
	blob, err := BlobFromProto(c.GetBlob())
	if err != nil {
		return nil, err
	}
	return Open(ek, &Envelope{Blob: blob, JWE: c.GetJwe()})
}
