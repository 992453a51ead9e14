package verify_test

import (
	"bytes"
	"crypto/rsa"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/verify"
)

func TestNodeInput(t *testing.T) {
	ek := tpm2.Marshal(ekPublicRSA(&ekRSAKey().PublicKey))
	ak := defaultAK().publicBytes()
	trust := verify.Trust{EKHashes: []string{mustEKHash(t, &ekRSAKey().PublicKey)}}
	big := func(n int) []byte { return bytes.Repeat([]byte{0x01}, n) }
	tooMany := make([][]byte, verify.MaxIntermediates+1)
	for i := range tooMany {
		tooMany[i] = []byte{0x30}
	}

	tests := []struct {
		name      string
		ek, cert  []byte
		inter     [][]byte
		ak        []byte
		wantCheck verify.Check
		wantErr   string
	}{
		{name: "valid", ek: ek, ak: ak},
		{name: "empty ek_public", ak: ak, wantCheck: verify.CheckInput, wantErr: "ek_public is empty"},
		{name: "oversized ek_public", ek: big(verify.MaxPublicSize + 1), ak: ak,
			wantCheck: verify.CheckInput, wantErr: "ek_public is too large"},
		{name: "ek_public at the size limit is parsed", ek: big(verify.MaxPublicSize), ak: ak,
			wantCheck: verify.CheckInput, wantErr: "ek_public is not a TPMT_PUBLIC"},
		{name: "empty ak_public", ek: ek, wantCheck: verify.CheckInput, wantErr: "ak_public is empty"},
		{name: "oversized ak_public", ek: ek, ak: big(verify.MaxPublicSize + 1),
			wantCheck: verify.CheckInput, wantErr: "ak_public is too large"},
		{name: "oversized certificate", ek: ek, ak: ak, cert: big(verify.MaxCertSize + 1),
			wantCheck: verify.CheckInput, wantErr: "ek_certificate is too large"},
		{name: "too many intermediates", ek: ek, ak: ak, inter: tooMany,
			wantCheck: verify.CheckInput, wantErr: "too many ek_intermediates"},
		{name: "oversized intermediate", ek: ek, ak: ak, inter: [][]byte{{0x30}, big(verify.MaxCertSize + 1)},
			wantCheck: verify.CheckInput, wantErr: "an ek_intermediates entry is too large"},
		{name: "size limits come before parsing", ek: []byte{0xde, 0xad}, ak: big(verify.MaxPublicSize + 1),
			wantCheck: verify.CheckInput, wantErr: "ak_public is too large"},
		{name: "garbage ek_public", ek: []byte{0xde, 0xad, 0xbe, 0xef}, ak: ak,
			wantCheck: verify.CheckInput, wantErr: "ek_public is not a TPMT_PUBLIC"},
		{name: "truncated ek_public", ek: ek[:len(ek)-10], ak: ak,
			wantCheck: verify.CheckInput, wantErr: "ek_public is not a TPMT_PUBLIC"},
		{name: "garbage ak_public", ek: ek, ak: []byte{0xde, 0xad, 0xbe, 0xef},
			wantCheck: verify.CheckInput, wantErr: "ak_public is not a TPMT_PUBLIC"},
		{name: "truncated ak_public", ek: ek, ak: ak[:len(ak)-1],
			wantCheck: verify.CheckInput, wantErr: "ak_public is not a TPMT_PUBLIC"},
		{name: "garbage certificate refused even for a trusted EK hash", ek: ek, ak: ak, cert: []byte{0x30, 0x03, 0x02, 0x01, 0x01},
			wantCheck: verify.CheckInput, wantErr: "ek_certificate is not an X.509 certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := verify.Node(tt.ek, tt.cert, tt.inter, tt.ak, verify.Opts{Trust: trust})
			assertCheck(t, err, tt.wantCheck, tt.wantErr)
			if (n == nil) == (err == nil) {
				t.Errorf("Node returned identity %v and error %v: want exactly one", n, err)
			}
		})
	}
}

