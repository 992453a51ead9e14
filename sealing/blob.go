package sealing

import (
	"encoding/binary"
	"errors"
	"fmt"

	tpmpb "github.com/google/go-tpm-tools/proto/tpm"

	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// Limits on the API's ImportBlob fields, each counted as a whole TPM2B (the
// 2-byte size included). They are above what any TPM's TPM2B_PRIVATE,
// TPM2B_ENCRYPTED_SECRET (RSA-4096 at most) and TPM2B_PUBLIC hold.
const (
	MaxDuplicateSize     = 2048
	MaxEncryptedSeedSize = 1024
	MaxPublicAreaSize    = 1024
	// MaxBlobPCRs bounds the PCR values an import blob names.
	MaxBlobPCRs = 24
)

// BlobToProto encodes a go-tpm-tools import blob as the keybroker API's
// ImportBlob. go-tpm-tools keeps each part without its size; the API carries
// each as the whole TPM2B that TPM2_Import takes and tpm2_import reads from
// a file: duplicate as TPM2B_PRIVATE, encrypted_seed as
// TPM2B_ENCRYPTED_SECRET and public_area as TPM2B_PUBLIC.
func BlobToProto(b *tpmpb.ImportBlob) (*pb.ImportBlob, error) {
	if b == nil {
		return nil, errors.New("no import blob")
	}
	out := &pb.ImportBlob{}
	fields := []struct {
		name string
		body []byte
		max  int
		dst  *[]byte
	}{
		{"duplicate", b.GetDuplicate(), MaxDuplicateSize, &out.Duplicate},
		{"encrypted_seed", b.GetEncryptedSeed(), MaxEncryptedSeedSize, &out.EncryptedSeed},
		{"public_area", b.GetPublicArea(), MaxPublicAreaSize, &out.PublicArea},
	}
	for _, f := range fields {
		if len(f.body) == 0 || 2+len(f.body) > f.max {
			return nil, fmt.Errorf("import blob %s has %d bytes, want 1 to %d", f.name, len(f.body), f.max-2)
		}
		*f.dst = binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(f.body)), uint16(len(f.body)))
		*f.dst = append(*f.dst, f.body...)
	}
	if p := b.GetPcrs(); p != nil {
		out.Pcrs = &pb.PCRValues{HashAlg: uint32(p.GetHash()), Values: p.GetPcrs()}
	}
	return out, nil
}

// BlobFromProto decodes the API's ImportBlob into go-tpm-tools' form. It is
// strict: each field must be one non-empty TPM2B within its limit whose size
// prefix covers exactly the rest of the field, with no trailing bytes.
func BlobFromProto(b *pb.ImportBlob) (*tpmpb.ImportBlob, error) {
	if b == nil {
		return nil, errors.New("credential has no import blob")
	}
	dup, err := tpm2bBody("duplicate", b.GetDuplicate(), MaxDuplicateSize)
	if err != nil {
		return nil, err
	}
	seed, err := tpm2bBody("encrypted_seed", b.GetEncryptedSeed(), MaxEncryptedSeedSize)
	if err != nil {
		return nil, err
	}
	pub, err := tpm2bBody("public_area", b.GetPublicArea(), MaxPublicAreaSize)
	if err != nil {
		return nil, err
	}
	if b.GetPcrs() != nil && b.GetAuthorization() != nil {
		return nil, errors.New("import blob names both PCR values and a PCR-policy authorization")
	}
	out := &tpmpb.ImportBlob{Duplicate: dup, EncryptedSeed: seed, PublicArea: pub}
	if p := b.GetPcrs(); p != nil {
		if len(p.GetValues()) > MaxBlobPCRs {
			return nil, fmt.Errorf("import blob names %d PCR values, at most %d allowed", len(p.GetValues()), MaxBlobPCRs)
		}
		out.Pcrs = &tpmpb.PCRs{Hash: tpmpb.HashAlgo(p.GetHashAlg()), Pcrs: p.GetValues()}
	}
	return out, nil
}

// tpm2bBody returns the body of field, which must be exactly one TPM2B.
func tpm2bBody(name string, field []byte, maxSize int) ([]byte, error) {
	switch {
	case len(field) > maxSize:
		return nil, fmt.Errorf("import blob %s exceeds %d bytes", name, maxSize)
	case len(field) < 2:
		return nil, fmt.Errorf("import blob %s is not a TPM2B: no size", name)
	}
	size := int(binary.BigEndian.Uint16(field))
	switch {
	case size == 0:
		return nil, fmt.Errorf("import blob %s is empty", name)
	case size != len(field)-2:
		return nil, fmt.Errorf("import blob %s is not a TPM2B: size %d, %d bytes follow", name, size, len(field)-2)
	}
	return field[2:], nil
}
