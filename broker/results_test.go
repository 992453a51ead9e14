package broker_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/ear"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/brokertest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// TestAttestationResultOverGRPC runs a started broker with an
// attestation_results block: the node's Attest returns a result that a
// relying party verifies with the JWKS the broker publishes over gRPC,
// carrying the relying party's nonce, the receipt and the policy set hash;
// the result key is made 0600 in data_dir/ear and is what "keybroker ear
// jwks" reads.
func TestAttestationResultOverGRPC(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{Mode: "tpm_bound"})
	r := brokertest.Start(t, brokertest.StartOpts{Policy: env.PolicySource, EKHashes: []string{env.EKHash},
		Config: "attestation_results {\n  ttl = \"2m\"\n}\n"})
	client := dialAs(t, r, tls.Certificate{})
	ctx := context.Background()

	keys, err := client.GetAttestationResultKeys(ctx, &pb.GetAttestationResultKeysRequest{})
	if err != nil {
		t.Fatalf("GetAttestationResultKeys: %v", err)
	}
	nonce := []byte("a relying party's nonce")
	resp := attestWithNonce(t, client, env, nonce)
	token := resp.GetAttestationResult()
	if token == "" {
		t.Fatal("no attestation result in the response")
	}
	res, err := ear.Verify(token, keys.GetJwks(), ear.VerifyOpts{Nonce: nonce})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	rs, err := r.Store().ListReceipts(ctx, store.ListOpts{Limit: 1})
	if err != nil || len(rs) != 1 {
		t.Fatalf("receipts %v, %v", rs, err)
	}
	a := res.Submods[ear.Submod]
	switch {
	case res.ReceiptID != resp.GetReceiptId() || rs[0].ID != res.ReceiptID:
		t.Errorf("keybroker.receipt-id %q; want the response's and the store's receipt %q", res.ReceiptID, rs[0].ID)
	case res.EKHash != env.EKHash:
		t.Errorf("keybroker.ek-hash %q; want %q", res.EKHash, env.EKHash)
	case a.Status != ear.StatusAffirming || a.PolicyID != ear.PolicyIDPrefix+rs[0].PolicyHash:
		t.Errorf("appraisal %+v; want affirming under policy set %s", a, rs[0].PolicyHash)
	case a.TrustVector == nil || *a.TrustVector != (ear.TrustVector{InstanceIdentity: 2, Configuration: 2}):
		t.Errorf("trustworthiness vector %+v; want instance-identity 2 (EK by hash) and configuration 2 (PCR conditions)", a.TrustVector)
	case res.Expiry-res.IssuedAt != 120:
		t.Errorf("exp - iat = %d; want the configured ttl, 120", res.Expiry-res.IssuedAt)
	}
	// Another relying party's nonce does not match.
	if _, err := ear.Verify(token, keys.GetJwks(), ear.VerifyOpts{Nonce: []byte("another party's nonce")}); err == nil {
		t.Error("the result verified for another nonce")
	}

	keyFile := filepath.Join(r.DataDir(), broker.EARDir, broker.EARKeyFile)
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("result key %s: %v, %v; want mode 0600", keyFile, fi, err)
	}
	cli, err := broker.LoadResultKeys(&broker.Config{DataDir: r.DataDir(), AttestationResults: &broker.AttestationResultsConfig{}})
	if err != nil || !bytes.Equal(cli, keys.GetJwks()) {
		t.Fatalf("LoadResultKeys = %s, %v; want the published JWKS %s", cli, err, keys.GetJwks())
	}
}

// attestWithNonce answers a challenge of client's broker as env's node,
// with a relying party's nonce.
func attestWithNonce(t *testing.T, client pb.BrokerClient, env *brokertest.Env, nonce []byte) *pb.AttestResponse {
	t.Helper()
	ctx := context.Background()
	req, err := env.Node.ChallengeRequest()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := client.Challenge(ctx, req)
	if err != nil {
		t.Fatalf("Challenge: %v", err)
	}
	secret, err := env.Node.Activate(ch)
	if err != nil {
		t.Fatal(err)
	}
	areq := env.AttestRequest(t, ch, secret)
	areq.RelyingPartyNonce = nonce
	resp, err := client.Attest(ctx, areq)
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	return resp
}

// resultEnv is a Server with a result key, and the key's JWKS.
func resultEnv(t *testing.T) (*brokertest.Env, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ear.NewSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := signer.JWKS()
	if err != nil {
		t.Fatal(err)
	}
	env := brokertest.New(t, brokertest.Opts{Mode: "tpm_bound", Server: func(o *broker.ServerOpts) { o.Results = signer }})
	return env, jwks
}

