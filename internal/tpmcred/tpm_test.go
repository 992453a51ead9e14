package tpmcred_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/keybroker/keybroker/internal/tpmcred"
	"github.com/keybroker/keybroker/internal/tpmtest"
)

// parents are the keys a TPM receives credentials and duplicates under:
// the TCG default EKs (policy: PolicySecret of the endorsement hierarchy)
// and a P-384 storage key with a SHA-384 name and AES-256, as in the TCG's
// high-range EK templates (password authorized).
var parents = []struct {
	name     string
	template tpm2.TPMTPublic
	policy   bool
}{
	{"RSA-2048 EK", tpm2.RSAEKTemplate, true},
	{"ECC P-256 EK", tpm2.ECCEKTemplate, true},
	{"ECC P-384 SHA-384 AES-256", p384Storage, false},
}

var p384Storage = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA384,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true,
		Restricted: true, Decrypt: true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Symmetric: aesCFB(256),
		Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
		CurveID:   tpm2.TPMECCNistP384,
		KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
}

// loaded is a key loaded in the simulator.
type loaded struct {
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	public *tpm2.TPMTPublic
	policy bool
}

func createPrimary(t *testing.T, tpm transport.TPM, hierarchy tpm2.TPMHandle, template tpm2.TPMTPublic, policy bool) loaded {
	t.Helper()
	rsp, err := tpm2.CreatePrimary{PrimaryHandle: hierarchy, InPublic: tpm2.New2B(template)}.Execute(tpm)
	if err != nil {
		t.Fatalf("CreatePrimary: %v", err)
	}
	t.Cleanup(func() { flush(t, tpm, rsp.ObjectHandle) })
	return loadedOf(t, rsp, policy)
}

func loadedOf(t *testing.T, rsp *tpm2.CreatePrimaryResponse, policy bool) loaded {
	t.Helper()
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		t.Fatal(err)
	}
	return loaded{handle: rsp.ObjectHandle, name: rsp.Name, public: pub, policy: policy}
}

// unloaded is createPrimary for a key only its public area and name are
// needed of: the simulator holds three objects at a time.
func unloaded(t *testing.T, tpm transport.TPM, hierarchy tpm2.TPMHandle, template tpm2.TPMTPublic) loaded {
	t.Helper()
	rsp, err := tpm2.CreatePrimary{PrimaryHandle: hierarchy, InPublic: tpm2.New2B(template)}.Execute(tpm)
	if err != nil {
		t.Fatalf("CreatePrimary: %v", err)
	}
	flush(t, tpm, rsp.ObjectHandle)
	return loadedOf(t, rsp, false)
}

func flush(t *testing.T, tpm transport.TPM, h tpm2.TPMHandle) {
	if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(tpm); err != nil {
		t.Errorf("FlushContext: %v", err)
	}
}

// auth authorizes the key's user role: with the EK policy
// (PolicySecret of the endorsement hierarchy) or a password.
func (k loaded) auth() tpm2.AuthHandle {
	a := tpm2.AuthHandle{Handle: k.handle, Name: k.name, Auth: tpm2.PasswordAuth(nil)}
	if k.policy {
		a.Auth = tpm2.Policy(tpm2.TPMAlgSHA256, 16, tpm2.PolicyCallback(func(tpm transport.TPM, h tpm2.TPMISHPolicy, nonce tpm2.TPM2BNonce) error {
			_, err := tpm2.PolicySecret{
				AuthHandle:    tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
				PolicySession: h, NonceTPM: nonce,
			}.Execute(tpm)
			return err
		}))
	}
	return a
}

// TestTPMActivatesCredential: the simulator's TPM2_ActivateCredential
// releases a credential MakeCredential made to its key for its AK, and
// refuses one made for another AK, to another key, or tampered with.
func TestTPMActivatesCredential(t *testing.T) {
	tpm := transport.FromReadWriter(tpmtest.Open(t))
	ak := createPrimary(t, tpm, tpm2.TPMRHOwner, tpm2.ECCSRKTemplate, false)
	otherTemplate := tpm2.ECCSRKTemplate
	otherTemplate.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: []byte("other")}})
	otherAK := unloaded(t, tpm, tpm2.TPMRHOwner, otherTemplate)
	var keys []loaded
	for _, p := range parents {
		keys = append(keys, unloaded(t, tpm, tpm2.TPMRHEndorsement, p.template))
	}
	activate := func(ek loaded, idObject, encSecret []byte) ([]byte, error) {
		rsp, err := tpm2.ActivateCredential{
			ActivateHandle: tpm2.AuthHandle{Handle: ak.handle, Name: ak.name, Auth: tpm2.PasswordAuth(nil)},
			KeyHandle:      ek.auth(),
			CredentialBlob: tpm2.TPM2BIDObject{Buffer: idObject},
			Secret:         tpm2.TPM2BEncryptedSecret{Buffer: encSecret},
		}.Execute(tpm)
		if err != nil {
			return nil, err
		}
		return rsp.CertInfo.Buffer, nil
	}
	for i, p := range parents {
		t.Run(p.name, func(t *testing.T) {
			ek := createPrimary(t, tpm, tpm2.TPMRHEndorsement, p.template, p.policy)
			if !bytes.Equal(ek.name.Buffer, keys[i].name.Buffer) {
				t.Fatal("a primary key made again from its template differs")
			}
			key, err := tpmcred.NewKey(ek.public)
			if err != nil {
				t.Fatal(err)
			}
			secret := make([]byte, 32)
			rand.Read(secret)
			id, enc, err := key.MakeCredential(rand.Reader, ak.name.Buffer, secret)
			if err != nil {
				t.Fatal(err)
			}
			got, err := activate(ek, id, enc)
			if err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("ActivateCredential = %x, %v; want %x", got, err, secret)
			}

			id, enc, err = key.MakeCredential(rand.Reader, otherAK.name.Buffer, secret)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := activate(ek, id, enc); err == nil {
				t.Errorf("ActivateCredential of a credential for another AK = %x; want a refusal", got)
			}

			other := keys[(i+1)%len(keys)]
			otherKey, err := tpmcred.NewKey(other.public)
			if err != nil {
				t.Fatal(err)
			}
			id, enc, err = otherKey.MakeCredential(rand.Reader, ak.name.Buffer, secret)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := activate(ek, id, enc); err == nil {
				t.Errorf("ActivateCredential of a credential to another key = %x; want a refusal", got)
			}

			id, enc, err = key.MakeCredential(rand.Reader, ak.name.Buffer, secret)
			if err != nil {
				t.Fatal(err)
			}
			id[len(id)-1] ^= 1
			if got, err := activate(ek, id, enc); err == nil {
				t.Errorf("ActivateCredential of a tampered credential = %x; want a refusal", got)
			}
		})
	}
}