func TestNodeEK(t *testing.T) {
	rsaEK := ekPublicRSA(&ekRSAKey().PublicKey)
	eccEK := ekPublicECC(&ekECCKey().PublicKey)
	trust := verify.Trust{EKHashes: []string{
		mustEKHash(t, &ekRSAKey().PublicKey), mustEKHash(t, &ekECCKey().PublicKey),
	}}
	tests := []struct {
		name      string
		ek        tpm2.TPMTPublic
		mutate    func(*tpm2.TPMTPublic)
		trust     *verify.Trust // nil means trust
		wantCheck verify.Check
		wantErr   string
	}{
		{name: "RSA EK trusted by hash", ek: rsaEK},
		{name: "ECC EK trusted by hash", ek: eccEK},
		{name: "EK not trusted", ek: rsaEK, trust: &verify.Trust{},
			wantCheck: verify.CheckEKTrust, wantErr: "EK is not trusted"},
		{name: "another EK's hash does not help", ek: rsaEK,
			trust:     &verify.Trust{EKHashes: []string{mustEKHash(t, &otherRSAKey().PublicKey)}},
			wantCheck: verify.CheckEKTrust, wantErr: "EK is not trusted"},
		{name: "uppercase EK hash does not match", ek: rsaEK,
			trust:     &verify.Trust{EKHashes: []string{upper(mustEKHash(t, &ekRSAKey().PublicKey))}},
			wantCheck: verify.CheckEKTrust, wantErr: "EK is not trusted"},
		{name: "EK is a signing key (an AK)", ek: defaultAK().pub,
			wantCheck: verify.CheckEKTrust, wantErr: "ek_public is not a restricted, fixed decryption key"},
		{name: "EK not restricted", ek: rsaEK, mutate: func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Restricted = false },
			wantCheck: verify.CheckEKTrust, wantErr: "ek_public is not a restricted, fixed decryption key"},
		{name: "EK not a decryption key", ek: rsaEK, mutate: func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Decrypt = false },
			wantCheck: verify.CheckEKTrust, wantErr: "ek_public is not a restricted, fixed decryption key"},
		{name: "EK also signs", ek: rsaEK, mutate: func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SignEncrypt = true },
			wantCheck: verify.CheckEKTrust, wantErr: "ek_public is not a restricted, fixed decryption key"},
		{name: "EK not fixedTPM", ek: rsaEK, mutate: func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedTPM = false },
			wantCheck: verify.CheckEKTrust, wantErr: "ek_public is not a restricted, fixed decryption key"},
		{name: "EK not fixedParent", ek: rsaEK, mutate: func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedParent = false },
			wantCheck: verify.CheckEKTrust, wantErr: "ek_public is not a restricted, fixed decryption key"},
		{name: "EK on an unsupported curve", ek: eccEK, mutate: func(p *tpm2.TPMTPublic) {
			parms, _ := p.Parameters.ECCDetail()
			c := *parms
			c.CurveID = tpm2.TPMECCBNP256
			p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &c)
		}, wantCheck: verify.CheckInput, wantErr: "ek_public holds no usable public key"},
		{name: "EK of a key type without a public key", ek: rsaEK, mutate: func(p *tpm2.TPMTPublic) {
			p.Type = tpm2.TPMAlgKeyedHash
			p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
				Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
			})
			p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: make([]byte, 32)})
		}, wantCheck: verify.CheckInput, wantErr: "ek_public holds no usable public key"},
		{name: "EK whose name algorithm cannot seal a credential", ek: rsaEK,
			mutate:    func(p *tpm2.TPMTPublic) { p.NameAlg = tpm2.TPMAlgSHA3256 },
			wantCheck: verify.CheckInput, wantErr: "ek_public cannot receive a credential"},
		{name: "EK without a symmetric algorithm for the outer wrapper", ek: eccEK, mutate: func(p *tpm2.TPMTPublic) {
			parms, _ := p.Parameters.ECCDetail()
			c := *parms
			c.Symmetric = tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull}
			p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &c)
		}, wantCheck: verify.CheckInput, wantErr: "ek_public cannot receive a credential"},
		{name: "EK with a 1024-bit RSA key", ek: ekPublicRSA(&akRSA1024().PublicKey),
			trust:     &verify.Trust{EKHashes: []string{mustEKHash(t, &akRSA1024().PublicKey)}},
			wantCheck: verify.CheckInput, wantErr: "ek_public cannot receive a credential"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ek := tt.ek
			if tt.mutate != nil {
				tt.mutate(&ek)
			}
			tr := trust
			if tt.trust != nil {
				tr = *tt.trust
			}
			n, err := verify.Node(tpm2.Marshal(ek), nil, nil, defaultAK().publicBytes(), verify.Opts{Trust: tr})
			assertCheck(t, err, tt.wantCheck, tt.wantErr)
			if err != nil {
				return
			}
			key, err := tpm2.Pub(ek)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := n.EKHash(), mustEKHash(t, key); got != want {
				t.Errorf("EKHash() = %s, want %s", got, want)
			}
			if got := n.EKPublic(); !bytes.Equal(tpm2.Marshal(*got), tpm2.Marshal(ek)) {
				t.Error("EKPublic() is not the EK public area that was presented")
			}
			if k := n.EKKey(); k == nil || k.NameAlg() != ek.NameAlg {
				t.Errorf("EKKey() = %v, not the EK parsed", k)
			}
		})
	}
}

