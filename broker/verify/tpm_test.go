package verify_test

import (
	"bytes"
	"crypto/sha256"
	"io"
	"slices"
	"testing"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm-tools/simulator"
	legacy "github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/tpmtest"
)

// The tests in this file run on the embedded TPM simulator. Only one
// simulator can be open per process, so none of them may call t.Parallel.
// Node side they use go-tpm-tools and legacy go-tpm, as the agent does.

// simNode is a simulated machine: its RSA EK, an AK, and the identity verify
// built from them with the EK trusted by hash.
type simNode struct {
	rw   io.ReadWriter
	ek   *client.Key
	ak   *client.Key
	node *verify.NodeIdentity
}

func openSimNode(t *testing.T) *simNode {
	t.Helper()
	rw := tpmtest.Open(t)
	return loadSimNode(t, rw, client.AttestationKeyRSA)
}

// loadSimNode loads the EK and the AK that newAK creates; both are flushed
// when the test ends.
func loadSimNode(t *testing.T, rw io.ReadWriter, newAK func(io.ReadWriter) (*client.Key, error)) *simNode {
	t.Helper()
	ek, err := client.EndorsementKeyRSA(rw)
	if err != nil {
		t.Fatalf("unable to load the EK: %v", err)
	}
	t.Cleanup(ek.Close)
	ak := must(t)(newAK(rw))
	return &simNode{rw: rw, ek: ek, ak: ak, node: simIdentity(t, ek, ak)}
}

// must checks the result of a go-tpm-tools key constructor and flushes the
// key when the test ends: must(t)(client.AttestationKeyRSA(rw)).
func must(t *testing.T) func(*client.Key, error) *client.Key {
	return func(k *client.Key, err error) *client.Key {
		t.Helper()
		if err != nil {
			t.Fatalf("unable to load a TPM key: %v", err)
		}
		t.Cleanup(k.Close)
		return k
	}
}

func simIdentity(t *testing.T, ek, ak *client.Key) *verify.NodeIdentity {
	t.Helper()
	n, err := verify.Node(encodePublic(t, ek), nil, nil, encodePublic(t, ak), verify.Opts{Trust: verify.Trust{EKHashes: []string{mustEKHash(t, ek.PublicKey())}}})

	if err != nil {
		t.Fatalf("verify.Node: %v", err)
	}
	return n
}

