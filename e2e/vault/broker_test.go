package vaulte2e

// The broker with Vault as its source: the real `keybroker serve` reads KV
// version 2 secrets from, and has PKI certificates issued by, the test
// cluster, and the real keybroker-agent on swtpm writes what it released.

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/vault"
)

// brokerVaultPolicy is the Vault ACL policy of the broker's token.
const brokerVaultPolicy = `
path "kv/data/nodes/*" { capabilities = ["read"] }
path "pki/issue/nodes" { capabilities = ["create", "update"] }
path "pki/revoke"      { capabilities = ["update"] }
`

// releasePolicy admits nodes of the ek_ca "swtpm" whose sha256 PCR 7
// holds %s, and releases a Vault secret and a Vault PKI certificate.
const releasePolicy = `policy "swtpm-nodes" {
  select {
    ek_cas = ["swtpm"]
  }
  require = [
    "pcrs.sha256[7] == '%s'",
  ]
  release "db" {
    type = "vault_kv"
    path = "kv/data/nodes/${ek_hash_short}"
    mode = "pcr_sealed"
    pcrs = [7]
  }
  release "tls" {
    type        = "vault_pki"
    path        = "pki/issue/nodes"
    common_name = "${ek_hash_short}.nodes.example.com"
    ttl         = "1h"
  }
}
`

