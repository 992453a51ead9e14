package agent_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/ear"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/brokertest"
	"github.com/keybroker/keybroker/policies"
)

// TestBootstrapWritesAttestationResult: with a relying party's nonce and a
// result file, Bootstrap writes the broker's attestation result (0600)
// with the credentials, and it verifies with the broker's JWKS for that
// nonce. A broker that issues no result fails the bootstrap at attest,
// writing nothing.
func TestBootstrapWritesAttestationResult(t *testing.T) {
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
	env := brokertest.New(t, brokertest.Opts{Server: func(o *broker.ServerOpts) { o.Results = signer }})
	dir := t.TempDir()
	out, resultFile := filepath.Join(dir, "tls"), filepath.Join(dir, "result.jwt")
	nonce := []byte("relying-party-0001")
	ctx := context.Background()

	res, err := agent.Bootstrap(ctx, direct{srv: env.Server}, env.Node, agent.BootstrapOpts{OutDir: out, RelyingPartyNonce: nonce, ResultFile: resultFile})
	if err != nil {
		t.Fatalf("Bootstrap: %v", err)
	}
	b, err := os.ReadFile(resultFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(resultFile); fi.Mode().Perm() != 0o600 {
		t.Errorf("result file mode %v; want 0600", fi.Mode().Perm())
	}
	token := strings.TrimSuffix(string(b), "\n")
	if token != res.AttestationResult {
		t.Fatal("the result file is not the result Bootstrap returned")
	}
	r, err := ear.Verify(token, jwks, ear.VerifyOpts{Nonce: nonce, Now: env.Clock})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if r.ReceiptID != res.ReceiptID || r.EKHash != env.EKHash {
		t.Errorf("result names receipt %s, EK %s; want %s, %s", r.ReceiptID, r.EKHash, res.ReceiptID, env.EKHash)
	}

	// The same node and store, a server without a result key (one
	// simulator per process: no second Env).
	pol, err := policies.Parse([]byte(env.PolicySource), "p.hcl")
	if err != nil {
		t.Fatal(err)
	}
	plain, err := broker.NewServer(broker.ServerOpts{Verify: verify.Opts{Trust: verify.Trust{EKHashes: []string{env.EKHash}}}, Store: env.Store, CA: env.CA, Policies: pol})
	if err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(t.TempDir(), "tls")
	emptyResult := filepath.Join(filepath.Dir(empty), "result.jwt")
	_, err = agent.Bootstrap(ctx, direct{srv: plain}, env.Node, agent.BootstrapOpts{OutDir: empty, ResultFile: emptyResult})
	var se *agent.StepError
	if !errors.As(err, &se) || se.Step != agent.StepAttest || !strings.Contains(err.Error(), "the broker returned no attestation result") {
		t.Fatalf("Bootstrap from a broker without results = %v; want a failure at attest", err)
	}
	for _, p := range []string{empty, emptyResult} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s written after the failure: %v", p, err)
		}
	}
}