func encodePublic(t *testing.T, k *client.Key) []byte {
	t.Helper()
	b, err := k.PublicArea().Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// newSecret is a fresh 32-byte challenge secret.
func newSecret(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

// quote is what the agent sends for one bank: go-tpm-tools' Key.Quote.
func quote(t *testing.T, ak *client.Key, bank legacy.Algorithm, pcrs []int, secret []byte) verify.Quote {
	t.Helper()
	q, err := ak.Quote(legacy.PCRSelection{Hash: bank, PCRs: pcrs}, secret)
	if err != nil {
		t.Fatalf("unable to quote: %v", err)
	}
	return verify.Quote{Attest: q.GetQuote(), Signature: q.GetRawSig(), Bank: tpm2.TPMAlgID(bank), PCRs: q.GetPcrs().GetPcrs()}
}

// rawQuote quotes with TPM2_Quote directly, for AKs whose scheme
// go-tpm-tools' client-side check does not accept (RSAPSS, SHA-1).
func rawQuote(t *testing.T, rw io.ReadWriter, ak *client.Key, bank legacy.Algorithm, pcrs []int, secret []byte) verify.Quote {
	t.Helper()
	sel := legacy.PCRSelection{Hash: bank, PCRs: pcrs}
	attest, sig, err := legacy.QuoteRaw(rw, ak.Handle(), "", "", secret, sel, legacy.AlgNull)
	if err != nil {
		t.Fatalf("TPM2_Quote: %v", err)
	}
	vals, err := client.ReadPCRs(rw, sel)
	if err != nil {
		t.Fatal(err)
	}
	return verify.Quote{Attest: attest, Signature: sig, Bank: tpm2.TPMAlgID(bank), PCRs: vals.GetPcrs()}
}

func pcrRange(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

func allocated(t *testing.T, rw io.ReadWriter, bank legacy.Algorithm) bool {
	t.Helper()
	sels, err := client.AllocatedPCRs(rw)
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(sels, func(s legacy.PCRSelection) bool { return s.Hash == bank && len(s.PCRs) > 0 })
}

func TestTPMNode(t *testing.T) {
	s := openSimNode(t)
	if got, want := s.node.EKHash(), mustEKHash(t, s.ek.PublicKey()); got != want {
		t.Errorf("EKHash() = %s, want %s", got, want)
	}
	name := s.ak.Name()
	want := append([]byte{byte(name.Digest.Alg >> 8), byte(name.Digest.Alg)}, name.Digest.Value...)
	if got := s.node.AKName(); !bytes.Equal(got, want) {
		t.Errorf("AKName() = %x, want the TPM's name %x", got, want)
	}

	ekECC := must(t)(client.EndorsementKeyECC(s.rw))
	akECC := must(t)(client.AttestationKeyECC(s.rw))
	if _, err := verify.Node(encodePublic(t, ekECC), nil, nil, encodePublic(t, akECC), verify.Opts{Trust: verify.Trust{EKHashes: []string{mustEKHash(t, ekECC.PublicKey())}}}); err != nil {
		t.Errorf("ECC EK and AK refused: %v", err)
	}
	_, err := verify.Node(encodePublic(t, ekECC), nil, nil, encodePublic(t, akECC), verify.Opts{Trust: verify.Trust{EKHashes: []string{s.node.EKHash()}}})

	assertCheck(t, err, verify.CheckEKTrust, "EK is not trusted")
}

// TestTPMAKAttributes starts from the simulator's AK public area, decoded
// with the new go-tpm API, and takes one attribute away at a time.
func TestTPMAKAttributes(t *testing.T) {
	s := openSimNode(t)
	ekPub := encodePublic(t, s.ek)
	trust := verify.Trust{EKHashes: []string{s.node.EKHash()}}
	real, err := tpm2.Unmarshal[tpm2.TPMTPublic](encodePublic(t, s.ak))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		mutate  func(*tpm2.TPMTPublic)
		wantErr string
	}{
		{"restricted", func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Restricted = false }, "AK lacks attributes [restricted]"},
		{"sign", func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SignEncrypt = false }, "AK lacks attributes [sign]"},
		{"fixedTPM", func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedTPM = false }, "AK lacks attributes [fixedTPM]"},
		{"fixedParent", func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedParent = false }, "AK lacks attributes [fixedParent]"},
		{"sensitiveDataOrigin", func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SensitiveDataOrigin = false },
			"AK lacks attributes [sensitiveDataOrigin]"},
		{"decrypt", func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Decrypt = true }, "AK must not be a decryption key"},
		{"SHA-1 name", func(p *tpm2.TPMTPublic) { p.NameAlg = tpm2.TPMAlgSHA1 }, "AK name algorithm SHA-1 is not allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ak := *real
			tt.mutate(&ak)
			_, err := verify.Node(ekPub, nil, nil, tpm2.Marshal(ak), verify.Opts{Trust: trust})
			assertCheck(t, err, verify.CheckAK, tt.wantErr)
		})
	}
}

