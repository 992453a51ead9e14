package verify_test

import (
	"crypto/sha256"
	"io"
	"reflect"
	"testing"

	"github.com/google/go-tpm-tools/client"
	legacy "github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/resident"
)

// certifyTemplate creates a key from tmpl under resident's parent storage
// key and certifies it with the AK over qualifying data qd, as an agent
// with another idea of a resident key would.
func certifyTemplate(t *testing.T, rw io.ReadWriter, akHandle uint32, tmpl tpm2.TPMTPublic, qd []byte) verify.ResidentKeyEvidence {
	t.Helper()
	tpm := transport.FromReadWriter(rw)
	parent, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(resident.ParentTemplate())}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm2.FlushContext{FlushHandle: parent.ObjectHandle}.Execute(tpm)
	created, err := tpm2.Create{ParentHandle: tpm2.NamedHandle{Handle: parent.ObjectHandle, Name: parent.Name}, InPublic: tpm2.New2B(tmpl)}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := tpm2.Load{ParentHandle: tpm2.NamedHandle{Handle: parent.ObjectHandle, Name: parent.Name},
		InPrivate: created.OutPrivate, InPublic: created.OutPublic}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm2.FlushContext{FlushHandle: loaded.ObjectHandle}.Execute(tpm)
	ak, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(akHandle)}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tpm2.Certify{
		ObjectHandle:   tpm2.AuthHandle{Handle: loaded.ObjectHandle, Name: loaded.Name, Auth: tpm2.PasswordAuth(nil)},
		SignHandle:     tpm2.AuthHandle{Handle: tpm2.TPMHandle(akHandle), Name: ak.Name, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: qd},
		InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
	}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := created.OutPublic.Contents()
	if err != nil {
		t.Fatal(err)
	}
	return verify.ResidentKeyEvidence{Public: tpm2.Marshal(pub), CertifyInfo: cert.CertifyInfo.Bytes(), Signature: tpm2.Marshal(cert.Signature)}
}

func evidenceOf(k *resident.Key) verify.ResidentKeyEvidence {
	return verify.ResidentKeyEvidence{Name: k.Name, Public: k.Public, CertifyInfo: k.CertifyInfo, Signature: k.Signature}
}

// TestTPMResidentKeys: a key the agent created in the TPM and certified
// with the AK over this challenge is verified; every way of getting the
// certify wrong is refused with check resident_key and nothing verified.
func TestTPMResidentKeys(t *testing.T) {
	s := openSimNode(t)
	secret := newSecret(0x7a)
	v, err := verify.Quotes(s.node, sha256.Sum256(secret), []verify.Quote{quote(t, s.ak, legacy.AlgSHA256, []int{0, 7}, secret)}, verify.Opts{})
	if err != nil {
		t.Fatal(err)
	}
	akHandle := uint32(s.ak.Handle())
	web, err := resident.Create(s.rw, akHandle, secret, "web")
	if err != nil {
		t.Fatal(err)
	}

	t.Run("verified", func(t *testing.T) {
		got, err := v.WithResidentKeys([]verify.ResidentKeyEvidence{evidenceOf(web)}, verify.Opts{})
		if err != nil {
			t.Fatal(err)
		}
		k := got.ResidentKey("web")
		if k == nil {
			t.Fatal("ResidentKey(web) = nil after verification")
		}
		want, err := web.PublicKey()
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(k.Public(), want) {
			t.Errorf("verified public key differs from the created key")
		}
		if got.ResidentKey("api") != nil || v.ResidentKey("web") != nil {
			t.Error("a resident key appeared that was not verified")
		}
	})

	otherAK := must(t)(client.AttestationKeyECC(s.rw))
	fromOtherAK, err := resident.Create(s.rw, uint32(otherAK.Handle()), secret, "web")
	if err != nil {
		t.Fatal(err)
	}
	wrongNonce, err := resident.Create(s.rw, akHandle, newSecret(0x01), "web")
	if err != nil {
		t.Fatal(err)
	}
	notFixed := resident.KeyTemplate()
	notFixed.ObjectAttributes.FixedTPM, notFixed.ObjectAttributes.FixedParent = false, false
	notFixedKey := certifyTemplate(t, s.rw, akHandle, notFixed, resident.QualifyingData(secret, "web"))
	notFixedKey.Name = "web"
	decrypting := resident.KeyTemplate()
	decrypting.ObjectAttributes.Decrypt = true
	decrypting.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Scheme: tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull}, CurveID: tpm2.TPMECCNistP256, KDF: tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull}})
	decryptKey := certifyTemplate(t, s.rw, akHandle, decrypting, resident.QualifyingData(secret, "web"))
	decryptKey.Name = "web"
	other, err := resident.Create(s.rw, akHandle, secret, "web")
	if err != nil {
		t.Fatal(err)
	}
	swapped := evidenceOf(web)
	swapped.Public = other.Public
	renamed := evidenceOf(web)
	renamed.Name = "api"
	q := quote(t, s.ak, legacy.AlgSHA256, []int{0}, secret)
	aQuote := verify.ResidentKeyEvidence{Name: "web", Public: web.Public, CertifyInfo: q.Attest, Signature: q.Signature}
	trailing := evidenceOf(web)
	trailing.Public = append(trailing.Public[:len(trailing.Public):len(trailing.Public)], 0)

	tests := []struct {
		name    string
		keys    []verify.ResidentKeyEvidence
		check   verify.Check
		wantErr string
	}{
		{"certify by another AK", []verify.ResidentKeyEvidence{evidenceOf(fromOtherAK)}, verify.CheckResidentKey,
			`resident key "web": certify signature does not verify with the AK`},
		{"wrong qualifying data", []verify.ResidentKeyEvidence{evidenceOf(wrongNonce)}, verify.CheckResidentKey,
			`resident key "web": certify qualifying data is not bound to this challenge`},
		{"certified for another release", []verify.ResidentKeyEvidence{renamed}, verify.CheckResidentKey,
			`resident key "api": certify qualifying data is not bound to this challenge`},
		{"key not fixedTPM", []verify.ResidentKeyEvidence{notFixedKey}, verify.CheckResidentKey,
			`resident key "web": not a TPM-resident signing key (no fixedTPM, no fixedParent)`},
		{"decrypting key", []verify.ResidentKeyEvidence{decryptKey}, verify.CheckResidentKey,
			`resident key "web": not a TPM-resident signing key (decrypt)`},
		{"name mismatch", []verify.ResidentKeyEvidence{swapped}, verify.CheckResidentKey,
			`resident key "web": certified name is not the name of the presented public area`},
		{"a quote, not a certify", []verify.ResidentKeyEvidence{aQuote}, verify.CheckResidentKey,
			`resident key "web": attestation is not a certify`},
		{"public with trailing bytes", []verify.ResidentKeyEvidence{trailing}, verify.CheckResidentKey,
			`resident key "web": public has trailing bytes`},
		{"offered twice", []verify.ResidentKeyEvidence{evidenceOf(web), evidenceOf(web)}, verify.CheckResidentKey,
			`resident key "web" offered twice`},
		{"no name", []verify.ResidentKeyEvidence{{Public: web.Public, CertifyInfo: web.CertifyInfo, Signature: web.Signature}}, verify.CheckInput,
			"resident key name must be 1 to 128 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := v.WithResidentKeys(tt.keys, verify.Opts{})
			if got != nil {
				t.Error("a refused resident key returned a Verified")
			}
			assertCheck(t, err, tt.check, tt.wantErr)
		})
	}
}

