package vaultauth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/broker/challenge"
)

// testCA is an EK certificate authority.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  string
}

var serial int64

func newTestCA(t *testing.T, name string, parent *testCA) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

// testManufacturer is the TPM manufacturer issueEK writes in the
// certificate's subject alternative name.
const testManufacturer = "id:53494D00"

// issueEK certifies an EK public key as TPM vendors do: no subject, and a
// critical subject alternative name holding only a directoryName with the
// TPM manufacturer, model and version (TCG EK Credential Profile).
func (ca *testCA) issueEK(t *testing.T, pub crypto.PublicKey) []byte {
	t.Helper()
	rdn, err := asn1.Marshal(pkix.RDNSequence{{
		{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 1}, Value: testManufacturer},
		{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 2}, Value: "SIM"},
		{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 3}, Value: "id:00020065"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	san, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: rdn}})
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber:    big.NewInt(serial),
		NotBefore:       time.Now().Add(-time.Hour),
		NotAfter:        time.Now().Add(time.Hour),
		KeyUsage:        x509.KeyUsageKeyEncipherment,
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Critical: true, Value: san}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestChallenge(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	e.configure(map[string]any{"ek_allow": n.ekHash, "challenge_ttl": "45s"})
	resp := e.challenge(n)
	id, _ := resp.Data["challenge_id"].(string)
	if len(id) != challenge.MaxTokenLength {
		t.Errorf("challenge_id = %q, want a %d-character token", id, challenge.MaxTokenLength)
	}
	for _, f := range []string{"credential_blob", "encrypted_secret"} {
		if b, err := base64.StdEncoding.DecodeString(resp.Data[f].(string)); err != nil || len(b) < 32 {
			t.Errorf("%s = %q: %v", f, resp.Data[f], err)
		}
	}
	expires, err := time.Parse(time.RFC3339Nano, resp.Data["expires"].(string))
	if err != nil || !expires.Equal(e.clock.now().Add(45*time.Second)) {
		t.Errorf("expires = %v, %v; want now+45s", resp.Data["expires"], err)
	}
	// Nothing of the challenge is stored: only the challenge key that
	// sealed it, which the next challenges reuse.
	want := []string{challengeKeysPath, configPath}
	if keys := storedKeys(t, e); !slices.Equal(keys, want) {
		t.Errorf("storage = %v, want %v", keys, want)
	}
	stored, err := e.b.store(e.storage).ChallengeKeys(t.Context())
	if err != nil || len(stored) != 1 {
		t.Fatalf("challenge keys = %v, %v", len(stored), err)
	}
	e.challenge(n)
	if again, _ := e.b.store(e.storage).ChallengeKeys(t.Context()); len(again) != 1 || again[0].ID != stored[0].ID {
		t.Errorf("a second challenge changed the keys")
	}
}

// storedKeys lists every storage key of e, sorted.
func storedKeys(t *testing.T, e *env) []string {
	t.Helper()
	keys, err := logical.CollectKeys(t.Context(), e.storage)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	return keys
}

// TestChallengeKeyRotation: the newest key seals; a challenge sealed by the
// previous key is still answered after a rotation, and keys whose
// challenges have all expired are deleted.
func TestChallengeKeyRotation(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	setup(t, e, n)
	st := e.b.store(e.storage)
	first, _ := st.ChallengeKeys(t.Context())
	if len(first) != 0 {
		t.Fatalf("keys before any challenge: %d", len(first))
	}
	e.challenge(n)
	first, _ = st.ChallengeKeys(t.Context())

	e.clock.add(challenge.DefaultKeyRotation - 30*time.Second)
	old := n.answer(e.challenge(n), "web") // sealed by the first key, valid 60s
	e.clock.add(40 * time.Second)
	fresh := n.answer(e.challenge(n), "web") // the first key is due: a second one seals
	keys, _ := st.ChallengeKeys(t.Context())
	if len(keys) != 2 || keys[1].ID != first[0].ID {
		t.Fatalf("keys after rotation = %d, want a new one before %s", len(keys), first[0].ID)
	}
	// In the order they were quoted: the TPM counters only go forward.
	for i, data := range []map[string]any{old, fresh} {
		if resp, err := e.request(logical.UpdateOperation, "login", data); err != nil || resp.Auth == nil {
			t.Errorf("login %d (0: sealed before the rotation): %v %v", i, err, resp.Error())
		}
	}
	// A rotation later, the first key's challenges have long expired: it
	// is deleted.
	e.clock.add(challenge.DefaultKeyRotation)
	e.challenge(n)
	keys, _ = st.ChallengeKeys(t.Context())
	if len(keys) != 2 || keys[1].ID == first[0].ID {
		t.Errorf("keys after a second rotation = %d (oldest kept: %v)", len(keys), keys[len(keys)-1].ID == first[0].ID)
	}
}