func TestTPMQuotes(t *testing.T) {
	s := openSimNode(t)
	secret := newSecret(0x5e)
	nonceHash := sha256.Sum256(secret)
	all := pcrRange(24)
	sha256Quote := quote(t, s.ak, legacy.AlgSHA256, all, secret)

	t.Run("RSA AK, SHA-256 bank", func(t *testing.T) {
		v, err := verify.Quotes(s.node, nonceHash, []verify.Quote{sha256Quote}, verify.Opts{})
		if err != nil {
			t.Fatal(err)
		}
		if got := v.Banks(); !slices.Equal(got, []tpm2.TPMAlgID{tpm2.TPMAlgSHA256}) {
			t.Errorf("Banks() = %v, want [sha256]", got)
		}
		if len(v.PCRs(tpm2.TPMAlgSHA256)) != 24 {
			t.Errorf("PCRs(sha256) has %d values, want 24", len(v.PCRs(tpm2.TPMAlgSHA256)))
		}
	})
	t.Run("PCR subset", func(t *testing.T) {
		q := quote(t, s.ak, legacy.AlgSHA256, []int{0, 7, 14}, secret)
		_, err := verify.Quotes(s.node, nonceHash, []verify.Quote{q}, verify.Opts{})
		assertCheck(t, err, "", "")
	})
	for _, bank := range []legacy.Algorithm{legacy.AlgSHA384, legacy.AlgSHA512} {
		name := verify.BankName(tpm2.TPMAlgID(bank))
		t.Run(name+" bank", func(t *testing.T) {
			if !allocated(t, s.rw, bank) {
				t.Skipf("the simulator has no %s bank allocated", name)
			}
			q := quote(t, s.ak, bank, all, secret)
			v, err := verify.Quotes(s.node, nonceHash, []verify.Quote{sha256Quote, q}, verify.Opts{})
			if err != nil {
				t.Fatal(err)
			}
			if got := len(v.PCRs(tpm2.TPMAlgID(bank))[0]); got != mustHash(t, tpm2.TPMAlgID(bank)).Size() {
				t.Errorf("PCR 0 of %s has %d bytes", name, got)
			}
		})
	}
	t.Run("SHA-1 bank", func(t *testing.T) {
		if !allocated(t, s.rw, legacy.AlgSHA1) {
			t.Skip("the simulator has no sha1 bank allocated")
		}
		q := quote(t, s.ak, legacy.AlgSHA1, all, secret)
		_, err := verify.Quotes(s.node, nonceHash, []verify.Quote{sha256Quote, q}, verify.Opts{})
		assertCheck(t, err, verify.CheckBank, "SHA-1 PCR bank is not allowed")
		v, err := verify.Quotes(s.node, nonceHash, []verify.Quote{sha256Quote, q}, verify.Opts{AllowSHA1: true})
		if err != nil {
			t.Fatalf("with AllowSHA1: %v", err)
		}
		if got := len(v.PCRs(tpm2.TPMAlgSHA1)[23]); got != 20 {
			t.Errorf("PCR 23 of sha1 has %d bytes, want 20", got)
		}
	})
	t.Run("every allocated bank, sorted", func(t *testing.T) {
		var quotes []verify.Quote
		var want []tpm2.TPMAlgID
		// Submitted in descending order; Banks sorts them.
		for _, bank := range []legacy.Algorithm{legacy.AlgSHA512, legacy.AlgSHA384, legacy.AlgSHA256, legacy.AlgSHA1} {
			if allocated(t, s.rw, bank) {
				quotes = append(quotes, quote(t, s.ak, bank, all, secret))
				want = append(want, tpm2.TPMAlgID(bank))
			}
		}
		slices.Sort(want)
		v, err := verify.Quotes(s.node, nonceHash, quotes, verify.Opts{AllowSHA1: true})
		if err != nil {
			t.Fatal(err)
		}
		if got := v.Banks(); !slices.Equal(got, want) {
			t.Errorf("Banks() = %v, want %v", got, want)
		}
	})
	t.Run("duplicate bank", func(t *testing.T) {
		again := quote(t, s.ak, legacy.AlgSHA256, all, secret)
		_, err := verify.Quotes(s.node, nonceHash, []verify.Quote{sha256Quote, again}, verify.Opts{})
		assertCheck(t, err, verify.CheckBank, "bank sha256 quoted twice")
	})
	t.Run("more than MaxQuotes", func(t *testing.T) {
		quotes := slices.Repeat([]verify.Quote{sha256Quote}, verify.MaxQuotes+1)
		_, err := verify.Quotes(s.node, nonceHash, quotes, verify.Opts{})
		assertCheck(t, err, verify.CheckInput, "too many quotes")
	})
	t.Run("wrong nonce", func(t *testing.T) {
		_, err := verify.Quotes(s.node, sha256.Sum256(newSecret(0x01)), []verify.Quote{sha256Quote}, verify.Opts{})
		assertCheck(t, err, verify.CheckNonce, "quote qualifying data is not the activated challenge secret")
	})
	t.Run("nonce of the wrong length", func(t *testing.T) {
		short := secret[:20]
		q := quote(t, s.ak, legacy.AlgSHA256, all, short)
		_, err := verify.Quotes(s.node, sha256.Sum256(short), []verify.Quote{q}, verify.Opts{})
		assertCheck(t, err, verify.CheckNonce, "quote qualifying data is not the activated challenge secret")
	})
	t.Run("quote by another AK", func(t *testing.T) {
		// The same template under the endorsement hierarchy is another key.
		other := must(t)(client.NewKey(s.rw, legacy.HandleEndorsement, client.AKTemplateRSA()))
		q := quote(t, other, legacy.AlgSHA256, all, secret)
		_, err := verify.Quotes(s.node, nonceHash, []verify.Quote{q}, verify.Opts{})
		assertCheck(t, err, verify.CheckSignature, "quote signature does not verify with the AK")
	})
	t.Run("quote by an ECC AK for an RSA node", func(t *testing.T) {
		ecc := must(t)(client.AttestationKeyECC(s.rw))
		q := quote(t, ecc, legacy.AlgSHA256, all, secret)
		_, err := verify.Quotes(s.node, nonceHash, []verify.Quote{q}, verify.Opts{})
		assertCheck(t, err, verify.CheckSignature, "signature scheme 0x0018 does not match the AK")
	})
	t.Run("reported PCR value changed", func(t *testing.T) {
		q := quote(t, s.ak, legacy.AlgSHA256, all, secret)
		q.PCRs[7][0] ^= 1
		_, err := verify.Quotes(s.node, nonceHash, []verify.Quote{q}, verify.Opts{})
		assertCheck(t, err, verify.CheckPCRDigest, "reported sha256 PCR values do not match the quoted digest")
	})
	t.Run("PCR extended after the quote", func(t *testing.T) {
		sel := legacy.PCRSelection{Hash: legacy.AlgSHA256, PCRs: []int{16}}
		q := quote(t, s.ak, legacy.AlgSHA256, sel.PCRs, secret)
		if err := legacy.PCRExtend(s.rw, 16, legacy.AlgSHA256, bytes.Repeat([]byte{0xab}, 32), ""); err != nil {
			t.Fatal(err)
		}
		now, err := client.ReadPCRs(s.rw, sel)
		if err != nil {
			t.Fatal(err)
		}
		q.PCRs = now.GetPcrs()
		_, err = verify.Quotes(s.node, nonceHash, []verify.Quote{q}, verify.Opts{})
		assertCheck(t, err, verify.CheckPCRDigest, "reported sha256 PCR values do not match the quoted digest")
	})
	t.Run("extra reported PCR", func(t *testing.T) {
		q := quote(t, s.ak, legacy.AlgSHA256, pcrRange(8), secret)
		q.PCRs[8] = sha256Quote.PCRs[8]
		_, err := verify.Quotes(s.node, nonceHash, []verify.Quote{q}, verify.Opts{})
		assertCheck(t, err, verify.CheckPCRDigest, "reported PCRs differ from the quoted selection")
	})
	t.Run("PCR value of the wrong size", func(t *testing.T) {
		q := quote(t, s.ak, legacy.AlgSHA256, pcrRange(8), secret)
		q.PCRs[3] = q.PCRs[3][:20]
		_, err := verify.Quotes(s.node, nonceHash, []verify.Quote{q}, verify.Opts{})
		assertCheck(t, err, verify.CheckInput, "PCR 3 value has the wrong size for bank sha256")
	})
	t.Run("reported bank is not the quoted one", func(t *testing.T) {
		q := sha256Quote
		q.Bank = tpm2.TPMAlgSHA384
		_, err := verify.Quotes(s.node, nonceHash, []verify.Quote{q}, verify.Opts{})
		assertCheck(t, err, verify.CheckBank, "quote must select exactly the reported bank sha384")
	})
	t.Run("accessors", func(t *testing.T) {
		v, err := verify.Quotes(s.node, nonceHash, []verify.Quote{sha256Quote}, verify.Opts{})
		if err != nil {
			t.Fatal(err)
		}
		att, err := tpm2.Unmarshal[tpm2.TPMSAttest](sha256Quote.Attest)
		if err != nil {
			t.Fatal(err)
		}
		c := att.ClockInfo
		want := verify.ClockInfo{Clock: c.Clock, ResetCount: c.ResetCount, RestartCount: c.RestartCount, Safe: bool(c.Safe)}
		if got := v.Clock(); got != want || got.Clock == 0 {
			t.Errorf("Clock() = %+v, want %+v from the quote", got, want)
		}
		if got := v.FirmwareVersion(); got != att.FirmwareVersion || got == 0 {
			t.Errorf("FirmwareVersion() = %#x, want %#x", got, att.FirmwareVersion)
		}
		if got := v.QuoteDigest(); got != sha256.Sum256(sha256Quote.Attest) {
			t.Errorf("QuoteDigest() = %x, want the SHA-256 of the attest", got)
		}
		if v.EKHash() != s.node.EKHash() || !bytes.Equal(v.AKName(), s.node.AKName()) {
			t.Error("EKHash() or AKName() differ from the node's")
		}
		pcrs := v.PCRs(tpm2.TPMAlgSHA256)
		clear(pcrs[0])
		delete(pcrs, 1)
		if got := v.PCRs(tpm2.TPMAlgSHA256); len(got) != 24 || !bytes.Equal(got[0], sha256Quote.PCRs[0]) {
			t.Error("changing the map PCRs returned changed the Verified")
		}
	})
}