// TestResidentPCRPolicy: a key bound to the PCRs a release names is one
// whose authPolicy is the PolicyPCR of the values the quote carried; a key
// bound to other values or PCRs, one that also signs with its password, or
// a release over PCRs the quote did not carry is refused with check
// resident_key.
func TestResidentPCRPolicy(t *testing.T) {
	s := openSimNode(t)
	secret := newSecret(0x5c)
	v, err := verify.Quotes(s.node, sha256.Sum256(secret), []verify.Quote{quote(t, s.ak, legacy.AlgSHA256, []int{0, 7}, secret)}, verify.Opts{})
	if err != nil {
		t.Fatal(err)
	}
	akHandle := uint32(s.ak.Handle())
	create := func(name, pcrs string) verify.ResidentKeyEvidence {
		t.Helper()
		var opts resident.CreateOpts
		if pcrs != "" {
			sel, err := resident.ParsePCRs(pcrs)
			if err != nil {
				t.Fatal(err)
			}
			opts.PCRs = sel
		}
		k, err := resident.CreateWith(s.rw, akHandle, secret, name, opts)
		if err != nil {
			t.Fatal(err)
		}
		return evidenceOf(k)
	}
	bound := create("bound", "sha256:0,7")
	boundTo0 := create("bound-to-0", "sha256:0")
	unbound := create("unbound", "")
	// A key created after PCR 7 moved on: bound to values the quote did
	// not carry.
	sum := sha256.Sum256([]byte("later"))
	if err := legacy.PCRExtend(s.rw, 7, legacy.AlgSHA256, sum[:], ""); err != nil {
		t.Fatal(err)
	}
	stale := create("stale", "sha256:0,7")
	v, err = v.WithResidentKeys([]verify.ResidentKeyEvidence{bound, boundTo0, unbound, stale}, verify.Opts{})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		key     string
		pcrs    []uint32
		wantErr string
	}{
		{"bound to the quoted values", "bound", []uint32{0, 7}, ""},
		{"bound to fewer PCRs", "bound-to-0", []uint32{0, 7}, `resident key "bound-to-0": authPolicy is not the PolicyPCR of the quoted sha256:0,7 values`},
		{"bound to other values", "stale", []uint32{0, 7}, `resident key "stale": authPolicy is not the PolicyPCR of the quoted sha256:0,7 values`},
		{"signs with its password", "unbound", []uint32{0, 7}, `resident key "unbound": signs with its password (userWithAuth), not only under a PCR policy`},
		{"PCR not quoted", "bound", []uint32{0, 1}, `resident key "bound": PCR sha256:1 was not quoted`},
		{"not offered", "other", []uint32{0}, `resident key "other" was not offered`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := v.CheckResidentPCRPolicy(tt.key, tpm2.TPMAlgSHA256, tt.pcrs)
			if tt.wantErr == "" {
				assertCheck(t, err, "", "")
				return
			}
			assertCheck(t, err, verify.CheckResidentKey, tt.wantErr)
		})
	}
}
