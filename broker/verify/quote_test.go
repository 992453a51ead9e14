package verify_test

import (
	"bytes"
	"crypto/elliptic"
	"crypto/sha256"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify"
)

// quotesFunc builds the quotes of one test case, signed by the node's AK.
type quotesFunc func(tb testing.TB, ak softAK) []verify.Quote

// spec returns one quote of the SHA-256 bank after mod changes its spec.
func spec(mod func(*quoteSpec)) quotesFunc {
	return specOf(tpm2.TPMAlgSHA256, mod)
}

func specOf(bank tpm2.TPMAlgID, mod func(*quoteSpec)) quotesFunc {
	return func(tb testing.TB, ak softAK) []verify.Quote {
		s := newQuoteSpec(bank)
		if mod != nil {
			mod(&s)
		}
		return []verify.Quote{s.quote(tb, ak)}
	}
}

// attest returns one SHA-256 quote whose TPMS_ATTEST mod changed before the
// AK signed it: a forgery only a software AK can make.
func attest(mod func(*tpm2.TPMSAttest)) quotesFunc {
	return func(tb testing.TB, ak softAK) []verify.Quote {
		s := newQuoteSpec(tpm2.TPMAlgSHA256)
		a := s.attest(tb, ak)
		mod(&a)
		return []verify.Quote{signedQuote(tb, ak, tpm2.Marshal(a), s.bank, s.pcrs)}
	}
}

// rawAttest returns one SHA-256 quote over attest bytes b.
func rawAttest(b []byte) quotesFunc {
	return func(tb testing.TB, ak softAK) []verify.Quote {
		s := newQuoteSpec(tpm2.TPMAlgSHA256)
		return []verify.Quote{signedQuote(tb, ak, b, s.bank, s.pcrs)}
	}
}

// after returns one SHA-256 quote that mod changed after it was signed.
func after(mod func(*verify.Quote)) quotesFunc {
	return func(tb testing.TB, ak softAK) []verify.Quote {
		q := newQuoteSpec(tpm2.TPMAlgSHA256).quote(tb, ak)
		mod(&q)
		return []verify.Quote{q}
	}
}

// banks returns one quote per bank.
func banks(bs ...tpm2.TPMAlgID) quotesFunc {
	return func(tb testing.TB, ak softAK) []verify.Quote {
		var out []verify.Quote
		for _, b := range bs {
			out = append(out, newQuoteSpec(b).quote(tb, ak))
		}
		return out
	}
}