func TestTPMQuoteECC(t *testing.T) {
	rw := tpmtest.Open(t)
	s := loadSimNode(t, rw, client.AttestationKeyECC)
	secret := newSecret(0xec)
	q := quote(t, s.ak, legacy.AlgSHA256, pcrRange(24), secret)
	if _, err := verify.Quotes(s.node, sha256.Sum256(secret), []verify.Quote{q}, verify.Opts{}); err != nil {
		t.Fatalf("ECC P-256 quote refused: %v", err)
	}
	rsa := must(t)(client.AttestationKeyRSA(rw))
	q = quote(t, rsa, legacy.AlgSHA256, pcrRange(24), secret)
	_, err := verify.Quotes(s.node, sha256.Sum256(secret), []verify.Quote{q}, verify.Opts{})
	assertCheck(t, err, verify.CheckSignature, "signature scheme 0x0014 does not match the AK")
}

func TestTPMQuoteRSAPSS(t *testing.T) {
	rw := tpmtest.Open(t)
	s := loadSimNode(t, rw, func(rw io.ReadWriter) (*client.Key, error) {
		tmpl := client.AKTemplateRSA()
		tmpl.RSAParameters.Sign.Alg = legacy.AlgRSAPSS
		return client.NewKey(rw, legacy.HandleOwner, tmpl)
	})
	secret := newSecret(0x55)
	q := rawQuote(t, rw, s.ak, legacy.AlgSHA256, pcrRange(24), secret)
	sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](q.Signature)
	if err != nil || sig.SigAlg != tpm2.TPMAlgRSAPSS {
		t.Fatalf("the TPM did not sign with RSAPSS: %v %v", sig, err)
	}
	if _, err := verify.Quotes(s.node, sha256.Sum256(secret), []verify.Quote{q}, verify.Opts{}); err != nil {
		t.Fatalf("RSAPSS quote refused: %v", err)
	}
}

