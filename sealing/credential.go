package sealing

import (
	"errors"
	"io"

	"github.com/google/go-tpm-tools/client"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/internal/tpmcred"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// SealCredential wraps payload to the TPM whose EK public area is ek and
// returns it as the keybroker API's Credential: TPM_BOUND when pcrs is nil,
// PCR_SEALED to those values (one bank) otherwise. The broker's releases
// and the Vault auth method's sealed tokens are both made here, so a node
// opens either with the same code. It parses ek on every call;
// SealCredentialTo takes an EK parsed once.
func SealCredential(ek *tpm2.TPMTPublic, name string, typ pb.CredentialType, payload []byte, pcrs *tpmpb.PCRs) (*pb.Credential, error) {
	key, err := parseEK(ek)
	if err != nil {
		return nil, err
	}
	return SealCredentialTo(key, name, typ, payload, pcrs)
}

// SealCredentialTo is SealCredential to an EK already parsed, such as
// verify.NodeIdentity.EKKey.
func SealCredentialTo(ek *tpmcred.Key, name string, typ pb.CredentialType, payload []byte, pcrs *tpmpb.PCRs) (*pb.Credential, error) {
	return sealCredential(ek, name, typ, payload, WrapOpts{PCRs: pcrs, KeyID: name})
}

// SealAuthorized is SealCredential for pcr_policy "authorized": a
// PCR_SEALED Credential bound to approvals as auth says (see
// WrapOpts.Authorization), whose blob carries auth as its authorization.
func SealAuthorized(ek *tpm2.TPMTPublic, name string, typ pb.CredentialType, payload []byte, auth *Authorization) (*pb.Credential, error) {
	key, err := parseEK(ek)
	if err != nil {
		return nil, err
	}
	return SealAuthorizedTo(key, name, typ, payload, auth)
}

// SealAuthorizedTo is SealAuthorized to an EK already parsed, such as
// verify.NodeIdentity.EKKey.
func SealAuthorizedTo(ek *tpmcred.Key, name string, typ pb.CredentialType, payload []byte, auth *Authorization) (*pb.Credential, error) {
	if auth == nil {
		return nil, errors.New("no PCR-policy authorization")
	}
	return sealCredential(ek, name, typ, payload, WrapOpts{Authorization: auth, KeyID: name})
}

func sealCredential(ek *tpmcred.Key, name string, typ pb.CredentialType, payload []byte, opts WrapOpts) (*pb.Credential, error) {
	env, err := wrap(ek, payload, opts)
	if err != nil {
		return nil, err
	}
	blob, err := BlobToProto(env.Blob)
	if err != nil {
		return nil, err
	}
	cred := &pb.Credential{Name: name, Type: typ, Mode: pb.ReleaseMode_TPM_BOUND, Blob: blob, Jwe: env.JWE}
	if opts.PCRs != nil || opts.Authorization != nil {
		cred.Mode = pb.ReleaseMode_PCR_SEALED
	}
	if opts.Authorization != nil {
		blob.Authorization = AuthorizationToProto(opts.Authorization)
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
	if c.GetBlob().GetAuthorization() != nil {
		return nil, errors.New("credential is sealed to PCR-policy approvals: open it with OpenAuthorizedCredential")
	}
	return Open(ek, &Envelope{Blob: blob, JWE: c.GetJwe()})
}

// OpenAuthorizedCredential opens a Credential made by SealAuthorized inside
// the TPM on rw under ek with one of approvals (see OpenAuthorized).
func OpenAuthorizedCredential(rw io.ReadWriter, ek *client.Key, c *pb.Credential, approvals []*pb.PCRApproval) ([]byte, error) {
	blob, err := BlobFromProto(c.GetBlob())
	if err != nil {
		return nil, err
	}
	auth, err := AuthorizationFromProto(c.GetBlob().GetAuthorization())
	if err != nil {
		return nil, err
	}
	as, err := ApprovalsFromProto(approvals)
	if err != nil {
		return nil, err
	}
	return OpenAuthorized(rw, ek, &Envelope{Blob: blob, JWE: c.GetJwe(), Authorization: auth}, as)
}
