package verify_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/resident"
)

// The TPM structures a broker parses, fuzzed through verify's entry points
// from real simulator output. Each fuzz worker starts its own simulator to
// make the seeds; the fuzzed calls need no TPM.

// canonical reports whether b is exactly the encoding of one T.
func canonical[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](b []byte) bool {
	v, err := tpm2.Unmarshal[T, P](b)
	return err == nil && bytes.Equal(tpm2.Marshal(P(v)), b)
}

// FuzzNode feeds EK and AK public areas (TPMT_PUBLIC) to verify.Node, as
// Challenge does. Whatever it accepts must be exactly two TPMT_PUBLICs, with
// ECC points on their curves, and a trusted EK.
func FuzzNode(f *testing.F) {
	e := newSimEvidence(f)
	var trust verify.Trust
	for _, ek := range [][]byte{e.rsaEK, e.eccEK} {
		n := e.mustNode(f, ek, e.rsaAK)
		trust.EKHashes = append(trust.EKHashes, n.EKHash())
	}
	f.Add(e.rsaEK, e.rsaAK)
	f.Add(e.eccEK, e.eccAK)
	f.Add(e.rsaEK, e.eccAK)
	f.Add(withByte(e.eccEK, 0), e.eccAK)
	f.Add(e.rsaEK, withByte(e.rsaAK, 0))
	f.Add(offCurve(f, e.eccEK, nil), e.eccAK)
	f.Add(e.eccEK, offCurve(f, e.eccAK, nil))
	f.Add(e.rsaAK, e.rsaEK)
	f.Fuzz(func(t *testing.T, ek, ak []byte) {
		n, err := verify.Node(ek, nil, nil, ak, verify.Opts{Trust: trust})
		if err != nil {
			if verify.FailedCheck(err) == "" {
				t.Fatalf("error without a check: %v", err)
			}
			return
		}
		for _, b := range [][]byte{ek, ak} {
			if !canonical[tpm2.TPMTPublic](b) {
				t.Fatalf("accepted %x, which is not exactly a TPMT_PUBLIC", b)
			}
			pub, _ := tpm2.Unmarshal[tpm2.TPMTPublic](b)
			key, err := tpm2.Pub(*pub)
			if err != nil {
				t.Fatalf("accepted a public area without a key: %v", err)
			}
			if k, ok := key.(*ecdsa.PublicKey); ok {
				if _, err := k.ECDH(); err != nil {
					t.Fatalf("accepted an ECC point off its curve: %v", err)
				}
			}
		}
		if !slices.Contains(trust.EKHashes, n.EKHash()) {
			t.Fatalf("accepted an untrusted EK %s", n.EKHash())
		}
	})
}

// FuzzQuoteAttest feeds TPMS_ATTEST structures to verify.Quotes, each signed
// by a software AK (a TPM-resident AK signs only what its TPM makes), so
// that the fuzzer reaches every check after the signature. The seeds are
// the simulator's quotes, re-signed. Whatever Quotes accepts must be exactly
// one TPMS_ATTEST of type QUOTE carrying the challenge secret and naming the
// AK as its signer.
func FuzzQuoteAttest(f *testing.F) {
	e := newSimEvidence(f)
	soft := newSoftECCAK(akP256Key(), tpm2.TPMAlgSHA256)
	node := e.mustNode(f, e.rsaEK, soft.publicBytes())
	ekPub, err := tpm2.Unmarshal[tpm2.TPMTPublic](e.rsaEK)
	if err != nil {
		f.Fatal(err)
	}
	var signers [][]byte
	for _, parent := range [][]byte{
		ownerQN, tpm2.PrimaryHandleName(tpm2.TPMRHEndorsement), tpm2.PrimaryHandleName(tpm2.TPMRHPlatform),
		tpm2.PrimaryHandleName(tpm2.TPMRHNull), qualifiedName(f, tpm2.PrimaryHandleName(tpm2.TPMRHEndorsement), ekPub).Buffer,
	} {
		signers = append(signers, qualifiedName(f, parent, &soft.pub).Buffer)
	}
	genuine := resigned(f, e.rsaQuote, soft, nil, nil)
	if _, err := verify.Quotes(node, e.nonceHash(), []verify.Quote{genuine}, verify.Opts{}); err != nil {
		f.Fatalf("the re-signed simulator quote is refused: %v", err)
	}
	f.Add(genuine.Attest)
	f.Add(resigned(f, e.eccQuote, soft, nil, nil).Attest)
	f.Add(resigned(f, e.rsaQuote, soft, nil, func(b []byte) []byte { return withByte(b, 0) }).Attest)
	f.Add(e.rsaQuote.Attest) // names the simulator's AK
	f.Fuzz(func(t *testing.T, attest []byte) {
		q := e.rsaQuote
		q.Attest, q.Signature = attest, soft.sign(t, attest)
		_, err := verify.Quotes(node, e.nonceHash(), []verify.Quote{q}, verify.Opts{})
		if err != nil {
			if verify.FailedCheck(err) == "" {
				t.Fatalf("error without a check: %v", err)
			}
			return
		}
		if !canonical[tpm2.TPMSAttest](attest) {
			t.Fatalf("accepted %x, which is not exactly a TPMS_ATTEST", attest)
		}
		att, _ := tpm2.Unmarshal[tpm2.TPMSAttest](attest)
		switch {
		case att.Type != tpm2.TPMSTAttestQuote:
			t.Fatalf("accepted an attestation of type 0x%04x", uint16(att.Type))
		case !bytes.Equal(att.ExtraData.Buffer, e.secret):
			t.Fatalf("accepted qualifying data %x", att.ExtraData.Buffer)
		case !slices.ContainsFunc(signers, func(s []byte) bool { return bytes.Equal(s, att.QualifiedSigner.Buffer) }):
			t.Fatalf("accepted qualifiedSigner %x", att.QualifiedSigner.Buffer)
		}
	})
}

