package sealing

import (
	"fmt"

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
	cred := &pb.Credential{
		Name: name,
		Type: typ,
		Mode: pb.ReleaseMode_TPM_BOUND,
		Blob: &pb.ImportBlob{
			Duplicate:     env.Blob.GetDuplicate(),
			EncryptedSeed: env.Blob.GetEncryptedSeed(),
			PublicArea:    env.Blob.GetPublicArea(),
		},
		Jwe: env.JWE,
	}
	if pcrs != nil {
		cred.Mode = pb.ReleaseMode_PCR_SEALED
		cred.Blob.Pcrs = &pb.PCRValues{HashAlg: uint32(pcrs.GetHash()), Values: pcrs.GetPcrs()}
	}
	return cred, nil
}