// enableSources mounts KV version 2 at kv/ and PKI at pki/ with a root CA
// and a role "nodes" for *.nodes.example.com, and returns the root CA.
func (c *cluster) enableSources(t *testing.T) *x509.Certificate {
	t.Helper()
	sys := c.root.Sys()
	if err := sys.Mount("kv", &api.MountInput{Type: "kv", Options: map[string]string{"version": "2"}}); err != nil {
		t.Fatalf("mount kv: %v", err)
	}
	if err := sys.Mount("pki", &api.MountInput{Type: "pki", Config: api.MountConfigInput{MaxLeaseTTL: "87600h"}}); err != nil {
		t.Fatalf("mount pki: %v", err)
	}
	root, err := c.root.Logical().Write("pki/root/generate/internal", map[string]any{"common_name": "keybroker e2e root", "ttl": "87600h", "key_type": "ec"})
	if err != nil {
		t.Fatalf("generate the PKI root: %v", err)
	}
	_, err = c.root.Logical().Write("pki/roles/nodes", map[string]any{
		"allowed_domains": "nodes.example.com", "allow_subdomains": true, "max_ttl": "72h", "key_type": "ec", "key_bits": 256,
	})
	if err != nil {
		t.Fatalf("write the PKI role: %v", err)
	}
	block, _ := pem.Decode([]byte(root.Data["certificate"].(string)))
	if block == nil {
		t.Fatal("the PKI root is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// writeKV writes a KV version 2 secret, retrying while the new mount
// finishes its upgrade to version 2.
func (c *cluster) writeKV(t *testing.T, path string, data map[string]any) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := c.root.Logical().Write(path, map[string]any{"data": data})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("write %s: %v", path, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// brokerToken creates the broker's token: policy keybroker
// (brokerVaultPolicy), renewable.
func (c *cluster) brokerToken(t *testing.T) string {
	t.Helper()
	return c.brokerTokenWith(t, brokerVaultPolicy)
}

// brokerTokenWith creates the broker's token: policy keybroker, which
// policy defines, renewable.
func (c *cluster) brokerTokenWith(t *testing.T, policy string) string {
	t.Helper()
	if err := c.root.Sys().PutPolicy("keybroker", policy); err != nil {
		t.Fatal(err)
	}
	renewable := true
	s, err := c.root.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{"keybroker"}, TTL: "1h", Renewable: &renewable})
	if err != nil {
		t.Fatalf("create the broker's token: %v", err)
	}
	return s.Auth.ClientToken
}

// keybroker is a running `keybroker serve`.
type keybroker struct {
	addr   string // gRPC, 127.0.0.1:port
	caFile string // the broker's CA, for the agent's --ca
	config string // its broker.hcl
	log    *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var listeningRE = regexp.MustCompile(`msg="broker listening" addr=(127\.0\.0\.1:\d+)`)

// startKeybroker runs `keybroker serve` trusting ca's EK certificates, with
// policy, and a vault block for c logged in with token; it fails the test
// unless the broker listens.
func startKeybroker(t *testing.T, c *cluster, ca localCA, policy, token string) *keybroker {
	t.Helper()
	return startKeybrokerWith(t, c, ca, policy, token, "")
}

// startKeybrokerWith is startKeybroker with more configuration (top-level
// attributes and blocks of broker.hcl).
func startKeybrokerWith(t *testing.T, c *cluster, ca localCA, policy, token, more string) *keybroker {
	t.Helper()
	tokenFile := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startBroker(t, c, ca, policy, fmt.Sprintf("token_file = %q", tokenFile), more)
	if p.addr == "" {
		t.Fatalf("keybroker serve exited %d before serving:\n%s", p.code, p.log.String())
	}
	return p.keybroker
}

// brokerProcess is a `keybroker serve` that was started, listening or not.
type brokerProcess struct {
	*keybroker
	exited chan struct{}
	code   int // exit code, once exited is closed
}

// startBroker runs `keybroker serve` trusting ca's EK certificates, with
// policy, a vault block for c whose login is vaultAuth (token_file = … or
// an approle block), and more configuration if any. It returns once the
// broker listens (addr set) or exited.
func startBroker(t *testing.T, c *cluster, ca localCA, policy, vaultAuth, more string) *brokerProcess {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "policy.hcl"), []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`listen   = "127.0.0.1:0"
data_dir = "data"
policies = ["policy.hcl"]

ek_ca "swtpm" {
  roots         = [%q]
  intermediates = [%q]
}

vault {
  address = %q
  ca_cert = %q
  %s
}
%s
`, ca.root, ca.intermediate, c.addr, c.caFile, vaultAuth, more)
	cfgFile := filepath.Join(dir, "broker.hcl")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &brokerProcess{
		keybroker: &keybroker{caFile: filepath.Join(dir, "data", "ca", "ca.pem"), config: cfgFile, log: &lockedBuffer{}},
		exited:    make(chan struct{}),
	}
	cmd := exec.Command(bins.broker, "serve", "--config", cfgFile)
	cmd.Stdout, cmd.Stderr = p.log, p.log
	killWithParent(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		cmd.Wait()
		p.code = cmd.ProcessState.ExitCode()
		close(p.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("keybroker serve output:\n%s", p.log.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for p.addr == "" {
		select {
		case <-p.exited:
			return p
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("keybroker serve neither listening nor exited within 30s:\n%s", p.log.String())
		}
		if m := listeningRE.FindStringSubmatch(p.log.String()); m != nil {
			p.addr = m[1]
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p
}

// bootstrapArgs are the arguments of a bootstrap of n's TPM against k.
func bootstrapArgs(k *keybroker, n *node, out string) []string {
	return []string{"bootstrap", "--tpm", n.tpm.spec(), "--broker", k.addr, "--ca", k.caFile, "--out", out, "--event-log", "none"}
}

// dirFiles reads every file in dir.
func dirFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, de := range des {
		out[de.Name()] = readFile(t, filepath.Join(dir, de.Name()))
	}
	return out
}

// brokerSetup is a cluster with KV version 2 and PKI enabled for the broker
// (enableSources; root is the PKI's root CA), a swtpm node of a new local
// CA, and the node's EK hash as keybroker-agent ek-hash prints it.
func brokerSetup(t *testing.T) (c *cluster, ca localCA, n *node, ekHash string, root *x509.Certificate) {
	t.Helper()
	skipUnlessE2E(t)
	requireTools(t)
	c = startCluster(t)
	ca = newLocalCA(t)
	n = newNode(t, ca)
	ekHash = strings.TrimSpace(runAgent(t, n.home, "ek-hash", "--tpm", n.tpm.spec()).stdout)
	if len(ekHash) != 64 {
		t.Fatalf("ek-hash printed %q", ekHash)
	}
	root = c.enableSources(t)
	return c, ca, n, ekHash, root
}

// TestBrokerReleasesFromVault: `keybroker serve` with a vault block
// releases a KV version 2 secret (vault_kv, sealed to PCR 7) and a
// certificate that Vault's PKI role issued (vault_pki); the agent writes
// db.json (0600) and key.pem, cert.pem, chain.pem. With the cluster sealed
// the attestation is refused as Unavailable naming Vault, and nothing in
// the output directory changes; once unsealed, the node gets both again;
// with Vault stopped it is refused as unreachable.
func TestBrokerReleasesFromVault(t *testing.T) {
	c, ca, n, ekHash, root := brokerSetup(t)
	short := ekHash[:16]
	kvPath := "kv/data/nodes/" + short
	c.writeKV(t, kvPath, map[string]any{"user": "node", "password": "s3cret-db-password"})
	k := startKeybroker(t, c, ca, fmt.Sprintf(releasePolicy, n.pcr7), c.brokerToken(t))
	// The broker logged in and its LifetimeWatcher renewed the token
	// (it renews once right away).
	if log := k.log.String(); !regexp.MustCompile(`msg="logged in to vault" component=vault method=token ttl=\S+ renewable=true`).MatchString(log) ||
		!strings.Contains(log, `msg="vault token renewed" component=vault`) {
		t.Errorf("the broker did not log its Vault login and renewal:\n%s", log)
	}

	out := filepath.Join(t.TempDir(), "creds")
	r := runAgent(t, n.home, bootstrapArgs(k, n, out)...)
	if r.code != 0 {
		t.Fatalf("bootstrap: exit %d: %s", r.code, r.stderr)
	}
	// The secret.
	var secret struct {
		Path    string            `json:"path"`
		Version int64             `json:"version"`
		Data    map[string]string `json:"data"`
	}
	dbFile := filepath.Join(out, "db.json")
	if err := json.Unmarshal([]byte(readFile(t, dbFile)), &secret); err != nil {
		t.Fatal(err)
	}
	if secret.Path != kvPath || secret.Version != 1 || !maps.Equal(secret.Data, map[string]string{"user": "node", "password": "s3cret-db-password"}) {
		t.Errorf("db.json = %+v", secret)
	}
	if m := fileMode(t, dbFile); m != 0o600 {
		t.Errorf("db.json mode %v, want 0600", m)
	}
	if strings.Contains(r.stdout+r.stderr, "s3cret") || strings.Contains(k.log.String(), "s3cret") {
		t.Error("the secret shows in the agent's output or the broker's log")
	}
	// The certificate: Vault's PKI root issued it, for the policy's name,
	// and Vault knows its serial.
	pair, err := tls.LoadX509KeyPair(filepath.Join(out, "cert.pem"), filepath.Join(out, "key.pem"))
	if err != nil {
		t.Fatalf("key.pem and cert.pem: %v", err)
	}
	leaf := pair.Leaf
	if leaf.Subject.CommonName != short+".nodes.example.com" {
		t.Errorf("certificate CN = %q", leaf.Subject.CommonName)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: short + ".nodes.example.com"}); err != nil {
		t.Errorf("the certificate does not chain to Vault's PKI root: %v", err)
	}
	if chain := readFile(t, filepath.Join(out, "chain.pem")); !strings.Contains(chain, "BEGIN CERTIFICATE") {
		t.Errorf("chain.pem = %q", chain)
	}
	if d := time.Until(leaf.NotAfter); d > time.Hour+time.Minute || d < 50*time.Minute {
		t.Errorf("certificate valid for %v, want the policy's 1h", d)
	}
	serial := colonHex(leaf.SerialNumber.Bytes())
	if s, err := c.root.Logical().Read("pki/cert/" + serial); err != nil || s == nil {
		t.Errorf("Vault has no record of serial %s: %v", serial, err)
	}
	if m := fileMode(t, filepath.Join(out, "key.pem")); m != 0o600 {
		t.Errorf("key.pem mode %v", m)
	}

	// Vault sealed: refused, nothing changes.
	before := dirFiles(t, out)
	c.Cores[0].Seal(t)
	r = runAgent(t, n.home, bootstrapArgs(k, n, out)...)
	want := "bootstrap failed at attest: broker refused (Unavailable): release: vault unavailable (sealed or not active (503)) (receipt "
	if r.code != 1 || !strings.HasPrefix(r.stderr, want) {
		t.Errorf("bootstrap with Vault sealed: exit %d, stderr %q; want 1 and %q…", r.code, r.stderr, want)
	}
	if after := dirFiles(t, out); !maps.Equal(before, after) {
		t.Error("a refused bootstrap changed the output directory")
	}
	if !strings.Contains(k.log.String(), `msg="attestation refused"`) || !strings.Contains(k.log.String(), "check=release") {
		t.Error("the broker log has no 'attestation refused ... check=release' line")
	}

	// Unsealed: released again, the same secret version, a new certificate.
	c.UnsealCores(t)
	vault.TestWaitActive(t, c.Cores[0].Core)
	r = runAgent(t, n.home, bootstrapArgs(k, n, out)...)
	if r.code != 0 {
		t.Fatalf("bootstrap after unseal: exit %d: %s", r.code, r.stderr)
	}
	after := dirFiles(t, out)
	if after["db.json"] != before["db.json"] || after["cert.pem"] == before["cert.pem"] {
		t.Error("after unseal: want the same db.json and a new certificate")
	}

	// Vault stopped (its HTTP server and every connection to it closed):
	// refused as unreachable, nothing changes.
	if err := c.Cores[0].Server.Close(); err != nil {
		t.Fatal(err)
	}
	r = runAgent(t, n.home, bootstrapArgs(k, n, out)...)
	want = "bootstrap failed at attest: broker refused (Unavailable): release: vault unavailable (unreachable) (receipt "
	if r.code != 1 || !strings.HasPrefix(r.stderr, want) {
		t.Errorf("bootstrap with Vault stopped: exit %d, stderr %q; want 1 and %q…", r.code, r.stderr, want)
	}
	if stopped := dirFiles(t, out); !maps.Equal(after, stopped) {
		t.Error("a refused bootstrap changed the output directory")
	}
}

// TestBrokerRevokesUnreleasedCertificate: a decision whose vault_pki
// release succeeded but whose later vault_kv release Vault refuses (no such
// secret) releases nothing, and the certificate Vault issued for it is
// revoked in Vault.
func TestBrokerRevokesUnreleasedCertificate(t *testing.T) {
	c, ca, n, ekHash, _ := brokerSetup(t)
	policy := fmt.Sprintf(`policy "swtpm-nodes" {
  select {
    ek_cas = ["swtpm"]
  }
  require = ["pcrs.sha256[7] == '%s'"]
  release "a-tls" {
    type        = "vault_pki"
    path        = "pki/issue/nodes"
    common_name = "${ek_hash_short}.nodes.example.com"
  }
  release "b-db" {
    type = "vault_kv"
    path = "kv/data/nodes/missing"
  }
}
`, n.pcr7)
	k := startKeybroker(t, c, ca, policy, c.brokerToken(t))
	certs := func() []string {
		s, err := c.root.Logical().List("pki/certs")
		if err != nil || s == nil {
			t.Fatalf("list pki/certs: %v", err)
		}
		var out []string
		for _, k := range s.Data["keys"].([]any) {
			out = append(out, k.(string))
		}
		return out
	}
	before := certs()
	out := filepath.Join(t.TempDir(), "creds")
	r := runAgent(t, n.home, bootstrapArgs(k, n, out)...)
	want := "bootstrap failed at attest: broker refused (FailedPrecondition): release: vault refused the broker (not found (404))"
	if r.code != 1 || !strings.HasPrefix(r.stderr, want) {
		t.Fatalf("bootstrap: exit %d, stderr %q; want 1 and %q…", r.code, r.stderr, want)
	}
	if _, err := os.Stat(out); err == nil {
		if files := dirFiles(t, out); len(files) > 0 {
			t.Errorf("a refused bootstrap wrote %v", slices.Sorted(maps.Keys(files)))
		}
	}
	var issued []string
	for _, s := range certs() {
		if !slices.Contains(before, s) {
			issued = append(issued, s)
		}
	}
	if len(issued) != 1 {
		t.Fatalf("Vault issued %v for the refused decision; want one certificate", issued)
	}
	s, err := c.root.Logical().Read("pki/cert/" + issued[0])
	if err != nil || s == nil {
		t.Fatalf("read pki/cert/%s: %v", issued[0], err)
	}
	if rt, _ := s.Data["revocation_time"].(json.Number).Int64(); rt == 0 {
		t.Errorf("certificate %s (issued for %s…, not released) is not revoked", issued[0], ekHash[:16])
	}
	if !strings.Contains(k.log.String(), "vault certificate revoked: its decision was not released") {
		t.Error("the broker log does not say it revoked the certificate")
	}
}

// colonHex formats a serial as Vault does: lowercase hex bytes joined by
// colons.
func colonHex(b []byte) string {
	parts := make([]string, len(b))
	for i, x := range b {
		parts[i] = fmt.Sprintf("%02x", x)
	}
	return strings.Join(parts, ":")
}
