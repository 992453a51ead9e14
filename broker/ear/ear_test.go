package ear_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/attestation"
	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/broker/ear"
	"github.com/keybroker/keybroker/broker/evidence"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/softtpm"
	"github.com/keybroker/keybroker/policies"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// corpusLog is a real machine's event log from the broker's corpus.
const corpusLog = "../verify/testdata/eventlogs/ubuntu-2404-amd-sevsnp.bin"

// decide runs node through a challenge as the broker makes it and decides
// on its answer with policy, as the broker's Attest does.
func decide(t *testing.T, node *softtpm.Node, trust verify.Trust, policy string) *evidence.Outcome {
	t.Helper()
	secret := make([]byte, challenge.SecretSize)
	rand.Read(secret)
	blob, enc, err := challenge.MakeCredential(node.EKPublic(), node.AKName(), secret)
	if err != nil {
		t.Fatal(err)
	}
	got, err := node.Activate(&pb.ChallengeResponse{CredentialBlob: blob, EncryptedSecret: enc})
	if err != nil {
		t.Fatal(err)
	}
	quotes, err := node.Quote(got)
	if err != nil {
		t.Fatal(err)
	}
	req, ans := node.ChallengeRequest(), node.AttestRequest("c", quotes)
	ev := attestation.Evidence{Time: time.Now(), EKPublic: req.GetEkPublic(), EKCertificate: req.GetEkCertificate(),
		EKIntermediates: req.GetEkIntermediates(), AKPublic: req.GetAkPublic(), SecretHash: sha256.Sum256(secret),
		EventLog: ans.GetEventLog()}
	for _, q := range ans.GetQuotes() {
		ev.Quotes = append(ev.Quotes, attestation.Quote{Attest: q.GetAttest(), Signature: q.GetSignature(),
			Bank: uint16(q.GetPcrs().GetHashAlg()), PCRs: q.GetPcrs().GetValues()})
	}
	set, err := policies.Parse([]byte(strings.ReplaceAll(policy, "EKHASH", node.EKHash())), "p.hcl")
	if err != nil {
		t.Fatal(err)
	}
	o := evidence.Decide(evidence.Inputs{Evidence: ev, Opts: verify.Opts{Trust: trust}.Index(), Policies: set,
		Previous: func(string) (store.NodeRecord, error) { return store.NodeRecord{}, store.ErrNotFound }})
	if o.Refusal != nil {
		t.Fatalf("refused: %s: %v %q", o.Refusal.Check, o.Refusal.Err, o.Decision.Failures)
	}
	return o
}

