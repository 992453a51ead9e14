package resident

import (
	"encoding/asn1"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
)

// The TSS2 key file format (the "TPM 2.0 Key Files" draft; what
// tpm2-tss-engine, OpenSSL's tpm2 provider and the Linux kernel read): a
// PEM block of type PEMType holding TSSPrivKey.
const (
	PEMType = "TSS2 PRIVATE KEY"
	// OwnerHandle is TPM_RH_OWNER: the key's parent is the primary a
	// consumer creates from ParentTemplate under the owner hierarchy.
	OwnerHandle = 0x40000001
)

// oidLoadableKey is id-loadablekey: a key created by (or imported into)
// the TPM, its private part encrypted to the parent.
var oidLoadableKey = asn1.ObjectIdentifier{2, 23, 133, 10, 1, 3}

// tssPrivKey is TSSPrivKey:
//
//	TPMKey ::= SEQUENCE {
//	  type      OBJECT IDENTIFIER,
//	  emptyAuth [0] EXPLICIT BOOLEAN OPTIONAL,
//	  parent    INTEGER,
//	  pubkey    OCTET STRING,  -- TPM2B_PUBLIC
//	  privkey   OCTET STRING } -- TPM2B_PRIVATE
type tssPrivKey struct {
	Type      asn1.ObjectIdentifier
	EmptyAuth bool `asn1:"explicit,tag:0,optional"`
	Parent    int64
	PubKey    []byte
	PrivKey   []byte
}

// PEM encodes k as a TSS2 PEM key file: a loadable key with an empty
// password whose parent is TPM_RH_OWNER (ParentTemplate's primary).
func (k *Key) PEM() ([]byte, error) {
	if len(k.Public) == 0 || len(k.Public) > 0xffff || len(k.Private) < 2 {
		return nil, errors.New("resident key has no public or private part")
	}
	// PubKey is TPM2B_PUBLIC: the size, then TPMT_PUBLIC.
	der, err := asn1.Marshal(tssPrivKey{
		Type: oidLoadableKey, EmptyAuth: true, Parent: OwnerHandle,
		PubKey:  append(binary.BigEndian.AppendUint16(nil, uint16(len(k.Public))), k.Public...),
		PrivKey: k.Private,
	})
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: PEMType, Bytes: der}), nil
}

// ParsePEM reads a TSS2 PEM key file as PEM writes it: a loadable key with
// an empty password under TPM_RH_OWNER, nothing after the PEM block. It
// returns the key with Public (TPMT_PUBLIC) and Private (TPM2B_PRIVATE);
// CertifyInfo, Signature and Name are not in the file.
func ParsePEM(data []byte) (*Key, error) {
	block, rest := pem.Decode(data)
	if block == nil || block.Type != PEMType {
		return nil, fmt.Errorf("no %s PEM block", PEMType)
	}
	if len(rest) != 0 {
		return nil, errors.New("trailing data after the PEM block")
	}
	var t tssPrivKey
	tail, err := asn1.Unmarshal(block.Bytes, &t)
	switch {
	case err != nil:
		return nil, fmt.Errorf("not a TSSPrivKey: %w", err)
	case len(tail) != 0:
		return nil, errors.New("trailing data after the TSSPrivKey")
	case !t.Type.Equal(oidLoadableKey):
		return nil, fmt.Errorf("key type %v is not a loadable key", t.Type)
	case !t.EmptyAuth:
		return nil, errors.New("the key has a password")
	case t.Parent != OwnerHandle:
		return nil, fmt.Errorf("parent 0x%x is not TPM_RH_OWNER", t.Parent)
	case len(t.PubKey) < 2 || int(binary.BigEndian.Uint16(t.PubKey)) != len(t.PubKey)-2:
		return nil, errors.New("pubkey is not one TPM2B_PUBLIC")
	case len(t.PrivKey) < 2 || int(binary.BigEndian.Uint16(t.PrivKey)) != len(t.PrivKey)-2:
		return nil, errors.New("privkey is not one TPM2B_PRIVATE")
	}
	return &Key{Public: t.PubKey[2:], Private: t.PrivKey}, nil
}