func TestTPMQuoteSHA1Signature(t *testing.T) {
	rw := tpmtest.Open(t)
	s := loadSimNode(t, rw, func(rw io.ReadWriter) (*client.Key, error) {
		tmpl := client.AKTemplateRSA()
		tmpl.RSAParameters.Sign.Hash = legacy.AlgSHA1
		return client.NewKey(rw, legacy.HandleOwner, tmpl)
	})
	secret := newSecret(0x51)
	q := rawQuote(t, rw, s.ak, legacy.AlgSHA256, pcrRange(24), secret)
	_, err := verify.Quotes(s.node, sha256.Sum256(secret), []verify.Quote{q}, verify.Opts{})
	assertCheck(t, err, verify.CheckSignature, "quote signature hash 0x0004 is not allowed")
	if _, err := verify.Quotes(s.node, sha256.Sum256(secret), []verify.Quote{q}, verify.Opts{AllowSHA1: true}); err != nil {
		t.Fatalf("SHA-1 signed quote refused with AllowSHA1: %v", err)
	}
}

// TestTPMCertifyIsNotAQuote has the AK sign a TPM2_Certify attestation (of
// itself) carrying the challenge secret: TPM_GENERATED and signed by the AK,
// but not a quote.
func TestTPMCertifyIsNotAQuote(t *testing.T) {
	s := openSimNode(t)
	secret := newSecret(0xce)
	attest, sig, err := legacy.Certify(s.rw, "", "", s.ak.Handle(), s.ak.Handle(), secret)
	if err != nil {
		t.Fatalf("TPM2_Certify: %v", err)
	}
	q := verify.Quote{Attest: attest, Signature: sig, Bank: tpm2.TPMAlgSHA256,
		PCRs: map[uint32][]byte{0: make([]byte, 32)}}
	_, err = verify.Quotes(s.node, sha256.Sum256(secret), []verify.Quote{q}, verify.Opts{})
	assertCheck(t, err, verify.CheckQuoteType, "attestation is not a quote")
}

