package verify_test

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify"
)

func TestFailedCheck(t *testing.T) {
	ce := &verify.CheckError{Check: verify.CheckNonce, Msg: "m"}
	tests := []struct {
		name string
		err  error
		want verify.Check
	}{
		{name: "nil", err: nil, want: ""},
		{name: "foreign error", err: io.EOF, want: ""},
		{name: "check error", err: ce, want: verify.CheckNonce},
		{name: "wrapped", err: fmt.Errorf("challenge refused: %w", ce), want: verify.CheckNonce},
		{name: "joined", err: errors.Join(io.EOF, ce), want: verify.CheckNonce},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := verify.FailedCheck(tt.err); got != tt.want {
				t.Errorf("FailedCheck() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestCheckError(t *testing.T) {
	plain := &verify.CheckError{Check: verify.CheckAK, Msg: "AK must not be a decryption key"}
	if got, want := plain.Error(), "ak_attributes: AK must not be a decryption key"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if plain.Unwrap() != nil {
		t.Error("Unwrap() of an error without cause is not nil")
	}
	caused := &verify.CheckError{Check: verify.CheckInput, Msg: "ek_public is not a TPMT_PUBLIC", Err: io.ErrUnexpectedEOF}
	if got, want := caused.Error(), "input: ek_public is not a TPMT_PUBLIC: unexpected EOF"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(caused, io.ErrUnexpectedEOF) {
		t.Error("the cause is not reachable with errors.Is")
	}
}

// Every error the package returns carries a check and a message that starts
// the error text.
func TestErrorsCarryACheck(t *testing.T) {
	_, err := verify.Node([]byte{1}, nil, nil, []byte{1}, verify.Opts{Trust: verify.Trust{}})
	var ce *verify.CheckError
	if !errors.As(err, &ce) || !strings.HasPrefix(err.Error(), string(ce.Check)+": "+ce.Msg) {
		t.Errorf("error %v does not start with its check and message", err)
	}
}

func TestEKHash(t *testing.T) {
	// Computed independently (testdata/README.md):
	//   openssl x509 -in testdata/ek_p256.pem -pubkey -noout |
	//     openssl pkey -pubin -outform DER | sha256sum
	const want = "887111306261082cdc2edf0c49d2bf661f7617ab207f962945561f1ae87bcbe9"
	cert := mustParse(t, readPEM(t, "ek_p256.pem"))
	if got := mustEKHash(t, cert.PublicKey); got != want {
		t.Errorf("EKHash(certificate key) = %s, want %s", got, want)
	}
	// The same EK presented as a TPM public area hashes the same.
	ekPub := tpm2.Marshal(eccEKFromCert(cert.PublicKey))
	n, err := verify.Node(ekPub, nil, nil, defaultAK().publicBytes(), verify.Opts{Trust: verify.Trust{EKHashes: []string{want}}})
	if err != nil {
		t.Fatalf("EK from the certificate not trusted by its hash: %v", err)
	}
	if n.EKHash() != want {
		t.Errorf("NodeIdentity.EKHash() = %s, want %s", n.EKHash(), want)
	}

	if _, err := verify.EKHash(struct{}{}); err == nil || !strings.HasPrefix(err.Error(), "unable to encode EK public key: ") {
		t.Errorf("EKHash(struct{}{}) error = %v, want %q", err, "unable to encode EK public key: ...")
	}
}

func TestBankName(t *testing.T) {
	for bank, want := range map[tpm2.TPMAlgID]string{
		tpm2.TPMAlgSHA1:    "sha1",
		tpm2.TPMAlgSHA256:  "sha256",
		tpm2.TPMAlgSHA384:  "sha384",
		tpm2.TPMAlgSHA512:  "sha512",
		tpm2.TPMAlgSM3256:  "0x0012",
		tpm2.TPMAlgSHA3256: "0x0027",
	} {
		if got := verify.BankName(bank); got != want {
			t.Errorf("BankName(%#04x) = %q, want %q", uint16(bank), got, want)
		}
	}
}
