package verify_test

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm-tools/simulator"
	legacy "github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify"
)

// The node side runs on the TPM simulator here; in a deployment it is the
// agent, and the EK and AK publics and quotes arrive over the broker's API.
func ExampleQuotes() {
	tpm, err := simulator.Get()
	if err != nil {
		log.Fatal(err)
	}
	defer tpm.Close()
	ek, err := client.EndorsementKeyRSA(tpm)
	if err != nil {
		log.Fatal(err)
	}
	defer ek.Close()
	ak, err := client.AttestationKeyRSA(tpm)
	if err != nil {
		log.Fatal(err)
	}
	defer ak.Close()
	ekPub, err := ek.PublicArea().Encode()
	if err != nil {
		log.Fatal(err)
	}
	akPub, err := ak.PublicArea().Encode()
	if err != nil {
		log.Fatal(err)
	}

	// Broker: trust the EK (here by hash; or by certificate through
	// Trust.CAs) and check the AK.
	ekHash, err := verify.EKHash(ek.PublicKey())
	if err != nil {
		log.Fatal(err)
	}
	node, err := verify.Node(ekPub, nil, nil, akPub, verify.Opts{Trust: verify.Trust{EKHashes: []string{ekHash}}})
	if err != nil {
		log.Fatal(err)
	}

	// The broker sends a secret bound to the EK and AK name with
	// MakeCredential; the node recovers it with ActivateCredential (not shown)
	// and quotes with it as qualifying data.
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		log.Fatal(err)
	}
	q, err := ak.Quote(legacy.PCRSelection{Hash: legacy.AlgSHA256, PCRs: []int{0, 1, 2, 3, 4, 5, 6, 7}}, secret)
	if err != nil {
		log.Fatal(err)
	}
	quotes := []verify.Quote{{
		Attest: q.GetQuote(), Signature: q.GetRawSig(), Bank: tpm2.TPMAlgSHA256, PCRs: q.GetPcrs().GetPcrs(),
	}}

	// Broker: verify the quotes against the SHA-256 of the secret it sent.
	v, err := verify.Quotes(node, sha256.Sum256(secret), quotes, verify.Opts{})
	if err != nil {
		log.Fatal(err)
	}
	for _, bank := range v.Banks() {
		fmt.Printf("verified %s: %d PCRs\n", verify.BankName(bank), len(v.PCRs(bank)))
	}

	// The same quotes do not answer another challenge.
	_, err = verify.Quotes(node, sha256.Sum256([]byte("another challenge")), quotes, verify.Opts{})
	fmt.Println("refused:", verify.FailedCheck(err))
	// Output:
	// verified sha256: 8 PCRs
	// refused: quote_nonce
}

func ExampleFailedCheck() {
	_, err := verify.Node([]byte{0xde, 0xad}, nil, nil, []byte{0xbe, 0xef}, verify.Opts{Trust: verify.Trust{}})
	fmt.Println(verify.FailedCheck(err))

	// Msg is what the node may be told; Err (and Error()) carry the cause.
	var ce *verify.CheckError
	if errors.As(fmt.Errorf("challenge refused: %w", err), &ce) {
		fmt.Println(ce.Msg)
	}
	fmt.Printf("%q\n", verify.FailedCheck(errors.New("not from verify")))
	// Output:
	// input
	// ek_public is not a TPMT_PUBLIC
	// ""
}

// An EK's hash is the same whether it is computed from the TPM public area or
// from the EK certificate, so an allowlist can be filled from either.
func ExampleEKHash() {
	pemBytes, err := os.ReadFile("testdata/ek_p256.pem")
	if err != nil {
		log.Fatal(err)
	}
	block, _ := pem.Decode(pemBytes)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		log.Fatal(err)
	}
	h, err := verify.EKHash(cert.PublicKey)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(h)
	// Output:
	// 887111306261082cdc2edf0c49d2bf661f7617ab207f962945561f1ae87bcbe9
}

func ExampleBankName() {
	fmt.Println(verify.BankName(tpm2.TPMAlgSHA256), verify.BankName(tpm2.TPMAlgSHA1), verify.BankName(tpm2.TPMAlgSM3256))
	// Output: sha256 sha1 0x0012
}
