package tpmcred_test

import (
	"crypto/ecdh"
	"crypto/rand"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/internal/tpmcred"
)

// A broker parses a node's EK once and makes the challenge's credential for
// the node's AK, and later import blobs, to it.
func Example() {
	priv, _ := ecdh.P256().GenerateKey(rand.Reader) // in a TPM, in real life
	pt := priv.PublicKey().Bytes()[1:]
	ekPublic := tpm2.ECCEKTemplate // the TCG default ECC EK, as the node presents it
	ekPublic.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: pt[:32]}, Y: tpm2.TPM2BECCParameter{Buffer: pt[32:]},
	})

	ek, err := tpmcred.NewKey(&ekPublic)
	if err != nil {
		fmt.Println(err)
		return
	}
	akName := append([]byte{0x00, 0x0b}, make([]byte, 32)...) // nameAlg SHA-256 || digest
	secret := make([]byte, 32)
	rand.Read(secret)
	idObject, encSecret, err := ek.MakeCredential(rand.Reader, akName, secret)
	if err != nil {
		fmt.Println(err)
		return
	}
	// TPM2_ActivateCredential(AK, EK, TPM2B(idObject), TPM2B(encSecret))
	// returns secret in the TPM holding both keys, and only there.
	fmt.Println(len(idObject), "bytes of TPMS_ID_OBJECT,", len(encSecret), "of TPMS_ECC_POINT")

	tooWeak := ekPublic
	tooWeak.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull}, CurveID: tpm2.TPMECCNistP256,
	})
	_, err = tpmcred.NewKey(&tooWeak)
	fmt.Println(err)
	// Output:
	// 68 bytes of TPMS_ID_OBJECT, 68 of TPMS_ECC_POINT
	// unsupported key: symmetric algorithm 0x0010 is not AES
}