func TestQuotes(t *testing.T) {
	rsaPSS := newSoftRSAAK(akRSAKey(), tpm2.TPMAlgRSAPSS, tpm2.TPMAlgSHA256)
	rsaSHA384 := newSoftRSAAK(akRSAKey(), tpm2.TPMAlgRSASSA, tpm2.TPMAlgSHA384)
	rsaSHA1 := newSoftRSAAK(akRSAKey(), tpm2.TPMAlgRSASSA, tpm2.TPMAlgSHA1)
	p256 := newSoftECCAK(akP256Key(), tpm2.TPMAlgSHA256)
	pssSHA1 := newSoftRSAAK(akRSAKey(), tpm2.TPMAlgRSAPSS, tpm2.TPMAlgSHA1)
	p256SHA1 := newSoftECCAK(akP256Key(), tpm2.TPMAlgSHA1)
	p384 := newSoftECCAK(akP384Key(), tpm2.TPMAlgSHA384)
	otherAK := newSoftRSAAK(otherRSAKey(), tpm2.TPMAlgRSASSA, tpm2.TPMAlgSHA256)
	short := sha256.Sum256(testSecret[:16])
	empty := sha256.Sum256(nil)
	certifyInfo := tpm2.NewTPMUAttest(tpm2.TPMSTAttestCertify, &tpm2.TPMSCertifyInfo{
		Name: tpm2.TPM2BName{Buffer: []byte{0x00, 0x0b}}, QualifiedName: tpm2.TPM2BName{Buffer: []byte{0x00, 0x0b}},
	})
	timeInfo := tpm2.NewTPMUAttest(tpm2.TPMSTAttestTime, &tpm2.TPMSTimeAttestInfo{})

	const (
		input   = verify.CheckInput
		bank    = verify.CheckBank
		sig     = verify.CheckSignature
		nonce   = verify.CheckNonce
		digest  = verify.CheckPCRDigest
		badSig  = "quote signature does not verify with the AK"
		badNon  = "quote qualifying data is not the activated challenge secret"
		diffSel = "reported PCRs differ from the quoted selection"
	)
	tests := []struct {
		name      string
		ak        *softAK // the node's AK; nil means defaultAK
		nilNode   bool
		quotes    quotesFunc
		nonceHash *[32]byte // nil means testNonceHash
		opts      verify.Opts
		wantCheck verify.Check
		wantErr   string
		// fromTPM: the refusal comes after a quote proved the TPM answered
		// (verify.FromTPM).
		fromTPM bool
	}{
		// Accepted signatures and banks.
		{name: "RSASSA-SHA256", quotes: spec(nil)},
		{name: "RSASSA-SHA384", ak: &rsaSHA384, quotes: spec(nil)},
		{name: "RSAPSS-SHA256", ak: &rsaPSS, quotes: spec(nil)},
		{name: "ECDSA P-256", ak: &p256, quotes: spec(nil)},
		{name: "ECDSA P-384 SHA-384", ak: &p384, quotes: spec(nil)},
		{name: "SHA-384 bank", quotes: specOf(tpm2.TPMAlgSHA384, nil)},
		{name: "SHA-512 bank", quotes: specOf(tpm2.TPMAlgSHA512, nil)},
		{name: "every PCR", quotes: spec(func(s *quoteSpec) {
			s.selected = nil
			for i := range uint32(24) {
				s.selected, s.pcrs[i] = append(s.selected, i), bytesOf(byte(i), 32)
			}
		})},
		{name: "one PCR", quotes: spec(func(s *quoteSpec) {
			s.selected, s.pcrs = []uint32{23}, map[uint32][]byte{23: bytesOf(0x17, 32)}
		})},
		{name: "four banks", quotes: banks(tpm2.TPMAlgSHA1, tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384, tpm2.TPMAlgSHA512),
			opts: verify.Opts{AllowSHA1: true}},

		// Input limits.
		{name: "no node", nilNode: true, quotes: spec(nil), wantCheck: input, wantErr: "no verified node"},
		{name: "no quotes", quotes: func(testing.TB, softAK) []verify.Quote { return nil },
			wantCheck: input, wantErr: "no quotes"},
		{name: "too many quotes", quotes: func(tb testing.TB, ak softAK) []verify.Quote {
			q := newQuoteSpec(tpm2.TPMAlgSHA256).quote(tb, ak)
			return slices.Repeat([]verify.Quote{q}, verify.MaxQuotes+1)
		}, wantCheck: input, wantErr: "too many quotes"},
		{name: "empty attest", quotes: after(func(q *verify.Quote) { q.Attest = nil }),
			wantCheck: input, wantErr: "quote attest is empty or too large"},
		{name: "oversized attest", quotes: after(func(q *verify.Quote) { q.Attest = make([]byte, verify.MaxQuoteAttestSize+1) }),
			wantCheck: input, wantErr: "quote attest is empty or too large"},
		{name: "empty signature", quotes: after(func(q *verify.Quote) { q.Signature = nil }),
			wantCheck: input, wantErr: "quote signature is empty or too large"},
		{name: "oversized signature", quotes: after(func(q *verify.Quote) { q.Signature = make([]byte, verify.MaxSignatureSize+1) }),
			wantCheck: input, wantErr: "quote signature is empty or too large"},
		{name: "no PCR values", quotes: after(func(q *verify.Quote) { q.PCRs = nil }),
			wantCheck: input, wantErr: "quote must report between 1 and 24 PCR values"},
		{name: "25 PCR values", quotes: after(func(q *verify.Quote) {
			for i := range uint32(25) {
				q.PCRs[i] = bytesOf(0, 32)
			}
		}), wantCheck: input, wantErr: "quote must report between 1 and 24 PCR values"},

		// Banks.
		{name: "SHA-1 bank refused", quotes: specOf(tpm2.TPMAlgSHA1, nil),
			wantCheck: bank, wantErr: "SHA-1 PCR bank is not allowed"},
		{name: "SHA-1 bank with AllowSHA1", quotes: specOf(tpm2.TPMAlgSHA1, nil), opts: verify.Opts{AllowSHA1: true}},
		{name: "SHA-1 bank refused next to SHA-256", quotes: banks(tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA1),
			wantCheck: bank, wantErr: "SHA-1 PCR bank is not allowed", fromTPM: true},
		{name: "unsupported bank", quotes: specOf(tpm2.TPMAlgSM3256, nil),
			wantCheck: bank, wantErr: "PCR bank 0x0012 is not supported"},
		{name: "duplicate bank", quotes: banks(tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384, tpm2.TPMAlgSHA256),
			wantCheck: bank, wantErr: "bank sha256 quoted twice", fromTPM: true},
		{name: "reported bank is not the quoted one", quotes: func(tb testing.TB, ak softAK) []verify.Quote {
			q := newQuoteSpec(tpm2.TPMAlgSHA384).quote(tb, ak)
			q.Bank = tpm2.TPMAlgSHA256
			return []verify.Quote{q}
		}, wantCheck: bank, wantErr: "quote must select exactly the reported bank sha256", fromTPM: true},
		{name: "two banks in one quote", quotes: attest(func(a *tpm2.TPMSAttest) {
			info, _ := a.Attested.Quote()
			sels := info.PCRSelect.PCRSelections
			info.PCRSelect.PCRSelections = append(sels, tpm2.TPMSPCRSelection{Hash: tpm2.TPMAlgSHA384, PCRSelect: sels[0].PCRSelect})
			a.Attested = tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, info)
		}), wantCheck: bank, wantErr: "quote must select exactly the reported bank sha256", fromTPM: true},
		{name: "no bank in the quote", quotes: attest(func(a *tpm2.TPMSAttest) {
			info, _ := a.Attested.Quote()
			info.PCRSelect.PCRSelections = nil
			a.Attested = tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, info)
		}), wantCheck: bank, wantErr: "quote must select exactly the reported bank sha256", fromTPM: true},

		// Signature.
		{name: "garbage signature", quotes: after(func(q *verify.Quote) { q.Signature = []byte{0xde, 0xad} }),
			wantCheck: input, wantErr: "quote signature is not a TPMT_SIGNATURE"},
		{name: "signed by another AK", quotes: func(tb testing.TB, _ softAK) []verify.Quote {
			return []verify.Quote{newQuoteSpec(tpm2.TPMAlgSHA256).quote(tb, otherAK)}
		}, wantCheck: sig, wantErr: badSig},
		{name: "ECC node, quote by another P-256 key", ak: &p256, quotes: func(tb testing.TB, _ softAK) []verify.Quote {
			return []verify.Quote{newQuoteSpec(tpm2.TPMAlgSHA256).quote(tb, newSoftECCAK(mustECDSAKey(elliptic.P256()), tpm2.TPMAlgSHA256))}
		}, wantCheck: sig, wantErr: badSig},
		{name: "corrupted RSASSA signature", quotes: after(func(q *verify.Quote) { q.Signature[len(q.Signature)-1] ^= 1 }),
			wantCheck: sig, wantErr: badSig},
		{name: "corrupted RSAPSS signature", ak: &rsaPSS, quotes: after(func(q *verify.Quote) { q.Signature[len(q.Signature)-1] ^= 1 }),
			wantCheck: sig, wantErr: badSig},
		{name: "corrupted ECDSA signature", ak: &p256, quotes: after(func(q *verify.Quote) { q.Signature[len(q.Signature)-1] ^= 1 }),
			wantCheck: sig, wantErr: badSig},
		{name: "attest changed after signing", quotes: after(func(q *verify.Quote) { q.Attest[len(q.Attest)-1] ^= 1 }),
			wantCheck: sig, wantErr: badSig},
		{name: "signature hash field changed", quotes: after(func(q *verify.Quote) {
			s, _ := tpm2.Unmarshal[tpm2.TPMTSignature](q.Signature)
			r, _ := s.Signature.RSASSA()
			r.Hash = tpm2.TPMAlgSHA384
			q.Signature = tpm2.Marshal(tpm2.TPMTSignature{SigAlg: s.SigAlg, Signature: tpm2.NewTPMUSignature(s.SigAlg, r)})
		}), wantCheck: sig, wantErr: badSig},
		{name: "RSAPSS signature checked as RSASSA", ak: &rsaPSS, quotes: after(func(q *verify.Quote) {
			s, _ := tpm2.Unmarshal[tpm2.TPMTSignature](q.Signature)
			r, _ := s.Signature.RSAPSS()
			q.Signature = tpm2.Marshal(tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgRSASSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgRSASSA, r)})
		}), wantCheck: sig, wantErr: badSig},
		{name: "ECDSA signature for an RSA AK", quotes: func(tb testing.TB, _ softAK) []verify.Quote {
			return []verify.Quote{newQuoteSpec(tpm2.TPMAlgSHA256).quote(tb, p256)}
		}, wantCheck: sig, wantErr: "signature scheme 0x0018 does not match the AK"},
		{name: "RSASSA signature for an ECC AK", ak: &p256, quotes: func(tb testing.TB, _ softAK) []verify.Quote {
			return []verify.Quote{newQuoteSpec(tpm2.TPMAlgSHA256).quote(tb, defaultAK())}
		}, wantCheck: sig, wantErr: "signature scheme 0x0014 does not match the AK"},
		{name: "NULL signature", quotes: after(func(q *verify.Quote) {
			q.Signature = tpm2.Marshal(tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgNull})
		}), wantCheck: sig, wantErr: "signature scheme 0x0010 does not match the AK"},
		{name: "SHA-1 signature refused", ak: &rsaSHA1, quotes: spec(nil),
			wantCheck: sig, wantErr: "quote signature hash 0x0004 is not allowed"},
		{name: "SHA-1 signature with AllowSHA1", ak: &rsaSHA1, quotes: spec(nil), opts: verify.Opts{AllowSHA1: true}},
		{name: "RSAPSS SHA-1 signature refused", ak: &pssSHA1, quotes: spec(nil),
			wantCheck: sig, wantErr: "quote signature hash 0x0004 is not allowed"},
		{name: "RSAPSS SHA-1 signature with AllowSHA1", ak: &pssSHA1, quotes: spec(nil), opts: verify.Opts{AllowSHA1: true}},
		{name: "ECDSA SHA-1 signature refused", ak: &p256SHA1, quotes: spec(nil),
			wantCheck: sig, wantErr: "quote signature hash 0x0004 is not allowed"},
		{name: "ECDSA SHA-1 signature with AllowSHA1", ak: &p256SHA1, quotes: spec(nil), opts: verify.Opts{AllowSHA1: true}},
		{name: "signature hash SM3", quotes: after(func(q *verify.Quote) {
			s, _ := tpm2.Unmarshal[tpm2.TPMTSignature](q.Signature)
			r, _ := s.Signature.RSASSA()
			r.Hash = tpm2.TPMAlgSM3256
			q.Signature = tpm2.Marshal(tpm2.TPMTSignature{SigAlg: s.SigAlg, Signature: tpm2.NewTPMUSignature(s.SigAlg, r)})
		}), wantCheck: sig, wantErr: "quote signature hash 0x0012 is not allowed"},

		// TPM_GENERATED and type: only a key that signs arbitrary data can
		// produce these; see TestRestrictedAKCannotForgeAQuote.
		{name: "not TPM_GENERATED", quotes: attest(func(a *tpm2.TPMSAttest) { a.Magic = 0x00544347 }),
			wantCheck: verify.CheckQuoteMagic, wantErr: "quote is not TPM_GENERATED"},
		{name: "shorter than the magic", quotes: rawAttest([]byte{0xff, 'T', 'C'}),
			wantCheck: verify.CheckQuoteMagic, wantErr: "quote is not TPM_GENERATED"},
		{name: "magic but no TPMS_ATTEST", quotes: rawAttest([]byte{0xff, 'T', 'C', 'G', 0x80}),
			wantCheck: input, wantErr: "quote attest is not a TPMS_ATTEST"},
		{name: "certify attestation", quotes: attest(func(a *tpm2.TPMSAttest) {
			a.Type, a.Attested = tpm2.TPMSTAttestCertify, certifyInfo
		}), wantCheck: verify.CheckQuoteType, wantErr: "attestation is not a quote"},
		{name: "time attestation", quotes: attest(func(a *tpm2.TPMSAttest) {
			a.Type, a.Attested = tpm2.TPMSTAttestTime, timeInfo
		}), wantCheck: verify.CheckQuoteType, wantErr: "attestation is not a quote"},

		// Nonce.
		{name: "wrong nonce", quotes: spec(func(s *quoteSpec) { s.extraData = bytesOf(0x42, 32) }),
			wantCheck: nonce, wantErr: badNon},
		{name: "nonce hash instead of the secret", quotes: spec(func(s *quoteSpec) {
			h := sha256.Sum256(testSecret)
			s.extraData = h[:]
		}), wantCheck: nonce, wantErr: badNon},
		{name: "secret of the wrong length", quotes: spec(func(s *quoteSpec) { s.extraData = testSecret[:16] }),
			nonceHash: &short, wantCheck: nonce, wantErr: badNon},
		{name: "no qualifying data", quotes: spec(func(s *quoteSpec) { s.extraData = nil }),
			nonceHash: &empty, wantCheck: nonce, wantErr: badNon},
		{name: "good quote for another challenge", quotes: spec(nil), nonceHash: &empty,
			wantCheck: nonce, wantErr: badNon},

		// PCR values.
		{name: "PCR value changed", quotes: after(func(q *verify.Quote) { q.PCRs[4][0] ^= 1 }),
			wantCheck: digest, wantErr: "reported sha256 PCR values do not match the quoted digest", fromTPM: true},
		{name: "extra reported PCR", quotes: after(func(q *verify.Quote) { q.PCRs[8] = bytesOf(8, 32) }),
			wantCheck: digest, wantErr: diffSel, fromTPM: true},
		{name: "quoted PCR missing", quotes: after(func(q *verify.Quote) { delete(q.PCRs, 3) }),
			wantCheck: digest, wantErr: diffSel, fromTPM: true},
		{name: "reported PCR outside the selection", quotes: after(func(q *verify.Quote) {
			delete(q.PCRs, 7)
			q.PCRs[8] = bytesOf(7, 32)
		}), wantCheck: digest, wantErr: "quoted PCR 7 is not reported", fromTPM: true},
		{name: "empty selection", quotes: spec(func(s *quoteSpec) { s.selected = nil }),
			wantCheck: digest, wantErr: diffSel, fromTPM: true},
		{name: "PCR value too short", quotes: after(func(q *verify.Quote) { q.PCRs[2] = q.PCRs[2][:20] }),
			wantCheck: input, wantErr: "PCR 2 value has the wrong size for bank sha256", fromTPM: true},
		{name: "PCR value too long", quotes: after(func(q *verify.Quote) { q.PCRs[0] = append(q.PCRs[0], 0) }),
			wantCheck: input, wantErr: "PCR 0 value has the wrong size for bank sha256", fromTPM: true},
		{name: "SHA-1 values reported for a SHA-256 quote", quotes: func(tb testing.TB, ak softAK) []verify.Quote {
			s := newQuoteSpec(tpm2.TPMAlgSHA1)
			q := s.quote(tb, ak)
			q.Bank = tpm2.TPMAlgSHA256
			return []verify.Quote{q}
		}, opts: verify.Opts{AllowSHA1: true}, wantCheck: bank, wantErr: "quote must select exactly the reported bank sha256", fromTPM: true},
		// pcrDigest uses the signing hash, not the bank's: a SHA-384 bank
		// quoted by a SHA-256 AK is digested with SHA-256.
		{name: "pcrDigest with the bank hash instead of the signing hash", quotes: func(tb testing.TB, ak softAK) []verify.Quote {
			s := newQuoteSpec(tpm2.TPMAlgSHA384)
			a := s.attest(tb, newSoftRSAAK(akRSAKey(), tpm2.TPMAlgRSASSA, tpm2.TPMAlgSHA384))
			a.QualifiedSigner = qualifiedName(tb, ownerQN, &ak.pub) // ak signs it
			return []verify.Quote{signedQuote(tb, ak, tpm2.Marshal(a), s.bank, s.pcrs)}
		}, wantCheck: digest, wantErr: "reported sha384 PCR values do not match the quoted digest", fromTPM: true},
		{name: "second quote fails", quotes: func(tb testing.TB, ak softAK) []verify.Quote {
			good := newQuoteSpec(tpm2.TPMAlgSHA256).quote(tb, ak)
			bad := newQuoteSpec(tpm2.TPMAlgSHA384).quote(tb, ak)
			bad.PCRs[0][0] ^= 1
			return []verify.Quote{good, bad}
		}, wantCheck: digest, wantErr: "reported sha384 PCR values do not match the quoted digest", fromTPM: true},

		// Banks that count (Opts.Banks).
		{name: "banks: a bank not counted is skipped, even broken", quotes: func(tb testing.TB, ak softAK) []verify.Quote {
			good := newQuoteSpec(tpm2.TPMAlgSHA256).quote(tb, ak)
			skipped := newQuoteSpec(tpm2.TPMAlgSHA384).quote(tb, ak)
			skipped.PCRs[0][0] ^= 1
			return []verify.Quote{skipped, good}
		}, opts: verify.Opts{Banks: []tpm2.TPMAlgID{tpm2.TPMAlgSHA256}}},
		{name: "banks: no quote of a counted bank", quotes: banks(tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384),
			opts: verify.Opts{Banks: []tpm2.TPMAlgID{tpm2.TPMAlgSHA512}}, wantCheck: bank, wantErr: "no quote of an allowed bank (sha512)"},
		{name: "banks: SHA-1 still refused without allow_sha1", quotes: banks(tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA1),
			opts: verify.Opts{Banks: []tpm2.TPMAlgID{tpm2.TPMAlgSHA256}}, wantCheck: bank, wantErr: "SHA-1 PCR bank is not allowed", fromTPM: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ak := defaultAK()
			if tt.ak != nil {
				ak = *tt.ak
			}
			var node *verify.NodeIdentity
			if !tt.nilNode {
				node = trustedNode(t, ak)
			}
			nonceHash := testNonceHash()
			if tt.nonceHash != nil {
				nonceHash = *tt.nonceHash
			}
			v, err := verify.Quotes(node, nonceHash, tt.quotes(t, ak), tt.opts)
			assertCheck(t, err, tt.wantCheck, tt.wantErr)
			if verify.FromTPM(err) != tt.fromTPM {
				t.Errorf("FromTPM(%v) = %v, want %v", err, verify.FromTPM(err), tt.fromTPM)
			}
			if (v == nil) == (err == nil) {
				t.Errorf("Quotes returned %v and error %v: want exactly one", v, err)
			}
			if v != nil && len(tt.opts.Banks) > 0 {
				for _, b := range v.Banks() {
					if !slices.Contains(tt.opts.Banks, b) {
						t.Errorf("verified bank %s is not among %v", verify.BankName(b), tt.opts.Banks)
					}
				}
			}
		})
	}
}