func TestChallengeRefusals(t *testing.T) {
	n := openNode(t, 0)
	trusted := newTestCA(t, "trusted vendor", nil)
	untrusted := newTestCA(t, "other vendor", nil)

	tests := []struct {
		name    string
		config  map[string]any
		data    func() map[string]any
		denied  bool // permission denied, else a 400 error response
		wantErr string
	}{
		{
			name:    "not configured",
			data:    n.challengeData,
			wantErr: "the TPM auth method is not configured",
		},
		{
			name:   "EK not in ek_allow",
			config: map[string]any{"ek_allow": hashA},
			data:   n.challengeData,
			denied: true, wantErr: "ek_trust: EK is not trusted",
		},
		{
			name:   "EK certificate from an untrusted CA",
			config: map[string]any{"ek_ca": map[string]any{"vendor": map[string]any{"roots": trusted.pem}}},
			data: func() map[string]any {
				d := n.challengeData()
				d["ek_certificate"] = b64(untrusted.issueEK(t, n.n.EK().PublicKey()))
				return d
			},
			denied: true, wantErr: "ek_trust: ek_certificate does not chain to a trusted EK CA",
		},
		{
			name:   "EK certificate for another key",
			config: map[string]any{"ek_ca": map[string]any{"vendor": map[string]any{"roots": trusted.pem}}},
			data: func() map[string]any {
				d := n.challengeData()
				d["ek_certificate"] = b64(trusted.issueEK(t, &untrusted.key.PublicKey))
				return d
			},
			denied: true, wantErr: "ek_trust: ek_certificate does not certify ek_public",
		},
		{
			name:   "missing and malformed fields, all at once",
			config: map[string]any{"ek_allow": n.ekHash},
			data: func() map[string]any {
				return map[string]any{"ek_certificate": "%%%", "ek_intermediates": []string{"AAAA", "!"}}
			},
			wantErr: "ek_public is required\nek_certificate is not base64: illegal base64 data at input byte 0\n" +
				"ak_public is required\nek_intermediates[1] is not base64",
		},
		{
			name:   "AK given as EK",
			config: map[string]any{"ek_allow": n.ekHash},
			data: func() map[string]any {
				d := n.challengeData()
				d["ek_public"] = d["ak_public"]
				return d
			},
			denied: true, wantErr: "ek_trust: ek_public is not a restricted, fixed decryption key",
		},
		{
			name:   "garbage AK",
			config: map[string]any{"ek_allow": n.ekHash},
			data: func() map[string]any {
				d := n.challengeData()
				d["ak_public"] = b64([]byte("not a TPMT_PUBLIC"))
				return d
			},
			wantErr: "input: ak_public is not a TPMT_PUBLIC",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			if tt.config != nil {
				e.configure(tt.config)
			}
			resp, err := e.request(logical.UpdateOperation, "challenge", tt.data())
			if tt.denied && err != logical.ErrPermissionDenied || !tt.denied && err != nil {
				t.Fatalf("err = %v, denied want %v", err, tt.denied)
			}
			if !resp.IsError() || !strings.Contains(resp.Error().Error(), tt.wantErr) {
				t.Fatalf("response = %v, want error %q", resp.Error(), tt.wantErr)
			}
			if keys := storedKeys(t, e); slices.Contains(keys, challengeKeysPath) {
				t.Errorf("a refused challenge made a challenge key: %v", keys)
			}
		})
	}
}

func TestChallengeRateLimit(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	e.configure(map[string]any{"ek_allow": n.ekHash, "challenges_per_minute": 2})
	e.challenge(n)
	e.clock.add(30 * time.Second)
	e.challenge(n)
	_, err := e.request(logical.UpdateOperation, "challenge", n.challengeData())
	if coded, ok := err.(logical.HTTPCodedError); !ok || coded.Code() != http.StatusTooManyRequests ||
		!strings.Contains(err.Error(), "too many challenges for this EK") {
		t.Fatalf("third challenge in a minute: err = %v, want 429", err)
	}
	// The window slides: a minute after the first, one more is allowed.
	e.clock.add(31 * time.Second)
	e.challenge(n)
	if _, err := e.request(logical.UpdateOperation, "challenge", n.challengeData()); err == nil {
		t.Fatal("challenge allowed beyond the limit")
	}
	// An untrusted EK does not count against anyone, and is refused first.
	e.configure(map[string]any{"ek_allow": hashA})
	if _, err := e.request(logical.UpdateOperation, "challenge", n.challengeData()); err != logical.ErrPermissionDenied {
		t.Fatalf("untrusted EK: %v", err)
	}
	// Idle windows are forgotten by the periodic function.
	e.clock.add(2 * time.Minute)
	if err := e.b.periodic(t.Context(), &logical.Request{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	if len(e.b.limiter.seen) != 0 {
		t.Errorf("limiter keeps %d idle EKs", len(e.b.limiter.seen))
	}
}
