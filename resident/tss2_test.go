package resident

import (
	"bytes"
	"encoding/asn1"
	"encoding/pem"
	"strings"
	"testing"

	"github.com/google/go-tpm-tools/client"

	"github.com/keybroker/keybroker/internal/tpmtest"
)

// TestPEM creates a key in the simulator, writes it as a TSS2 key file and
// reads it back; ParsePEM refuses what PEM never writes.
func TestPEM(t *testing.T) {
	rw := tpmtest.Open(t)
	ak, err := client.AttestationKeyRSA(rw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ak.Close)
	k, err := Create(rw, uint32(ak.Handle()), bytes.Repeat([]byte{1}, 32), "web")
	if err != nil {
		t.Fatal(err)
	}
	data, err := k.PEM()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(data), "-----BEGIN TSS2 PRIVATE KEY-----\n") {
		t.Fatalf("PEM() =\n%s", data)
	}
	got, err := ParsePEM(data)
	if err != nil {
		t.Fatalf("ParsePEM: %v", err)
	}
	if !bytes.Equal(got.Public, k.Public) || !bytes.Equal(got.Private, k.Private) {
		t.Fatal("the key file does not hold the created key")
	}

	block, _ := pem.Decode(data)
	var raw tssPrivKey
	if _, err := asn1.Unmarshal(block.Bytes, &raw); err != nil {
		t.Fatal(err)
	}
	encode := func(mutate func(*tssPrivKey)) []byte {
		v := raw
		mutate(&v)
		der, err := asn1.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: PEMType, Bytes: der})
	}
	tests := []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{"not TSS2", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: block.Bytes}), "no TSS2 PRIVATE KEY PEM block"},
		{"trailing data", append(bytes.Clone(data), "x"...), "trailing data after the PEM block"},
		{"importable key", encode(func(v *tssPrivKey) { v.Type = asn1.ObjectIdentifier{2, 23, 133, 10, 1, 4} }), "key type 2.23.133.10.1.4 is not a loadable key"},
		{"password", encode(func(v *tssPrivKey) { v.EmptyAuth = false }), "the key has a password"},
		{"persistent parent", encode(func(v *tssPrivKey) { v.Parent = 0x81000001 }), "parent 0x81000001 is not TPM_RH_OWNER"},
		{"short pubkey", encode(func(v *tssPrivKey) { v.PubKey = v.PubKey[:len(v.PubKey)-1] }), "pubkey is not one TPM2B_PUBLIC"},
		{"short privkey", encode(func(v *tssPrivKey) { v.PrivKey = v.PrivKey[:len(v.PrivKey)-1] }), "privkey is not one TPM2B_PRIVATE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParsePEM(tt.data)
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("ParsePEM = %v, want %q", err, tt.wantErr)
			}
		})
	}
}