// TestRestrictedAKCannotForgeAQuote shows why checking TPM_GENERATED after
// the signature is enough. A restricted key signs an external digest only
// with a TPM2_Hash ticket, and TPM2_Hash gives no ticket for data that
// starts with TPM_GENERATED_VALUE: so the AK can sign arbitrary data, but
// never data that looks like a TPM attestation. Quotes then refuses what the
// AK did sign because it lacks the magic.
func TestRestrictedAKCannotForgeAQuote(t *testing.T) {
	s := openSimNode(t)
	secret := newSecret(0xf0)
	forged := tpm2.Marshal(newQuoteSpec(tpm2.TPMAlgSHA256).attest(t, defaultAK()))
	scheme := &legacy.SigScheme{Alg: legacy.AlgRSASSA, Hash: legacy.AlgSHA256}

	digest, ticket, err := legacy.Hash(s.rw, legacy.AlgSHA256, forged, legacy.HandleOwner)
	if err != nil {
		t.Fatalf("TPM2_Hash: %v", err)
	}
	if ticket.Hierarchy != legacy.HandleNull {
		t.Fatalf("TPM2_Hash gave a ticket for hierarchy %#x over TPM_GENERATED data", ticket.Hierarchy)
	}
	if _, err := legacy.Sign(s.rw, s.ak.Handle(), "", digest, ticket, scheme); err == nil {
		t.Fatal("the restricted AK signed data starting with TPM_GENERATED_VALUE")
	}

	// Without the magic the TPM signs, and verify refuses.
	plain := append([]byte("not a TPM attestation: "), secret...)
	digest, ticket, err = legacy.Hash(s.rw, legacy.AlgSHA256, plain, legacy.HandleOwner)
	if err != nil {
		t.Fatalf("TPM2_Hash: %v", err)
	}
	sig, err := legacy.Sign(s.rw, s.ak.Handle(), "", digest, ticket, scheme)
	if err != nil {
		t.Fatalf("TPM2_Sign: %v", err)
	}
	sigBytes, err := sig.Encode()
	if err != nil {
		t.Fatal(err)
	}
	q := verify.Quote{Attest: plain, Signature: sigBytes, Bank: tpm2.TPMAlgSHA256, PCRs: map[uint32][]byte{0: make([]byte, 32)}}
	_, err = verify.Quotes(s.node, sha256.Sum256(secret), []verify.Quote{q}, verify.Opts{})
	assertCheck(t, err, verify.CheckQuoteMagic, "quote is not TPM_GENERATED")
}

// TestTPMClockResetCount reboots the simulator between two quotes: the
// verified ResetCount goes up by one, the AK (a primary key) stays the same.
func TestTPMClockResetCount(t *testing.T) {
	rw := tpmtest.Open(t)
	sim, ok := rw.(*simulator.Simulator)
	if !ok {
		t.Fatalf("tpmtest.Open returned %T, want *simulator.Simulator", rw)
	}
	verifyOnce := func(secret []byte) (verify.ClockInfo, []byte) {
		// Flushed here, not at cleanup: the reboot reuses handles.
		ek, err := client.EndorsementKeyRSA(rw)
		if err != nil {
			t.Fatal(err)
		}
		defer ek.Close()
		ak, err := client.AttestationKeyRSA(rw)
		if err != nil {
			t.Fatal(err)
		}
		defer ak.Close()
		node := simIdentity(t, ek, ak)
		q := quote(t, ak, legacy.AlgSHA256, []int{0}, secret)
		v, err := verify.Quotes(node, sha256.Sum256(secret), []verify.Quote{q}, verify.Opts{})
		if err != nil {
			t.Fatal(err)
		}
		return v.Clock(), v.AKName()
	}
	beforeReboot, name := verifyOnce(newSecret(1))
	if err := sim.Reset(); err != nil {
		t.Fatalf("unable to reset the simulator: %v", err)
	}
	afterReboot, nameAfter := verifyOnce(newSecret(2))
	if afterReboot.ResetCount != beforeReboot.ResetCount+1 {
		t.Errorf("ResetCount went from %d to %d across a reboot, want +1", beforeReboot.ResetCount, afterReboot.ResetCount)
	}
	if !bytes.Equal(name, nameAfter) {
		t.Error("the AK changed across a reboot")
	}
}