// FuzzQuoteSignature feeds TPMT_SIGNATURE structures to verify.Quotes for
// the simulator's RSA and ECC quotes. An RSASSA signature is unique, so the
// RSA quote may pass only with the TPM's own signature; the ECC one with an
// exact TPMT_SIGNATURE.
func FuzzQuoteSignature(f *testing.F) {
	e := newSimEvidence(f)
	rsaNode := e.mustNode(f, e.rsaEK, e.rsaAK)
	eccNode := e.mustNode(f, e.eccEK, e.eccAK)
	for _, c := range []struct {
		node *verify.NodeIdentity
		q    verify.Quote
	}{{rsaNode, e.rsaQuote}, {eccNode, e.eccQuote}} {
		if _, err := verify.Quotes(c.node, e.nonceHash(), []verify.Quote{c.q}, verify.Opts{}); err != nil {
			f.Fatalf("the simulator's quote is refused: %v", err)
		}
		f.Add(c.q.Signature)
	}
	f.Add(withByte(e.rsaQuote.Signature, 0))
	f.Add(withByte(e.eccQuote.Signature, 0))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, sig []byte) {
		for _, c := range []struct {
			node *verify.NodeIdentity
			q    verify.Quote
		}{{rsaNode, e.rsaQuote}, {eccNode, e.eccQuote}} {
			q := c.q
			q.Signature = sig
			_, err := verify.Quotes(c.node, e.nonceHash(), []verify.Quote{q}, verify.Opts{})
			if err != nil {
				if verify.FailedCheck(err) == "" {
					t.Fatalf("error without a check: %v", err)
				}
				continue
			}
			if !canonical[tpm2.TPMTSignature](sig) {
				t.Fatalf("accepted %x, which is not exactly a TPMT_SIGNATURE", sig)
			}
			if c.node == rsaNode && !bytes.Equal(sig, e.rsaQuote.Signature) {
				t.Fatalf("accepted RSASSA signature %x, not the TPM's %x", sig, e.rsaQuote.Signature)
			}
		}
	})
}

// FuzzResidentCertify feeds TPMS_ATTEST structures, signed by the AK, to
// Verified.WithResidentKeys as the certify of a P-256 resident key. Whatever
// it accepts must be exactly a TPMS_ATTEST of type CERTIFY over this
// challenge's qualifying data for the release, naming the presented key.
func FuzzResidentCertify(f *testing.F) {
	e := newSimEvidence(f)
	soft := newSoftECCAK(akP256Key(), tpm2.TPMAlgSHA256)
	node := e.mustNode(f, e.rsaEK, soft.publicBytes())
	v, err := verify.Quotes(node, e.nonceHash(), []verify.Quote{resigned(f, e.rsaQuote, soft, nil, nil)}, verify.Opts{})
	if err != nil {
		f.Fatal(err)
	}
	key := resident.KeyTemplate()
	key.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, eccPoint(&mustECDSAKey(elliptic.P256()).PublicKey))
	public := tpm2.Marshal(key)
	sum := sha256.Sum256(public)
	name := append([]byte{0, byte(tpm2.TPMAlgSHA256)}, sum[:]...)
	qd := resident.QualifyingData(e.secret, "web")
	genuine := tpm2.Marshal(&tpm2.TPMSAttest{
		Magic: tpm2.TPMGeneratedValue, Type: tpm2.TPMSTAttestCertify,
		QualifiedSigner: tpm2.TPM2BName{Buffer: name}, ExtraData: tpm2.TPM2BData{Buffer: qd},
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestCertify, &tpm2.TPMSCertifyInfo{
			Name: tpm2.TPM2BName{Buffer: name}, QualifiedName: tpm2.TPM2BName{Buffer: name}}),
	})
	check := func(t testing.TB, attest []byte) error {
		_, err := v.WithResidentKeys([]verify.ResidentKeyEvidence{{Name: "web", Public: public, CertifyInfo: attest, Signature: soft.sign(t, attest)}}, verify.Opts{})
		return err
	}
	if err := check(f, genuine); err != nil {
		f.Fatalf("the genuine certify is refused: %v", err)
	}
	f.Add(genuine)
	f.Add(resigned(f, e.rsaQuote, soft, nil, nil).Attest)
	f.Add(withByte(genuine, 0))
	f.Fuzz(func(t *testing.T, attest []byte) {
		err := check(t, attest)
		if err != nil {
			if verify.FailedCheck(err) == "" {
				t.Fatalf("error without a check: %v", err)
			}
			return
		}
		if !canonical[tpm2.TPMSAttest](attest) {
			t.Fatalf("accepted %x, which is not exactly a TPMS_ATTEST", attest)
		}
		att, _ := tpm2.Unmarshal[tpm2.TPMSAttest](attest)
		certify, err := att.Attested.Certify()
		switch {
		case att.Type != tpm2.TPMSTAttestCertify || err != nil:
			t.Fatalf("accepted an attestation of type 0x%04x", uint16(att.Type))
		case !bytes.Equal(att.ExtraData.Buffer, qd):
			t.Fatalf("accepted qualifying data %x", att.ExtraData.Buffer)
		case !bytes.Equal(certify.Name.Buffer, name):
			t.Fatalf("accepted certified name %x", certify.Name.Buffer)
		}
	})
}