// TestTPMImportsDuplicate: the simulator imports, loads and unseals a
// sealed data object Duplicate wrapped to its key, and refuses one wrapped
// to another key or tampered with.
func TestTPMImportsDuplicate(t *testing.T) {
	tpm := transport.FromReadWriter(tpmtest.Open(t))
	var keys []loaded
	for _, p := range parents {
		keys = append(keys, unloaded(t, tpm, tpm2.TPMRHEndorsement, p.template))
	}
	importUnseal := func(parent loaded, public tpm2.TPMTPublic, dup, encSeed []byte) ([]byte, error) {
		imp, err := tpm2.Import{
			ParentHandle: parent.auth(),
			ObjectPublic: tpm2.New2B(public),
			Duplicate:    tpm2.TPM2BPrivate{Buffer: dup},
			InSymSeed:    tpm2.TPM2BEncryptedSecret{Buffer: encSeed},
			Symmetric:    tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull},
		}.Execute(tpm)
		if err != nil {
			return nil, err
		}
		ld, err := tpm2.Load{
			ParentHandle: parent.auth(),
			InPrivate:    imp.OutPrivate,
			InPublic:     tpm2.New2B(public),
		}.Execute(tpm)
		if err != nil {
			return nil, err
		}
		defer flush(t, tpm, ld.ObjectHandle)
		rsp, err := tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: ld.ObjectHandle, Name: ld.Name, Auth: tpm2.PasswordAuth(nil)}}.Execute(tpm)
		if err != nil {
			return nil, err
		}
		return rsp.OutData.Buffer, nil
	}
	for i, p := range parents {
		t.Run(p.name, func(t *testing.T) {
			parent := createPrimary(t, tpm, tpm2.TPMRHEndorsement, p.template, p.policy)
			if !bytes.Equal(parent.name.Buffer, keys[i].name.Buffer) {
				t.Fatal("a primary key made again from its template differs")
			}
			key, err := tpmcred.NewKey(parent.public)
			if err != nil {
				t.Fatal(err)
			}
			secret := make([]byte, 32)
			rand.Read(secret)
			public, name, sensitive := sealedObject(t, secret)
			dup, seed, err := key.Duplicate(rand.Reader, name, sensitive)
			if err != nil {
				t.Fatal(err)
			}
			got, err := importUnseal(parent, public, dup, seed)
			if err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("Import+Unseal = %x, %v; want %x", got, err, secret)
			}

			otherKey, err := tpmcred.NewKey(keys[(i+1)%len(keys)].public)
			if err != nil {
				t.Fatal(err)
			}
			dup, seed, err = otherKey.Duplicate(rand.Reader, name, sensitive)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := importUnseal(parent, public, dup, seed); err == nil {
				t.Errorf("Import of a duplicate to another key = %x; want a refusal", got)
			}

			// A duplicate bound to another object's name.
			otherPublic, otherName, _ := sealedObject(t, []byte("another secret"))
			dup, seed, err = key.Duplicate(rand.Reader, otherName, sensitive)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := importUnseal(parent, public, dup, seed); err == nil {
				t.Errorf("Import of a duplicate for another name = %x; want a refusal", got)
			}
			if got, err := importUnseal(parent, otherPublic, dup, seed); err == nil {
				t.Errorf("Import of a duplicate under another object's public area = %x; want a refusal", got)
			}

			dup, seed, err = key.Duplicate(rand.Reader, name, sensitive)
			if err != nil {
				t.Fatal(err)
			}
			dup[len(dup)-1] ^= 1
			if got, err := importUnseal(parent, public, dup, seed); err == nil {
				t.Errorf("Import of a tampered duplicate = %x; want a refusal", got)
			}
		})
	}
}

// sealedObject is a password-authorized sealed data object holding
// secret: its public area, name and TPMT_SENSITIVE.
func sealedObject(t *testing.T, secret []byte) (tpm2.TPMTPublic, []byte, []byte) {
	t.Helper()
	seed := make([]byte, 32)
	rand.Read(seed)
	unique := sha256.Sum256(append(bytes.Clone(seed), secret...))
	public := tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgKeyedHash,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{UserWithAuth: true},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: unique[:]}),
	}
	name, err := tpm2.ObjectName(&public)
	if err != nil {
		t.Fatal(err)
	}
	sensitive := tpm2.Marshal(tpm2.TPMTSensitive{
		SensitiveType: tpm2.TPMAlgKeyedHash,
		SeedValue:     tpm2.TPM2BDigest{Buffer: seed},
		Sensitive:     tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BSensitiveData{Buffer: secret}),
	})
	return public, name.Buffer, sensitive
}
