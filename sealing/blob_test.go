package sealing_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-tpm-tools/client"
	legacy "github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpm2"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/internal/tpmtest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/sealing"
)

// sealForSimulator seals payload to the simulator's RSA EK, to sha256 PCR 0
// and 7 when sealed is set.
func sealForSimulator(t *testing.T, rw io.ReadWriter, ek *client.Key, sealed bool) *pb.Credential {
	t.Helper()
	pubBytes, err := ek.PublicArea().Encode()
	if err != nil {
		t.Fatal(err)
	}
	ekPub, err := tpm2.Unmarshal[tpm2.TPMTPublic](pubBytes)
	if err != nil {
		t.Fatal(err)
	}
	var cred *pb.Credential
	if sealed {
		pcrs, err := client.ReadPCRs(rw, legacy.PCRSelection{Hash: legacy.AlgSHA256, PCRs: []int{0, 7}})
		if err != nil {
			t.Fatal(err)
		}
		cred, err = sealing.SealCredential(ekPub, "tls", pb.CredentialType_TLS_CERTIFICATE, payload, pcrs)
		if err != nil {
			t.Fatal(err)
		}
	} else if cred, err = sealing.SealCredential(ekPub, "tls", pb.CredentialType_TLS_CERTIFICATE, payload, nil); err != nil {
		t.Fatal(err)
	}
	return cred
}

// TestCredentialBlobIsTPM2B checks the wire form: each field one TPM2B whose
// body is the TPM structure TPM2_Import takes, and that a node opens it.
func TestCredentialBlobIsTPM2B(t *testing.T) {
	rw := tpmtest.Open(t)
	ek, err := client.EndorsementKeyRSA(rw)
	if err != nil {
		t.Fatal(err)
	}
	defer ek.Close()
	for _, sealed := range []bool{false, true} {
		cred := sealForSimulator(t, rw, ek, sealed)
		b := cred.GetBlob()
		for name, f := range map[string][]byte{"duplicate": b.GetDuplicate(), "encrypted_seed": b.GetEncryptedSeed(), "public_area": b.GetPublicArea()} {
			if len(f) < 2 || int(binary.BigEndian.Uint16(f)) != len(f)-2 {
				t.Errorf("%s is not one TPM2B: % x...", name, f[:min(len(f), 4)])
			}
		}
		// The RSA EK's seed is RSA-OAEP to a 2048-bit key: 256 bytes.
		if len(b.GetEncryptedSeed()) != 2+256 {
			t.Errorf("encrypted_seed has %d bytes, want 258", len(b.GetEncryptedSeed()))
		}
		pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](b.GetPublicArea())
		if err != nil {
			t.Fatalf("public_area is not a TPM2B_PUBLIC: %v", err)
		}
		obj, err := pub.Contents()
		if err != nil || obj.Type != tpm2.TPMAlgKeyedHash {
			t.Fatalf("public_area holds %v (%v), want a sealed keyed-hash object", obj, err)
		}
		if got := obj.ObjectAttributes.UserWithAuth; got == sealed {
			t.Errorf("sealed=%v: userWithAuth=%v", sealed, got)
		}
		if sealed != (len(obj.AuthPolicy.Buffer) == 32) {
			t.Errorf("sealed=%v: authPolicy %x", sealed, obj.AuthPolicy.Buffer)
		}
		if (cred.GetMode() == pb.ReleaseMode_PCR_SEALED) != sealed || (b.GetPcrs() != nil) != sealed {
			t.Errorf("sealed=%v: mode %v, pcrs %v", sealed, cred.GetMode(), b.GetPcrs())
		}
		got, err := sealing.OpenCredential(ek, cred)
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("sealed=%v: OpenCredential = %q, %v", sealed, got, err)
		}
	}
}

func TestOpenCredentialParsesStrictly(t *testing.T) {
	rw := tpmtest.Open(t)
	ek, err := client.EndorsementKeyRSA(rw)
	if err != nil {
		t.Fatal(err)
	}
	defer ek.Close()
	good := sealForSimulator(t, rw, ek, true)
	tests := []struct {
		name    string
		modify  func(b *pb.ImportBlob)
		wantErr string
	}{
		{"no blob", nil, "credential has no import blob"},
		{"trailing byte", func(b *pb.ImportBlob) { b.Duplicate = append(b.Duplicate, 0) },
			"import blob duplicate is not a TPM2B: size "},
		{"short by a byte", func(b *pb.ImportBlob) { b.EncryptedSeed = b.EncryptedSeed[:len(b.EncryptedSeed)-1] },
			"import blob encrypted_seed is not a TPM2B: size 256, 255 bytes follow"},
		{"bare body", func(b *pb.ImportBlob) { b.PublicArea = b.PublicArea[2:] },
			"import blob public_area is not a TPM2B: size "},
		{"no size", func(b *pb.ImportBlob) { b.PublicArea = b.PublicArea[:1] },
			"import blob public_area is not a TPM2B: no size"},
		{"empty body", func(b *pb.ImportBlob) { b.EncryptedSeed = []byte{0, 0} },
			"import blob encrypted_seed is empty"},
		{"missing", func(b *pb.ImportBlob) { b.Duplicate = nil },
			"import blob duplicate is not a TPM2B: no size"},
		{"oversized", func(b *pb.ImportBlob) { b.Duplicate = make([]byte, sealing.MaxDuplicateSize+1) },
			"import blob duplicate exceeds 2048 bytes"},
		{"too many PCRs", func(b *pb.ImportBlob) {
			for i := range uint32(25) {
				b.Pcrs.Values[i] = make([]byte, 32)
			}
		}, "import blob names 25 PCR values, at most 24 allowed"},
		{"PCR selection changed", func(b *pb.ImportBlob) { delete(b.Pcrs.Values, 7) },
			sealing.ErrImport.Error()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := proto.Clone(good).(*pb.Credential)
			if tt.modify == nil {
				c.Blob = nil
			} else {
				tt.modify(c.Blob)
			}
			got, err := sealing.OpenCredential(ek, c)
			if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) || got != nil {
				t.Fatalf("OpenCredential = %q, %v; want error %q", got, err, tt.wantErr)
			}
			if tt.wantErr != sealing.ErrImport.Error() && errors.Is(err, sealing.ErrImport) {
				t.Errorf("malformed blob reached the TPM: %v", err)
			}
		})
	}
	if got, err := sealing.OpenCredential(ek, good); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("OpenCredential of the untouched credential = %q, %v", got, err)
	}
}