func upper(s string) string { return string(bytes.ToUpper([]byte(s))) }

func TestNodeAK(t *testing.T) {
	ek := tpm2.Marshal(ekPublicRSA(&ekRSAKey().PublicKey))
	ekHash := mustEKHash(t, &ekRSAKey().PublicKey)
	rsaAK := defaultAK().pub
	attr := func(f func(*tpm2.TPMAObject)) func(*tpm2.TPMTPublic) {
		return func(p *tpm2.TPMTPublic) { f(&p.ObjectAttributes) }
	}
	tests := []struct {
		name      string
		ak        tpm2.TPMTPublic
		mutate    func(*tpm2.TPMTPublic)
		allowSHA1 bool
		wantCheck verify.Check
		wantErr   string
	}{
		{name: "RSA-2048 RSASSA", ak: rsaAK},
		{name: "RSA-2048 RSAPSS", ak: akPublicRSA(&akRSAKey().PublicKey, tpm2.TPMAlgRSAPSS, tpm2.TPMAlgSHA256)},
		{name: "ECC P-256", ak: akPublicECC(&akP256Key().PublicKey, tpm2.TPMECCNistP256, tpm2.TPMAlgSHA256)},
		{name: "ECC P-384", ak: akPublicECC(&akP384Key().PublicKey, tpm2.TPMECCNistP384, tpm2.TPMAlgSHA384)},
		{name: "name algorithm SHA-384", ak: rsaAK, mutate: func(p *tpm2.TPMTPublic) { p.NameAlg = tpm2.TPMAlgSHA384 }},
		{name: "name algorithm SHA-512", ak: rsaAK, mutate: func(p *tpm2.TPMTPublic) { p.NameAlg = tpm2.TPMAlgSHA512 }},
		{name: "not restricted", ak: rsaAK, mutate: attr(func(a *tpm2.TPMAObject) { a.Restricted = false }),
			wantCheck: verify.CheckAK, wantErr: "AK lacks attributes [restricted]"},
		{name: "not a signing key", ak: rsaAK, mutate: attr(func(a *tpm2.TPMAObject) { a.SignEncrypt = false }),
			wantCheck: verify.CheckAK, wantErr: "AK lacks attributes [sign]"},
		{name: "not fixedTPM", ak: rsaAK, mutate: attr(func(a *tpm2.TPMAObject) { a.FixedTPM = false }),
			wantCheck: verify.CheckAK, wantErr: "AK lacks attributes [fixedTPM]"},
		{name: "not fixedParent", ak: rsaAK, mutate: attr(func(a *tpm2.TPMAObject) { a.FixedParent = false }),
			wantCheck: verify.CheckAK, wantErr: "AK lacks attributes [fixedParent]"},
		{name: "imported (no sensitiveDataOrigin)", ak: rsaAK, mutate: attr(func(a *tpm2.TPMAObject) { a.SensitiveDataOrigin = false }),
			wantCheck: verify.CheckAK, wantErr: "AK lacks attributes [sensitiveDataOrigin]"},
		{name: "every missing attribute is reported", ak: rsaAK, mutate: attr(func(a *tpm2.TPMAObject) { *a = tpm2.TPMAObject{} }),
			wantCheck: verify.CheckAK, wantErr: "AK lacks attributes [restricted sign fixedTPM fixedParent sensitiveDataOrigin]"},
		{name: "ECC AK not fixedTPM", ak: akPublicECC(&akP256Key().PublicKey, tpm2.TPMECCNistP256, tpm2.TPMAlgSHA256),
			mutate:    attr(func(a *tpm2.TPMAObject) { a.FixedTPM = false }),
			wantCheck: verify.CheckAK, wantErr: "AK lacks attributes [fixedTPM]"},
		{name: "also a decryption key", ak: rsaAK, mutate: attr(func(a *tpm2.TPMAObject) { a.Decrypt = true }),
			wantCheck: verify.CheckAK, wantErr: "AK must not be a decryption key"},
		{name: "the EK as AK", ak: ekPublicRSA(&ekRSAKey().PublicKey),
			wantCheck: verify.CheckAK, wantErr: "AK lacks attributes [sign]"},
		{name: "SHA-1 name algorithm refused", ak: rsaAK, mutate: func(p *tpm2.TPMTPublic) { p.NameAlg = tpm2.TPMAlgSHA1 },
			wantCheck: verify.CheckAK, wantErr: "AK name algorithm SHA-1 is not allowed"},
		{name: "SHA-1 name algorithm with AllowSHA1", ak: rsaAK, mutate: func(p *tpm2.TPMTPublic) { p.NameAlg = tpm2.TPMAlgSHA1 },
			allowSHA1: true},
		{name: "SHA3-256 name algorithm", ak: rsaAK, mutate: func(p *tpm2.TPMTPublic) { p.NameAlg = tpm2.TPMAlgSHA3256 },
			wantCheck: verify.CheckAK, wantErr: "AK name algorithm 0x0027 is not supported"},
		{name: "RSA-1024", ak: akPublicRSA(&akRSA1024().PublicKey, tpm2.TPMAlgRSASSA, tpm2.TPMAlgSHA256),
			wantCheck: verify.CheckAK, wantErr: "AK RSA key has 1024 bits, want at least 2048"},
		{name: "RSA-1024 is refused even with AllowSHA1", ak: akPublicRSA(&akRSA1024().PublicKey, tpm2.TPMAlgRSASSA, tpm2.TPMAlgSHA256),
			allowSHA1: true, wantCheck: verify.CheckAK, wantErr: "AK RSA key has 1024 bits, want at least 2048"},
		{name: "ECC P-521", ak: akPublicECC(&akP521Key().PublicKey, tpm2.TPMECCNistP521, tpm2.TPMAlgSHA512),
			wantCheck: verify.CheckAK, wantErr: "AK ECC curve is not P-256 or P-384"},
		{name: "ECC BN-256", ak: akPublicECC(&akP256Key().PublicKey, tpm2.TPMECCBNP256, tpm2.TPMAlgSHA256),
			wantCheck: verify.CheckAK, wantErr: "AK holds no usable public key"},
		{name: "restricted HMAC key", ak: hmacAK(), wantCheck: verify.CheckAK, wantErr: "AK holds no usable public key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ak := tt.ak
			if tt.mutate != nil {
				tt.mutate(&ak)
			}
			opts := verify.Opts{Trust: verify.Trust{EKHashes: []string{ekHash}}, AllowSHA1: tt.allowSHA1}
			n, err := verify.Node(ek, nil, nil, tpm2.Marshal(ak), opts)
			assertCheck(t, err, tt.wantCheck, tt.wantErr)
			if err != nil {
				return
			}
			want, err := tpm2.ObjectName(&ak)
			if err != nil {
				t.Fatal(err)
			}
			got := n.AKName()
			if !bytes.Equal(got, want.Buffer) {
				t.Fatalf("AKName() = %x, want %x", got, want.Buffer)
			}
			got[0] ^= 0xff
			if !bytes.Equal(n.AKName(), want.Buffer) {
				t.Error("changing the slice AKName returned changed the identity")
			}
		})
	}
}

