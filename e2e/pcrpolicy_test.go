package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/internal/swtpmtest"
)

// startAuthorized starts swtpm, measured as bootMeasured does, and a
// broker whose TLS release is pcr_sealed with pcr_policy "authorized".
func startAuthorized(t *testing.T) (*swtpmtest.TPM, *pcrs, *brokerProc) {
	t.Helper()
	skipUnlessE2E(t)
	t.Parallel()
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	p := bootMeasured(t, tpm)
	policy := strings.Replace(sealedPolicy(p), "    pcrs        = [0, 7]\n", "    pcrs        = [0, 7]\n    pcr_policy  = \"authorized\"\n", 1)
	if !strings.Contains(policy, "pcr_policy") {
		t.Fatal("the policy has no pcr_policy")
	}
	// A key file of its own, as every replica of an etcd store needs
	// (make test-etcd runs this on etcd).
	return tpm, p, startBroker(t, brokerOpts{ekCAs: []ekCA{swtpmCA(tpm)}, policy: policy,
		extra: fmt.Sprintf("pcr_policy {\n  key_file = %q\n}\n", pcrPolicyKeyFile(t))})
}

// pcrPolicyKeyFile writes a fresh P-256 PCR-policy signing key (PKCS #8
// PEM, mode 0600) and returns its path.
func pcrPolicyKeyFile(t *testing.T) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "pcr-policy.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// pcr_policy "authorized" across processes on swtpm: the agent defines its
// policy counter, the operator approves an update's state through the
// running broker's admin socket, the next attestation brings the approval,
// and after a reboot into the updated state reopen opens the cached
// credentials with the broker gone; a state nobody approved does not.
func TestAuthorizedUpdateOnSWTPM(t *testing.T) {
	tpm, p, b := startAuthorized(t)
	out, cache := filepath.Join(t.TempDir(), "tls"), filepath.Join(t.TempDir(), "cache")
	counter := []string{"--cache", cache, "--pcr-policy-counter", "default"}

	// Without a counter the release is refused, and says why.
	r := bootstrap(t, tpm, b, filepath.Join(t.TempDir(), "none"))
	wantExit(t, r, 1)
	wantContains(t, "bootstrap stderr", r.stderr, `is pcr_policy "authorized" and the node reported no policy counter`)

	wantBootstrapped(t, bootstrap(t, tpm, b, out, counter...), "PCR_SEALED")
	r = keybroker(t, "pcr-policy", "keys", "--config", b.configFile)
	wantExit(t, r, 0)
	wantContains(t, "pcr-policy keys", r.stdout, "-----BEGIN PUBLIC KEY-----")

	// The update's state: PCR 7 extended with the dbx update.
	ev := sha256.Sum256([]byte("e2e dbx update"))
	next := sha256.Sum256(append(append([]byte(nil), p.values[7]...), ev[:]...))
	r = keybroker(t, "pcr-policy", "approve", "--config", b.configFile, "--pcr", "0="+p.value(0), "--pcr", "7="+hex.EncodeToString(next[:]), "--note", "dbx")
	wantExit(t, r, 0)
	wantContains(t, "pcr-policy approve", r.stdout, "approved: state ")
	wantBootstrapped(t, bootstrap(t, tpm, b, out, counter...), "PCR_SEALED")
	if code := b.stop(t); code != 0 {
		t.Fatalf("broker exit %d", code)
	}

	reopen := func(t *testing.T) result {
		t.Helper()
		return agent(t, "reopen", "--tpm", "tcp://"+tpm.Addr, "--cache", cache, "--out", filepath.Join(t.TempDir(), "tls"))
	}
	tpm.Reset(t)
	updated := bootMeasured(t, tpm)
	updated.measure(t, 7, "e2e dbx update")
	r = reopen(t)
	wantExit(t, r, 0)
	wantContains(t, "reopen stdout", r.stdout, "reopened receipt ")

	tpm.Reset(t)
	other := bootMeasured(t, tpm)
	other.measure(t, 7, "e2e an update nobody approved")
	r = reopen(t)
	wantExit(t, r, 1)
	wantContains(t, "reopen stderr", r.stderr, "the broker has approved none the TPM holds now")
}

// Revocation across processes on swtpm: the operator approves a state S1,
// the node's attestation brings the approval, the operator revokes S1, the
// node reboots into S1 and attests — the policy refuses it, and the
// refusal still has the agent advance its counter and delete its cached
// approvals — and reopen in S1 fails, also with the approvals of before
// the revocation put back.
func TestAuthorizedRevocationOnSWTPM(t *testing.T) {
	tpm, p, b := startAuthorized(t)
	out, cache := filepath.Join(t.TempDir(), "tls"), filepath.Join(t.TempDir(), "cache")
	counter := []string{"--cache", cache, "--pcr-policy-counter", "default"}
	wantBootstrapped(t, bootstrap(t, tpm, b, out, counter...), "PCR_SEALED")

	ev := sha256.Sum256([]byte("e2e kernel update"))
	s1 := sha256.Sum256(append(append([]byte(nil), p.values[7]...), ev[:]...))
	state := []string{"--pcr", "0=" + p.value(0), "--pcr", "7=" + hex.EncodeToString(s1[:])}
	r := keybroker(t, append([]string{"pcr-policy", "approve", "--config", b.configFile}, state...)...)
	wantExit(t, r, 0)
	wantBootstrapped(t, bootstrap(t, tpm, b, out, counter...), "PCR_SEALED")
	approvals := filepath.Join(cache, "pcr-approvals.json")
	before, err := os.ReadFile(approvals)
	if err != nil {
		t.Fatal(err)
	}
	r = keybroker(t, append([]string{"pcr-policy", "revoke", "--config", b.configFile}, state...)...)
	wantExit(t, r, 0)
	wantContains(t, "pcr-policy revoke", r.stdout, "revoked: state ")

	tpm.Reset(t)
	inS1 := bootMeasured(t, tpm)
	inS1.measure(t, 7, "e2e kernel update")
	r = bootstrap(t, tpm, b, out, counter...)
	wantExit(t, r, 1)
	wantContains(t, "bootstrap stderr", r.stderr, "no policy allows this node")
	if _, err := os.Stat(approvals); !os.IsNotExist(err) {
		t.Fatalf("approvals after the refusal: %v; want them deleted", err)
	}
	if code := b.stop(t); code != 0 {
		t.Fatalf("broker exit %d", code)
	}
	reopen := func() result {
		return agent(t, "reopen", "--tpm", "tcp://"+tpm.Addr, "--cache", cache, "--out", filepath.Join(t.TempDir(), "tls"))
	}
	r = reopen()
	wantExit(t, r, 1)
	wantContains(t, "reopen stderr", r.stderr, "the broker has approved none the TPM holds now")
	if err := os.WriteFile(approvals, before, 0o600); err != nil {
		t.Fatal(err)
	}
	r = reopen()
	wantExit(t, r, 1)
	wantContains(t, "reopen stderr", r.stderr, "refused its PCR-policy approval")
}
