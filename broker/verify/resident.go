package verify

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/resident"
)

// Limits on the resident keys of one attestation. The broker's API
// enforces the same numbers.
const (
	MaxResidentKeys        = 8
	MaxCertifyAttestSize   = 1 << 10
	MaxResidentKeyNameSize = resident.MaxNameSize
)

// ResidentKeyEvidence is one key a node created inside its TPM for a
// tpm_resident release, and the AK's TPM2_Certify of it, as the node sent
// them.
type ResidentKeyEvidence struct {
	Name        string // the release the key is for
	Public      []byte // TPMT_PUBLIC
	CertifyInfo []byte // TPMS_ATTEST of type CERTIFY
	Signature   []byte // TPMT_SIGNATURE by the AK over CertifyInfo
}

// ResidentKey is a verified TPM-resident signing key: a key of the node's
// TPM (certified by the verified AK for this challenge) that cannot leave
// it. Only this package constructs it.
type ResidentKey struct {
	name   string
	public crypto.PublicKey
	// authPolicy and userWithAuth are from the certified public area:
	// what CheckResidentPCRPolicy compares with the quoted PCRs.
	authPolicy   []byte
	userWithAuth bool
	nameAlg      tpm2.TPMAlgID
}

// Name is the release the key was certified for.
func (k *ResidentKey) Name() string { return k.name }

// Public is the key's public half, to certify.
func (k *ResidentKey) Public() crypto.PublicKey { return k.public }

// ResidentKey returns the verified resident key certified for release
// name, or nil if the node offered none.
func (v *Verified) ResidentKey(name string) *ResidentKey {
	for _, k := range v.resident {
		if k.name == name {
			return k
		}
	}
	return nil
}

// residentKeyAttrs are the attributes a tpm_resident key must have:
// created in this TPM (sensitiveDataOrigin) and unable to leave it or its
// parent (fixedTPM, fixedParent), a signing key. It must not be
// restricted (it signs external data such as TLS handshakes) nor decrypt.
var residentKeyAttrs = []struct {
	name string
	get  func(tpm2.TPMAObject) bool
	want bool
}{
	{"fixedTPM", func(a tpm2.TPMAObject) bool { return a.FixedTPM }, true},
	{"fixedParent", func(a tpm2.TPMAObject) bool { return a.FixedParent }, true},
	{"sensitiveDataOrigin", func(a tpm2.TPMAObject) bool { return a.SensitiveDataOrigin }, true},
	{"sign", func(a tpm2.TPMAObject) bool { return a.SignEncrypt }, true},
	{"decrypt", func(a tpm2.TPMAObject) bool { return a.Decrypt }, false},
	{"restricted", func(a tpm2.TPMAObject) bool { return a.Restricted }, false},
}

// WithResidentKeys verifies the resident keys a node offered with this
// attestation and returns v with them (ResidentKey). Each must be a
// TPMS_ATTEST of type CERTIFY signed by the AK, whose qualifying data is
// resident.QualifyingData over the activated challenge secret and the
// key's release name, whose certified name is the name of the presented
// public area, and whose key has residentKeyAttrs and is ECC P-256 or RSA
// of at least 2048 bits. Names must not repeat. Any failure refuses the
// whole attestation (check resident_key): an offered key is either
// verified or nothing is released.
func (v *Verified) WithResidentKeys(keys []ResidentKeyEvidence, opts Opts) (*Verified, error) {
	if len(keys) == 0 {
		return v, nil
	}
	if len(keys) > MaxResidentKeys {
		return nil, fail(CheckInput, fmt.Sprintf("at most %d resident keys", MaxResidentKeys), nil)
	}
	out := *v
	out.resident = nil
	for i := range keys {
		k, err := v.residentKey(&keys[i], opts)
		if err != nil {
			return nil, err
		}
		if out.ResidentKey(k.name) != nil {
			return nil, fail(CheckResidentKey, fmt.Sprintf("resident key %q offered twice", k.name), nil)
		}
		out.resident = append(out.resident, k)
	}
	return &out, nil
}