// TestAttestationResultRefusedAttestation: a refused attestation gets no
// result, only its refusal; the next allowed one gets one, whose default
// ttl is DefaultAttestationResultTTL.
func TestAttestationResultRefusedAttestation(t *testing.T) {
	env, jwks := resultEnv(t)
	ctx := context.Background()
	ch, secret := env.Challenge(t)
	quotes, err := env.Node.Quote(secret)
	if err != nil {
		t.Fatal(err)
	}
	quotes[0].GetPcrs().GetValues()[7][0] ^= 1 // a PCR value the quote does not sign
	req := env.Answer(t, ch, quotes)
	req.RelyingPartyNonce = []byte("nonce-of-the-rp")
	resp, err := env.Server.Attest(ctx, req)
	if status.Code(err) != codes.PermissionDenied || resp.GetAttestationResult() != "" {
		t.Fatalf("refused Attest = %v, %v; want PermissionDenied and no attestation result", resp, err)
	}
	if rs := env.Receipts(t); len(rs) != 1 || rs[0].Allowed {
		t.Fatalf("receipts %+v; want one refusal", rs)
	}

	ch, secret = env.Challenge(t)
	req = env.AttestRequest(t, ch, secret)
	req.RelyingPartyNonce = []byte("nonce-of-the-rp")
	resp, err = env.Server.Attest(ctx, req)
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	res, err := ear.Verify(resp.GetAttestationResult(), jwks, ear.VerifyOpts{Nonce: []byte("nonce-of-the-rp"), Now: env.Clock})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if got := time.Duration(res.Expiry-res.IssuedAt) * time.Second; got != broker.DefaultAttestationResultTTL {
		t.Errorf("exp - iat = %s; want %s", got, broker.DefaultAttestationResultTTL)
	}
	// Past its ttl on the server's clock, the result is refused.
	env.Advance(broker.DefaultAttestationResultTTL)
	if _, err := ear.Verify(resp.GetAttestationResult(), jwks, ear.VerifyOpts{Nonce: []byte("nonce-of-the-rp"), Now: env.Clock}); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("Verify past the ttl = %v; want expired", err)
	}
}

// TestRelyingPartyNonceBounds: a nonce of fewer than 8 or more than 64
// bytes is refused with InvalidArgument before any work (the challenge is
// still unused and no receipt is written); 8 and 64 bytes are taken, and
// no nonce gives a result without eat_nonce.
func TestRelyingPartyNonceBounds(t *testing.T) {
	env, jwks := resultEnv(t)
	ctx := context.Background()
	ch, secret := env.Challenge(t)
	for _, n := range []int{1, 7, 65, 1024} {
		req := env.AttestRequest(t, ch, secret)
		req.RelyingPartyNonce = make([]byte, n)
		_, err := env.Server.Attest(ctx, req)
		want := "input: relying_party_nonce must be 8 to 64 bytes, not "
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), want) {
			t.Errorf("nonce of %d bytes: %v; want InvalidArgument %q", n, err, want)
		}
	}
	if rs := env.Receipts(t); len(rs) != 0 {
		t.Fatalf("receipts after refused input: %+v; want none", rs)
	}
	for i, n := range []int{8, 64, 0} {
		if i > 0 {
			ch, secret = env.Challenge(t)
		}
		req := env.AttestRequest(t, ch, secret)
		nonce := bytes.Repeat([]byte{byte(n)}, n)
		req.RelyingPartyNonce = nonce
		resp, err := env.Server.Attest(ctx, req)
		if err != nil {
			t.Fatalf("nonce of %d bytes: %v", n, err)
		}
		opts := ear.VerifyOpts{Nonce: nonce, Now: env.Clock}
		if n == 0 {
			opts = ear.VerifyOpts{IgnoreNonceInsecure: true, Now: env.Clock}
		}
		res, err := ear.Verify(resp.GetAttestationResult(), jwks, opts)
		if err != nil || (n == 0) != (res.Nonce == "") {
			t.Fatalf("nonce of %d bytes: result %+v, %v", n, res, err)
		}
	}
}