func TestVerifiedAccessors(t *testing.T) {
	ak := defaultAK()
	node := trustedNode(t, ak)
	first := newQuoteSpec(tpm2.TPMAlgSHA384)
	second := newQuoteSpec(tpm2.TPMAlgSHA1)
	second.clock = tpm2.TPMSClockInfo{Clock: 999, ResetCount: 99}
	third := newQuoteSpec(tpm2.TPMAlgSHA256)
	quotes := []verify.Quote{first.quote(t, ak), second.quote(t, ak), third.quote(t, ak)}

	v, err := verify.Quotes(node, testNonceHash(), quotes, verify.Opts{AllowSHA1: true})
	if err != nil {
		t.Fatal(err)
	}
	if v.Node() != node {
		t.Error("Node() is not the identity that was verified")
	}
	if got, want := v.EKHash(), mustEKHash(t, &ekRSAKey().PublicKey); got != want {
		t.Errorf("EKHash() = %s, want %s", got, want)
	}
	if !bytes.Equal(v.AKName(), node.AKName()) {
		t.Errorf("AKName() = %x, want %x", v.AKName(), node.AKName())
	}
	if v.EKCA() != "" || v.EKCert() != nil {
		t.Errorf("EKCA() = %q, EKCert() = %v: want neither for an EK trusted by hash", v.EKCA(), v.EKCert())
	}
	wantBanks := []tpm2.TPMAlgID{tpm2.TPMAlgSHA1, tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384}
	if got := v.Banks(); !slices.Equal(got, wantBanks) {
		t.Errorf("Banks() = %v, want %v (ascending)", got, wantBanks)
	}
	if got := v.Clock(); got != (verify.ClockInfo{Clock: 123456, ResetCount: 7, RestartCount: 3, Safe: true}) {
		t.Errorf("Clock() = %+v, want the first quote's clock", got)
	}
	if got := v.FirmwareVersion(); got != first.firmware {
		t.Errorf("FirmwareVersion() = %#x, want %#x", got, first.firmware)
	}

	// PCRs returns a copy; the Verified also holds its own copy of the input.
	pcrs := v.PCRs(tpm2.TPMAlgSHA256)
	if len(pcrs) != 8 || !bytes.Equal(pcrs[5], bytesOf(5, 32)) {
		t.Fatalf("PCRs(sha256) = %x, want PCRs 0-7 holding their index", pcrs)
	}
	pcrs[5][0] ^= 0xff
	pcrs[30] = []byte{1}
	delete(pcrs, 0)
	quotes[2].PCRs[6][0] ^= 0xff
	again := v.PCRs(tpm2.TPMAlgSHA256)
	if len(again) != 8 || !bytes.Equal(again[5], bytesOf(5, 32)) || !bytes.Equal(again[6], bytesOf(6, 32)) {
		t.Errorf("PCRs(sha256) = %x after the caller changed its maps: want the verified values", again)
	}
	if got := v.PCRs(tpm2.TPMAlgSHA1); len(got[0]) != 20 {
		t.Errorf("PCRs(sha1)[0] = %x, want 20 bytes", got[0])
	}
	if got := v.PCRs(tpm2.TPMAlgSHA512); got != nil {
		t.Errorf("PCRs(sha512) = %v, want nil for a bank that was not quoted", got)
	}

	d := sha256.New()
	for _, q := range quotes {
		d.Write(q.Attest)
	}
	want := [32]byte(d.Sum(nil))
	if got := v.QuoteDigest(); got != want || got == ([32]byte{}) {
		t.Errorf("QuoteDigest() = %x, want SHA-256 over the attests in order, %x", got, want)
	}
	if v.QuoteDigest() != v.QuoteDigest() {
		t.Error("QuoteDigest() is not stable")
	}
	v2, err := verify.Quotes(node, testNonceHash(), quotes[:1], verify.Opts{})
	if err != nil {
		t.Fatal(err)
	}
	if v2.QuoteDigest() == v.QuoteDigest() {
		t.Error("QuoteDigest() is the same for different quotes")
	}
}

// Quotes can be verified again from the same inputs (the broker re-runs
// Node and Quotes on stored challenges): verification has no side effects.
func TestQuotesIsRepeatable(t *testing.T) {
	ak := defaultAK()
	node := trustedNode(t, ak)
	quotes := []verify.Quote{newQuoteSpec(tpm2.TPMAlgSHA256).quote(t, ak)}
	a, err := verify.Quotes(node, testNonceHash(), quotes, verify.Opts{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := verify.Quotes(node, testNonceHash(), quotes, verify.Opts{})
	if err != nil {
		t.Fatal(err)
	}
	if a.QuoteDigest() != b.QuoteDigest() || a.Clock() != b.Clock() {
		t.Error("verifying the same quotes twice gave different results")
	}
}
