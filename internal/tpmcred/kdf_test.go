package tpmcred_test

import (
	"bytes"
	"crypto"
	"fmt"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/internal/tpmcred"
)

// KDFa and KDFe give go-tpm's bytes: every hash, key sizes shorter than,
// equal to and longer than a digest, sizes that are not whole bytes, with
// and without contexts.
func TestKDFMatchesGoTPM(t *testing.T) {
	key := bytes.Repeat([]byte{0x11}, 32)
	u, v := bytes.Repeat([]byte{0x22}, 48), bytes.Repeat([]byte{0x33}, 66)
	for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256, crypto.SHA384, crypto.SHA512} {
		for _, bits := range []int{1, 7, 8, 100, 128, 160, 192, 256, 257, 384, 512, 1000, 2048} {
			for _, ctx := range [][2][]byte{{nil, nil}, {u, nil}, {u, v}} {
				t.Run(fmt.Sprintf("%v/%d bits/%d+%d context", h, bits, len(ctx[0]), len(ctx[1])), func(t *testing.T) {
					if got, want := tpmcred.KDFa(h, key, "STORAGE", ctx[0], ctx[1], bits), tpm2.KDFa(h, key, "STORAGE", ctx[0], ctx[1], bits); !bytes.Equal(got, want) {
						t.Errorf("KDFa = %x\ngo-tpm %x", got, want)
					}
					if got, want := tpmcred.KDFe(h, key, "DUPLICATE", ctx[0], ctx[1], bits), tpm2.KDFe(h, key, "DUPLICATE", ctx[0], ctx[1], bits); !bytes.Equal(got, want) {
						t.Errorf("KDFe = %x\ngo-tpm %x", got, want)
					}
				})
			}
		}
	}
	if got := tpmcred.KDFa(crypto.SHA256, key, "X", nil, nil, 0); len(got) != 0 {
		t.Errorf("KDFa of 0 bits = %x", got)
	}
}