func newNode(t *testing.T, opts softtpm.Opts) *softtpm.Node {
	t.Helper()
	n, err := softtpm.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestVector: the trustworthiness vector claims what was appraised, and
// nothing else.
func TestVector(t *testing.T) {
	ca, err := softtpm.NewEKCA("vendor")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	raw, err := os.ReadFile(corpusLog)
	if err != nil {
		t.Fatal(err)
	}
	pcrs, err := softtpm.EventLogPCRs(raw)
	if err != nil {
		t.Fatal(err)
	}
	byHash := func(n *softtpm.Node) verify.Trust { return verify.Trust{EKHashes: []string{n.EKHash()}} }
	const selectHash = `policy "p" {
  select { ek_hashes = ["EKHASH"] }
  require = [%s]
}`
	withRequire := func(req string) string { return strings.Replace(selectHash, "%s", req, 1) }
	tests := []struct {
		name   string
		node   *softtpm.Node
		trust  func(*softtpm.Node) verify.Trust
		policy string
		want   map[string]int8
	}{
		{
			name: "EK by hash, no conditions: instance identity only",
			node: newNode(t, softtpm.Opts{}), trust: byHash, policy: withRequire(""),
			want: map[string]int8{"instance-identity": 2},
		},
		{
			name: "PCR conditions: approved configuration",
			node: newNode(t, softtpm.Opts{}), trust: byHash, policy: withRequire(`"pcrs.sha256[0] != ''"`),
			want: map[string]int8{"instance-identity": 2, "configuration": 2},
		},
		{
			name: "EK certificate chained to an EK CA: genuine hardware",
			node: newNode(t, softtpm.Opts{EKCA: ca}),
			trust: func(*softtpm.Node) verify.Trust {
				return verify.Trust{CAs: []verify.CA{{Name: "vendor", Roots: roots}}}
			},
			policy: `policy "p" {
  select { ek_cas = ["vendor"] }
}`,
			want: map[string]int8{"instance-identity": 2, "hardware": 2},
		},
		{
			name: "event log replayed and appraised: approved boot",
			node: newNode(t, softtpm.Opts{PCRs: pcrs, EventLog: raw}), trust: byHash,
			policy: withRequire(`"eventlog.present", "size(eventlog.boot_apps) > 0"`),
			want:   map[string]int8{"instance-identity": 2, "executables": 3},
		},
		{
			name: "event log sent but not appraised: no executables claim",
			node: newNode(t, softtpm.Opts{PCRs: pcrs, EventLog: raw}), trust: byHash,
			policy: withRequire(`"pcrs.sha256[7] != ''"`),
			want:   map[string]int8{"instance-identity": 2, "configuration": 2},
		},
		{
			name: "event log condition without a log: no executables claim",
			node: newNode(t, softtpm.Opts{}), trust: byHash, policy: withRequire(`"!eventlog.present"`),
			want: map[string]int8{"instance-identity": 2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := decide(t, tt.node, tt.trust(tt.node), tt.policy)
			r, err := ear.FromOutcome(o, "r1", nil, time.Now(), time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			tv := decodeClaims(t, r)["submods"].(map[string]any)[ear.Submod].(map[string]any)["ear.trustworthiness-vector"].(map[string]any)
			got := map[string]int8{}
			for k, v := range tv {
				got[k] = int8(v.(float64))
			}
			if !maps.Equal(got, tt.want) {
				t.Errorf("trustworthiness vector = %v; want %v", got, tt.want)
			}
		})
	}
}

// decodeClaims is r as a relying party reads it: JSON.
func decodeClaims(t *testing.T, r *ear.Result) map[string]any {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestClaims checks every claim's name and JSON type against the EAR
// draft (Veraison profile): eat_profile, iat, exp, ear.verifier-id,
// eat_nonce, submods with ear.status, ear.trustworthiness-vector and
// ear.appraisal-policy-id, and keybroker's two private claims; nothing
// else.
func TestClaims(t *testing.T) {
	node := newNode(t, softtpm.Opts{})
	o := decide(t, node, verify.Trust{EKHashes: []string{node.EKHash()}}, `policy "p" {
  select { ek_hashes = ["EKHASH"] }
  require = ["pcrs.sha256[0] != ''"]
}`)
	nonce := bytes.Repeat([]byte{0xfb}, 16) // base64url differs from std base64
	now := time.Unix(1_800_000_000, 0)
	r, err := ear.FromOutcome(o, "20260101T000000Z-0001", nonce, now, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	m := decodeClaims(t, r)
	want := []string{"ear.verifier-id", "eat_nonce", "eat_profile", "exp", "iat", "keybroker.ek-hash", "keybroker.receipt-id", "submods"}
	if got := slices.Sorted(maps.Keys(m)); !slices.Equal(got, want) {
		t.Fatalf("claims %q; want %q", got, want)
	}
	if m["eat_profile"] != "tag:github.com,2023:veraison/ear" {
		t.Errorf("eat_profile = %v", m["eat_profile"])
	}
	if m["iat"] != float64(1_800_000_000) || m["exp"] != float64(1_800_000_300) {
		t.Errorf("iat, exp = %v, %v; want integers 1800000000, 1800000300", m["iat"], m["exp"])
	}
	vid, ok := m["ear.verifier-id"].(map[string]any)
	if !ok || len(vid) != 2 || vid["developer"] != ear.Developer || !strings.HasPrefix(vid["build"].(string), "keybroker ") {
		t.Errorf("ear.verifier-id = %v; want {build: keybroker <version>, developer: %s}", m["ear.verifier-id"], ear.Developer)
	}
	if m["eat_nonce"] != base64.RawURLEncoding.EncodeToString(nonce) {
		t.Errorf("eat_nonce = %v; want the nonce in base64url without padding", m["eat_nonce"])
	}
	if m["keybroker.receipt-id"] != "20260101T000000Z-0001" || m["keybroker.ek-hash"] != node.EKHash() {
		t.Errorf("keybroker claims = %v, %v", m["keybroker.receipt-id"], m["keybroker.ek-hash"])
	}
	submods, ok := m["submods"].(map[string]any)
	if !ok || len(submods) != 1 {
		t.Fatalf("submods = %v; want one submodule", m["submods"])
	}
	a, ok := submods["tpm"].(map[string]any)
	if !ok {
		t.Fatalf("submods = %v; want \"tpm\"", submods)
	}
	if got := slices.Sorted(maps.Keys(a)); !slices.Equal(got, []string{"ear.appraisal-policy-id", "ear.status", "ear.trustworthiness-vector"}) {
		t.Errorf("appraisal claims %q", got)
	}
	if a["ear.status"] != "affirming" {
		t.Errorf("ear.status = %v; want affirming", a["ear.status"])
	}
	if a["ear.appraisal-policy-id"] != "keybroker:policy-set:"+o.Decision.PolicyHash || o.Decision.PolicyHash == "" {
		t.Errorf("ear.appraisal-policy-id = %v; want the policy set hash %q", a["ear.appraisal-policy-id"], o.Decision.PolicyHash)
	}
	names := []string{"instance-identity", "configuration", "executables", "file-system", "hardware", "runtime-opaque", "storage-opaque", "sourced-data"}
	for k, v := range a["ear.trustworthiness-vector"].(map[string]any) {
		f, ok := v.(float64)
		if !slices.Contains(names, k) || !ok || f != float64(int8(f)) {
			t.Errorf("trustworthiness vector claim %s = %v; want an AR4SI claim name and an integer in -128..127", k, v)
		}
	}

	// RFC 9711 bounds a JSON eat_nonce to 8..88 characters: base64url of
	// the bounds of a nonce in bytes fits.
	for _, n := range []int{ear.MinNonceSize, ear.MaxNonceSize} {
		r, err := ear.FromOutcome(o, "r", make([]byte, n), now, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if l := len(decodeClaims(t, r)["eat_nonce"].(string)); l < 8 || l > 88 {
			t.Errorf("eat_nonce of a %d-byte nonce has %d characters; want 8 to 88", n, l)
		}
	}

	// Without a nonce, eat_nonce is left out.
	r, err = ear.FromOutcome(o, "r", nil, now, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := decodeClaims(t, r)["eat_nonce"]; ok {
		t.Error("eat_nonce present without a nonce")
	}
}

// TestFromOutcomeRefuses: no result for a decision that allows nothing,
// nor without a receipt, nor with a nonce out of bounds.
func TestFromOutcomeRefuses(t *testing.T) {
	node := newNode(t, softtpm.Opts{})
	allowed := decide(t, node, verify.Trust{EKHashes: []string{node.EKHash()}}, `policy "p" {
  select { ek_hashes = ["EKHASH"] }
}`)
	denied := *allowed
	denied.Decision.Allowed, denied.Refusal = false, &evidence.Refusal{Check: evidence.CheckPolicy}
	for _, tt := range []struct {
		name    string
		o       *evidence.Outcome
		receipt string
		nonce   []byte
		wantErr string
	}{
		{"denied", &denied, "r", nil, "no attestation result for a decision that allows nothing"},
		{"nil outcome", nil, "r", nil, "no attestation result for a decision that allows nothing"},
		{"no receipt", allowed, "", nil, "no attestation result without a receipt"},
		{"nonce of 7 bytes", allowed, "r", make([]byte, 7), "relying_party_nonce must be 8 to 64 bytes, not 7"},
		{"nonce of 65 bytes", allowed, "r", make([]byte, 65), "relying_party_nonce must be 8 to 64 bytes, not 65"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ear.FromOutcome(tt.o, tt.receipt, tt.nonce, time.Now(), time.Minute)
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("FromOutcome = %v, %v; want error %q", r, err, tt.wantErr)
			}
		})
	}
	for _, n := range []int{0, 8, 64} {
		if err := ear.CheckNonce(make([]byte, n)); err != nil {
			t.Errorf("CheckNonce(%d bytes) = %v; want accepted", n, err)
		}
	}
}

func newSigner(t *testing.T) *ear.Signer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ear.NewSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestVerify: a signed result verifies against the signer's JWKS; a
// tampered one, an expired one, one for another nonce or without one, and
// one signed by another key do not.
func TestVerify(t *testing.T) {
	node := newNode(t, softtpm.Opts{})
	o := decide(t, node, verify.Trust{EKHashes: []string{node.EKHash()}}, `policy "p" {
  select { ek_hashes = ["EKHASH"] }
}`)
	signer := newSigner(t)
	jwks, err := signer.JWKS()
	if err != nil {
		t.Fatal(err)
	}
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(jwks, &set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("JWKS %s: %v", jwks, err)
	}
	if k := set.Keys[0]; k["kid"] != signer.KeyID() || k["alg"] != "ES256" || k["use"] != "sig" || k["kty"] != "EC" || k["crv"] != "P-256" || k["d"] != nil {
		t.Fatalf("JWKS key %v; want kid, alg ES256, use sig, a public P-256 key", k)
	}
	nonce := []byte("relying-party-nonce-0001")
	issued := time.Now()
	r, err := ear.FromOutcome(o, "r1", nonce, issued, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	token, err := signer.Sign(r)
	if err != nil {
		t.Fatal(err)
	}
	header, err := base64.RawURLEncoding.DecodeString(strings.Split(token, ".")[0])
	if err != nil || !strings.Contains(string(header), `"kid":"`+signer.KeyID()+`"`) || !strings.Contains(string(header), `"alg":"ES256"`) {
		t.Fatalf("JWT header %s: %v; want alg ES256 and the kid", header, err)
	}
	got, err := ear.Verify(token, jwks, ear.VerifyOpts{Nonce: nonce})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if got.ReceiptID != "r1" || got.EKHash != node.EKHash() || got.Submods[ear.Submod].Status != ear.StatusAffirming {
		t.Fatalf("verified claims %+v", got)
	}

	parts := strings.Split(token, ".")
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	sig[len(sig)-1] ^= 1
	badSig := parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(sig)
	claims, _ := base64.RawURLEncoding.DecodeString(parts[1])
	badClaims := parts[0] + "." + base64.RawURLEncoding.EncodeToString(bytes.Replace(claims, []byte(`"r1"`), []byte(`"r2"`), 1)) + "." + parts[2]
	otherKeys, err := newSigner(t).JWKS()
	if err != nil {
		t.Fatal(err)
	}
	// A key set naming the signer's kid with another key.
	var impostor map[string]any
	json.Unmarshal(otherKeys, &impostor)
	impostor["keys"].([]any)[0].(map[string]any)["kid"] = signer.KeyID()
	impostorKeys, _ := json.Marshal(impostor)
	unsigned := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","kid":"`+signer.KeyID()+`"}`)) + "." + parts[1] + "."

	for _, tt := range []struct {
		name    string
		token   string
		jwks    []byte
		opts    ear.VerifyOpts
		wantErr string
	}{
		{"tampered signature", badSig, jwks, ear.VerifyOpts{Nonce: nonce}, "attestation result signature does not verify"},
		{"tampered claims", badClaims, jwks, ear.VerifyOpts{Nonce: nonce}, "attestation result signature does not verify"},
		{"another key with the same kid", token, impostorKeys, ear.VerifyOpts{Nonce: nonce}, "attestation result signature does not verify"},
		{"kid not in the jwks", token, otherKeys, ear.VerifyOpts{Nonce: nonce}, "is not in the jwks"},
		{"alg none", unsigned, jwks, ear.VerifyOpts{Nonce: nonce}, "unable to parse attestation result"},
		{"expired", token, jwks, ear.VerifyOpts{Nonce: nonce, Now: func() time.Time { return issued.Add(5 * time.Minute) }}, "attestation result expired at"},
		{"issued in the future", token, jwks, ear.VerifyOpts{Nonce: nonce, Now: func() time.Time { return issued.Add(-time.Minute) }}, "attestation result is issued in the future"},
		{"another nonce", token, jwks, ear.VerifyOpts{Nonce: []byte("another-relying-party-n")}, "attestation result is for another nonce"},
		{"no nonce to check", token, jwks, ear.VerifyOpts{}, "no nonce to check the attestation result against"},
		{"too large", strings.Repeat("a", ear.MaxResultSize+1), jwks, ear.VerifyOpts{Nonce: nonce}, "attestation result exceeds 16384 bytes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ear.Verify(tt.token, tt.jwks, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Verify = %+v, %v; want error %q", got, err, tt.wantErr)
			}
		})
	}

	// Within its validity, with leeway past it, and ignoring the nonce
	// when told to.
	if _, err := ear.Verify(token, jwks, ear.VerifyOpts{Nonce: nonce, Leeway: time.Minute,
		Now: func() time.Time { return issued.Add(5*time.Minute + 30*time.Second) }}); err != nil {
		t.Errorf("Verify with leeway: %v", err)
	}
	if _, err := ear.Verify(token, jwks, ear.VerifyOpts{IgnoreNonceInsecure: true}); err != nil {
		t.Errorf("Verify ignoring the nonce: %v", err)
	}

	// A result without a nonce is refused when the relying party expects one.
	r.Nonce = ""
	bare, err := signer.Sign(r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ear.Verify(bare, jwks, ear.VerifyOpts{Nonce: nonce}); err == nil || err.Error() != "attestation result carries no nonce" {
		t.Errorf("Verify of a result without a nonce = %v; want it refused", err)
	}
}

// TestVerifyStrictClaims: claims of the wrong type, unknown claims, and
// missing required claims are refused even under a valid signature.
func TestVerifyStrictClaims(t *testing.T) {
	signer := newSigner(t)
	jwks, _ := signer.JWKS()
	now := time.Now().Unix()
	good := func() map[string]any {
		return map[string]any{
			"eat_profile": ear.Profile, "iat": now, "exp": now + 60,
			"ear.verifier-id":      map[string]any{"build": "b", "developer": "d"},
			"submods":              map[string]any{"tpm": map[string]any{"ear.status": "affirming", "ear.trustworthiness-vector": map[string]any{"instance-identity": 2}}},
			"keybroker.receipt-id": "r", "keybroker.ek-hash": "e",
		}
	}
	for _, tt := range []struct {
		name    string
		edit    func(m map[string]any)
		wantErr string
	}{
		{"valid", func(map[string]any) {}, ""},
		{"unknown claim", func(m map[string]any) { m["admin"] = true }, `unknown field "admin"`},
		{"iat a string", func(m map[string]any) { m["iat"] = "now" }, "cannot unmarshal string"},
		{"claim out of range", func(m map[string]any) {
			m["submods"].(map[string]any)["tpm"].(map[string]any)["ear.trustworthiness-vector"] = map[string]any{"hardware": 200}
		}, "cannot unmarshal number 200"},
		{"not a trust tier", func(m map[string]any) {
			m["submods"].(map[string]any)["tpm"].(map[string]any)["ear.status"] = "fine"
		}, `ear.status "fine" is not a trust tier`},
		{"another profile", func(m map[string]any) { m["eat_profile"] = "tag:ietf.org,2026:rats/ear#04" }, "eat_profile is"},
		{"no exp", func(m map[string]any) { delete(m, "exp") }, "exp is missing or not after iat"},
		{"no submods", func(m map[string]any) { delete(m, "submods") }, "submods is empty"},
		{"no receipt", func(m map[string]any) { delete(m, "keybroker.receipt-id") }, "keybroker.receipt-id and keybroker.ek-hash are required"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := good()
			tt.edit(m)
			token := signRaw(t, signer, m)
			_, err := ear.Verify(token, jwks, ear.VerifyOpts{IgnoreNonceInsecure: true})
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Verify: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Verify = %v; want error %q", err, tt.wantErr)
			}
		})
	}
}

func signRaw(t *testing.T, s *ear.Signer, claims map[string]any) string {
	t.Helper()
	b, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	token, err := s.SignPayload(b)
	if err != nil {
		t.Fatal(err)
	}
	return token
}