// TestNoAttestationResultsByDefault: without a result key Attest returns
// no result (a nonce is then ignored) and the keys RPC says why.
func TestNoAttestationResultsByDefault(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{Mode: "tpm_bound"})
	ctx := context.Background()
	ch, secret := env.Challenge(t)
	req := env.AttestRequest(t, ch, secret)
	req.RelyingPartyNonce = []byte("nonce-of-the-rp")
	resp, err := env.Server.Attest(ctx, req)
	if err != nil || resp.GetAttestationResult() != "" {
		t.Fatalf("Attest = %v, %v; want credentials and no attestation result", resp.GetAttestationResult(), err)
	}
	_, err = env.Server.GetAttestationResultKeys(ctx, &pb.GetAttestationResultKeysRequest{})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "attestation_results") {
		t.Fatalf("GetAttestationResultKeys = %v; want FailedPrecondition naming attestation_results", err)
	}
}

// TestAttestationResultsConfig: the block's defaults, bounds and key_file.
func TestAttestationResultsConfig(t *testing.T) {
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	if err := os.WriteFile(filepath.Join(dir, "ear.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	rsaLike := filepath.Join(dir, "not-a-key.pem")
	if err := os.WriteFile(rsaLike, []byte("hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	head := "data_dir = \"d\"\npolicies = [\"p\"]\nek_allow = [\"" + strings.Repeat("ab", 32) + "\"]\n"
	for _, tt := range []struct {
		name, block string
		wantErr     string
		wantTTL     time.Duration
		wantKey     string
	}{
		{"absent", "", "", 0, ""},
		{"defaults", "attestation_results {}", "", broker.DefaultAttestationResultTTL, filepath.Join(dir, "d", broker.EARDir, broker.EARKeyFile)},
		{"key_file and ttl", "attestation_results {\n  key_file = \"ear.pem\"\n  ttl = \"30s\"\n}", "", 30 * time.Second, filepath.Join(dir, "ear.pem")},
		{"ttl too long", "attestation_results {\n  ttl = \"25h\"\n}", "b.hcl:5:9: attestation_results: ttl must be between 1s and 24h0m0s", 0, ""},
		{"ttl not a duration", "attestation_results {\n  ttl = \"soon\"\n}", `b.hcl:5:9: ttl "soon" is not a duration`, 0, ""},
		{"key_file missing", "attestation_results {\n  key_file = \"missing.pem\"\n}", "b.hcl:5:14: attestation_results: key_file missing.pem: unable to load JWT key", 0, ""},
		{"key_file not a key", "attestation_results {\n  key_file = \"not-a-key.pem\"\n}", "b.hcl:5:14: attestation_results: key_file not-a-key.pem: unable to load JWT key: no pem private key found", 0, ""},
		{"key_file empty", "attestation_results {\n  key_file = \"\"\n}", "b.hcl:5:14: attestation_results: key_file cannot be empty", 0, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := broker.ParseConfig([]byte(head+tt.block+"\n"), filepath.Join(dir, "b.hcl"))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v; want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantTTL == 0 {
				if cfg.AttestationResults != nil {
					t.Fatalf("AttestationResults = %+v without the block", cfg.AttestationResults)
				}
				return
			}
			if cfg.AttestationResults.TTL != tt.wantTTL || cfg.ResultKeyPath() != tt.wantKey {
				t.Fatalf("ttl %s, key %s; want %s, %s", cfg.AttestationResults.TTL, cfg.ResultKeyPath(), tt.wantTTL, tt.wantKey)
			}
		})
	}
}

// TestAttestationResultKeyFile: a broker with key_file publishes that key,
// and never writes one in data_dir.
func TestAttestationResultKeyFile(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	keyFile := filepath.Join(t.TempDir(), "ear-key.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	r := brokertest.Start(t, brokertest.StartOpts{Policy: "policy \"p\" {\n  select { ek_hashes = [\"" + strings.Repeat("ab", 32) + "\"] }\n}\n",
		EKHashes: []string{strings.Repeat("ab", 32)}, Config: "attestation_results {\n  key_file = \"" + keyFile + "\"\n}\n"})
	keys, err := dialAs(t, r, tls.Certificate{}).GetAttestationResultKeys(context.Background(), &pb.GetAttestationResultKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want, err := ear.NewSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	if wantJWKS, _ := want.JWKS(); !bytes.Equal(keys.GetJwks(), wantJWKS) {
		t.Errorf("published JWKS %s; want key_file's %s", keys.GetJwks(), wantJWKS)
	}
	if _, err := os.Stat(filepath.Join(r.DataDir(), broker.EARDir)); !os.IsNotExist(err) {
		t.Errorf("data_dir/%s exists with key_file: %v", broker.EARDir, err)
	}
}