// hmacAK is a restricted, TPM-generated HMAC signing key: a TPM can sign
// attestations with it, but a verifier has no public key to check them.
func hmacAK() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgKeyedHash,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: akAttributes(),
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{
				Scheme:  tpm2.TPMAlgHMAC,
				Details: tpm2.NewTPMUSchemeKeyedHash(tpm2.TPMAlgHMAC, &tpm2.TPMSSchemeHMAC{HashAlg: tpm2.TPMAlgSHA256}),
			},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: make([]byte, 32)}),
	}
}

// The EK is checked before the AK: an untrusted node learns nothing about
// whether its AK would have passed.
func TestNodeChecksEKBeforeAK(t *testing.T) {
	ak := defaultAK().pub
	ak.ObjectAttributes.Restricted = false
	_, err := verify.Node(tpm2.Marshal(ekPublicRSA(&ekRSAKey().PublicKey)), nil, nil, tpm2.Marshal(ak), verify.Opts{Trust: verify.Trust{}})
	assertCheck(t, err, verify.CheckEKTrust, "EK is not trusted")
}

// The AK's SHA-1 switch lives in Trust; Opts has its own.
func TestNodeAllowSHA1OnlyAffectsTheAKNameAlgorithm(t *testing.T) {
	ak := defaultAK().pub
	ak.NameAlg = tpm2.TPMAlgSHA1
	n := trustedNode(t, softAK{pub: ak, signer: akRSAKey(), scheme: tpm2.TPMAlgRSASSA, hash: tpm2.TPMAlgSHA256})
	if name := n.AKName(); len(name) != 2+20 || name[0] != 0x00 || name[1] != 0x04 {
		t.Errorf("AKName() = %x, want a SHA-1 name (0x0004 || 20 bytes)", name)
	}
}