func (v *Verified) residentKey(k *ResidentKeyEvidence, opts Opts) (*ResidentKey, error) {
	switch {
	case k.Name == "" || len(k.Name) > MaxResidentKeyNameSize:
		return nil, fail(CheckInput, fmt.Sprintf("resident key name must be 1 to %d bytes", MaxResidentKeyNameSize), nil)
	case len(k.Public) == 0 || len(k.Public) > MaxPublicSize:
		return nil, fail(CheckInput, fmt.Sprintf("resident key %q: public is empty or too large", k.Name), nil)
	case len(k.CertifyInfo) == 0 || len(k.CertifyInfo) > MaxCertifyAttestSize:
		return nil, fail(CheckInput, fmt.Sprintf("resident key %q: certify_info is empty or too large", k.Name), nil)
	case len(k.Signature) == 0 || len(k.Signature) > MaxSignatureSize:
		return nil, fail(CheckInput, fmt.Sprintf("resident key %q: signature is empty or too large", k.Name), nil)
	}
	bad := func(format string, args ...any) error {
		return fail(CheckResidentKey, fmt.Sprintf("resident key %q: ", k.Name)+fmt.Sprintf(format, args...), nil)
	}
	// The signature first: nothing in the certify is trusted before it is
	// known to come from the AK.
	if _, err := verifySignature(v.node, k.CertifyInfo, k.Signature, opts.AllowSHA1); err != nil {
		return nil, fail(CheckResidentKey, fmt.Sprintf("resident key %q: certify signature does not verify with the AK", k.Name), err)
	}
	att, err := decodeCertifyAttest(k.CertifyInfo)
	switch {
	case errors.Is(err, errNotCertify):
		return nil, bad("attestation is not a certify")
	case err != nil:
		return nil, exactFailure(CheckResidentKey, fmt.Sprintf("resident key %q: certify_info", k.Name), "TPMS_ATTEST", err)
	}
	want := resident.QualifyingData(v.secret, k.Name)
	if subtle.ConstantTimeCompare(att.extraData, want) != 1 {
		return nil, bad("certify qualifying data is not bound to this challenge")
	}
	pub, err := decodePublic(k.Public)
	if err != nil {
		return nil, exactFailure(CheckResidentKey, fmt.Sprintf("resident key %q: public", k.Name), "TPMT_PUBLIC", err)
	}
	name, err := objectName(pub, k.Public)
	if err != nil {
		return nil, bad("public has an unsupported name algorithm")
	}
	if !bytes.Equal(att.name, name) {
		return nil, bad("certified name is not the name of the presented public area")
	}
	var wrong []string
	for _, a := range residentKeyAttrs {
		if a.get(pub.ObjectAttributes) != a.want {
			if a.want {
				wrong = append(wrong, "no "+a.name)
			} else {
				wrong = append(wrong, a.name)
			}
		}
	}
	if len(wrong) > 0 {
		return nil, bad("not a TPM-resident signing key (%s)", strings.Join(wrong, ", "))
	}
	key, err := residentPublic(pub)
	if err != nil {
		return nil, bad("%s", err.Error())
	}
	return &ResidentKey{name: k.Name, public: key, authPolicy: bytes.Clone(pub.AuthPolicy.Buffer),
		userWithAuth: pub.ObjectAttributes.UserWithAuth, nameAlg: pub.NameAlg}, nil
}

// CheckResidentPCRPolicy checks that the verified resident key of release
// name signs only while the PCRs idx of bank hold the values this
// attestation quoted: its certified public area has no userWithAuth (its
// password alone does not authorize signing), name algorithm SHA-256, and
// as authPolicy exactly TPM2_PolicyPCR over those values
// (resident.PCRs.PolicyDigest), compared in constant time. A failure is
// check resident_key.
func (v *Verified) CheckResidentPCRPolicy(name string, bank tpm2.TPMAlgID, idx []uint32) error {
	k := v.ResidentKey(name)
	if k == nil {
		return fail(CheckResidentKey, fmt.Sprintf("resident key %q was not offered", name), nil)
	}
	sel := resident.PCRs{Bank: bank, PCRs: idx}
	switch {
	case k.userWithAuth:
		return fail(CheckResidentKey, fmt.Sprintf("resident key %q: signs with its password (userWithAuth), not only under a PCR policy", name), nil)
	case k.nameAlg != tpm2.TPMAlgSHA256:
		return fail(CheckResidentKey, fmt.Sprintf("resident key %q: a PCR-bound key needs name algorithm SHA-256", name), nil)
	}
	values := make([][]byte, 0, len(idx))
	for _, i := range idx {
		val, ok := v.pcrs[bank][i]
		if !ok {
			return fail(CheckResidentKey, fmt.Sprintf("resident key %q: PCR %s:%d was not quoted", name, BankName(bank), i), nil)
		}
		values = append(values, val)
	}
	want, err := sel.PolicyDigest(values)
	if err != nil {
		return fail(CheckResidentKey, fmt.Sprintf("resident key %q: unable to compute the PCR policy", name), err)
	}
	if subtle.ConstantTimeCompare(k.authPolicy, want) != 1 {
		return fail(CheckResidentKey, fmt.Sprintf("resident key %q: authPolicy is not the PolicyPCR of the quoted %s values", name, sel.String()), nil)
	}
	return nil
}

// residentPublic is the public key of a resident key's public area: ECC
// P-256 (on the curve) or RSA of at least minRSABits.
func residentPublic(pub *tpm2.TPMTPublic) (crypto.PublicKey, error) {
	key, err := tpm2.Pub(*pub)
	if err != nil {
		return nil, errors.New("public key cannot be read")
	}
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		if !onCurve(pub, k) || curveName(k) != "P-256" {
			return nil, errors.New("ECC key is not a P-256 point")
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("RSA key is shorter than %d bits", minRSABits)
		}
	default:
		return nil, errors.New("key is neither ECC nor RSA")
	}
	return key, nil
}