func TestNodeRefusesTrailingBytes(t *testing.T) {
	ekKey := ekRSAKey().Public().(*rsa.PublicKey)
	ek, ak := tpm2.Marshal(ekPublicRSA(ekKey)), defaultAK().publicBytes()
	tests := []struct {
		name    string
		ek, ak  []byte
		wantErr string
	}{
		{"ek", append(slices.Clone(ek), 0), ak, "input: ek_public has trailing bytes"},
		{"ak", ek, append(slices.Clone(ak), 0), "input: ak_public has trailing bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := verify.Node(tc.ek, nil, nil, tc.ak, verify.Opts{Trust: verify.Trust{EKHashes: []string{mustEKHash(t, ekKey)}}})
			if verify.FailedCheck(err) != verify.CheckInput || err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
				t.Fatalf("Node = %v; want %q", err, tc.wantErr)
			}
		})
	}
}

// An indexed Trust trusts exactly the EK hashes it lists, as the plain one.
func TestTrustIndex(t *testing.T) {
	ek := tpm2.Marshal(ekPublicRSA(&ekRSAKey().PublicKey))
	ak := defaultAK().publicBytes()
	hash := mustEKHash(t, &ekRSAKey().PublicKey)
	others := make([]string, 1000)
	for i := range others {
		others[i] = strings.Repeat(string("0123456789abcdef"[i%16]), 63) + string("0123456789abcdef"[i/16%16])
	}
	for _, tt := range []struct {
		name   string
		hashes []string
		want   bool
	}{
		{"listed last of many", append(slices.Clone(others), hash), true},
		{"listed alone", []string{hash}, true},
		{"not listed", others, false},
		{"none", nil, false},
	} {
		for _, trust := range []verify.Trust{{EKHashes: tt.hashes}, verify.Trust{EKHashes: tt.hashes}.Index()} {
			n, err := verify.Node(ek, nil, nil, ak, verify.Opts{Trust: trust})
			if tt.want {
				if err != nil || n.EKHash() != hash {
					t.Fatalf("%s: Node = %v, %v; want the node", tt.name, n, err)
				}
				continue
			}
			assertCheck(t, err, verify.CheckEKTrust, "EK is not trusted")
		}
	}
}
