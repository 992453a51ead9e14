package vaulte2e

// The harness: binaries built from the two sibling modules, a Vault test
// cluster with the plugin registered as an operator would, agent runs, and a
// TLS proxy that can record or rewrite what passes between them.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	kv "github.com/hashicorp/vault-plugin-secrets-kv"
	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/builtin/logical/pki"
	vaulthttp "github.com/hashicorp/vault/http"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/vault"
)

const (
	pluginName   = "vault-plugin-auth-tpm"
	mount        = "tpm"
	agentTimeout = 90 * time.Second
)

// Paths of the sibling modules, relative to this one.
const (
	mainModuleDir   = "../.."
	pluginModuleDir = "../../plugins/vaultauth"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if bins.dir != "" {
		os.RemoveAll(bins.dir)
	}
	os.Exit(code)
}

// bins holds the binaries under test, built once per test binary on first
// use, so that -short runs build nothing.
var bins struct {
	once      sync.Once
	dir       string
	agent     string // keybroker-agent, from the main module
	broker    string // keybroker, from the main module
	pluginDir string // holds vault-plugin-auth-tpm, from plugins/vaultauth
	pluginSum string // its SHA-256, hex, as registered in the catalog
	err       error
}

// skipUnlessE2E skips the Vault suite under -short.
func skipUnlessE2E(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("Vault e2e (a Vault test cluster, the plugin process, swtpm); skipped with -short")
	}
}

// binaries builds keybroker-agent, keybroker and the plugin once.
func binaries(t *testing.T) {
	t.Helper()
	bins.once.Do(func() {
		start := time.Now()
		bins.err = buildBinaries()
		if bins.err == nil {
			t.Logf("built keybroker-agent, keybroker and %s in %v", pluginName, time.Since(start).Round(time.Millisecond))
		}
	})
	if bins.err != nil {
		t.Fatal(bins.err)
	}
}

func buildBinaries() error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("go not on PATH: %w", err)
	}
	dir, err := os.MkdirTemp("", "keybroker-vault-e2e-bin-")
	if err != nil {
		return err
	}
	bins.dir = dir
	bins.pluginDir = filepath.Join(dir, "plugins")
	if err := os.Mkdir(bins.pluginDir, 0o755); err != nil {
		return err
	}
	for _, b := range []struct{ moduleDir, pkg, out string }{
		{mainModuleDir, "./cmd/keybroker-agent", filepath.Join(dir, "keybroker-agent")},
		{mainModuleDir, "./cmd/keybroker", filepath.Join(dir, "keybroker")},
		{pluginModuleDir, "./cmd/" + pluginName, filepath.Join(bins.pluginDir, pluginName)},
	} {
		cmd := exec.Command(goBin, "build", "-o", b.out, b.pkg)
		cmd.Dir = b.moduleDir
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build %s in %s: %v\n%s", b.pkg, b.moduleDir, err, out.String())
		}
	}
	bins.agent = filepath.Join(dir, "keybroker-agent")
	bins.broker = filepath.Join(dir, "keybroker")
	bin, err := os.ReadFile(filepath.Join(bins.pluginDir, pluginName))
	if err != nil {
		return err
	}
	sum := sha256.Sum256(bin)
	bins.pluginSum = hex.EncodeToString(sum[:])
	return nil
}

// cluster is a one-core Vault test cluster: the real Vault core and HTTP
// API over TLS on loopback, in this process, with external plugins run as
// their own processes from bins.pluginDir, and the KV (version 1 and 2)
// and PKI secrets engines that Vault ships built in.
type cluster struct {
	*vault.TestCluster
	root    *api.Client // root token
	addr    string      // https://127.0.0.1:port
	caFile  string      // PEM bundle that verifies addr
	logFile string
}

// startCluster starts a one-core cluster whose log goes to a file, shown
// when the test fails.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	start := time.Now()
	cl := startCores(t, 1)
	t.Logf("Vault test cluster up in %v at %s", time.Since(start).Round(time.Millisecond), cl.addr)
	return cl
}

// startCores starts a cluster of n cores sharing one storage, logging to a
// file shown when the test fails; its root client talks to core 0.
func startCores(t *testing.T, n int) *cluster {
	t.Helper()
	binaries(t)
	logFile := filepath.Join(t.TempDir(), "vault.log")
	f, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "vault", Level: hclog.Info, Output: f})
	c := vault.NewTestCluster(t, &vault.CoreConfig{
		PluginDirectory: bins.pluginDir,
		LogicalBackends: map[string]logical.Factory{"kv": kv.Factory, "pki": pki.Factory},
	},
		&vault.TestClusterOptions{HandlerFunc: vaulthttp.Handler, NumCores: n, Logger: logger})
	c.Start()
	t.Cleanup(func() {
		c.Cleanup()
		f.Close()
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("Vault log (last 60 lines):\n%s", tail(logFile, 60))
		}
	})
	return &cluster{TestCluster: c, root: c.Cores[0].Client, addr: c.Cores[0].Client.Address(), caFile: c.CACertPEMFile, logFile: logFile}
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// enablePlugin registers the plugin in the catalog with its SHA-256 and
// enables it at auth/tpm, as an operator does with `vault plugin register
// -sha256=... auth vault-plugin-auth-tpm` and `vault auth enable
// -path=tpm vault-plugin-auth-tpm`.
func (c *cluster) enablePlugin(t *testing.T) {
	t.Helper()
	err := c.root.Sys().RegisterPlugin(&api.RegisterPluginInput{
		Name:    pluginName,
		Type:    api.PluginTypeCredential,
		Command: pluginName,
		SHA256:  bins.pluginSum,
	})
	if err != nil {
		t.Fatalf("register plugin: %v", err)
	}
	if err := c.root.Sys().EnableAuthWithOptions(mount, &api.EnableAuthOptions{Type: pluginName}); err != nil {
		t.Fatalf("enable auth %s: %v", mount, err)
	}
}

// configure trusts the EK certificates that cas signed (each as an ek_ca
// entry named after its key).
func (c *cluster) configure(t *testing.T, cas map[string]localCA) {
	t.Helper()
	ekCA := map[string]any{}
	for name, ca := range cas {
		ekCA[name] = map[string]any{"roots": readFile(t, ca.root), "intermediates": readFile(t, ca.intermediate)}
	}
	if _, err := c.root.Logical().Write("auth/"+mount+"/config", map[string]any{"ek_ca": ekCA}); err != nil {
		t.Fatalf("write config: %v", err)
	}
}

// rolePolicy admits nodes whose EK chains to the ek_ca "swtpm" and whose
// sha256 PCR 7 holds pcr7 (hex).
const rolePolicy = `policy "swtpm-nodes" {
  select {
    ek_cas = ["swtpm"]
  }
  require = [
    "pcrs.sha256[7] == '%s'",
  ]
}
`

// vaultPolicy is the Vault ACL policy the role's tokens carry.
const vaultPolicy = `path "secret/data/nodes/*" { capabilities = ["read"] }`

// writeRole creates Vault policy "node-read" and role name, whose tokens
// carry it, with extra role fields.
func (c *cluster) writeRole(t *testing.T, name, pcr7 string, extra map[string]any) {
	t.Helper()
	if err := c.root.Sys().PutPolicy("node-read", vaultPolicy); err != nil {
		t.Fatal(err)
	}
	data := map[string]any{
		"policy":         fmt.Sprintf(rolePolicy, pcr7),
		"token_policies": "node-read",
		"token_ttl":      "1h",
	}
	for k, v := range extra {
		data[k] = v
	}
	if _, err := c.root.Logical().Write("auth/"+mount+"/role/"+name, data); err != nil {
		t.Fatalf("write role %s: %v", name, err)
	}
}

// accessors lists the accessors of every token in the cluster.
func (c *cluster) accessors(t *testing.T) []string {
	t.Helper()
	s, err := c.root.Logical().List("auth/token/accessors")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	if s != nil {
		keys, _ := s.Data["keys"].([]any)
		for _, k := range keys {
			out = append(out, k.(string))
		}
	}
	return out
}

// tokenClient is a client of the cluster holding token.
func (c *cluster) tokenClient(t *testing.T, token string) *api.Client {
	t.Helper()
	cl, err := c.root.Clone()
	if err != nil {
		t.Fatal(err)
	}
	cl.SetToken(token)
	return cl
}

// unauthenticated is a client of the cluster with no token.
func (c *cluster) unauthenticated(t *testing.T) *api.Client {
	t.Helper()
	cl := c.tokenClient(t, "")
	cl.ClearToken()
	return cl
}

// sealAndUnseal seals the core and unseals it with the cluster's keys:
// mounts, plugins and caches are torn down and set up again from storage.
func (c *cluster) sealAndUnseal(t *testing.T) {
	t.Helper()
	c.Cores[0].Seal(t)
	if !c.Cores[0].Sealed() {
		t.Fatal("the core is not sealed")
	}
	c.UnsealCores(t)
	vault.TestWaitActive(t, c.Cores[0].Core)
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// agentRun is a finished keybroker-agent run.
type agentRun struct {
	code           int
	stdout, stderr string
}

// runAgent runs keybroker-agent with args and an environment holding only
// PATH and HOME (home).
func runAgent(t *testing.T, home string, args ...string) agentRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), agentTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.agent, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	killWithParent(cmd)
	err := cmd.Run()
	r := agentRun{stdout: stdout.String(), stderr: stderr.String()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("keybroker-agent %v: %v", args, err)
		}
		r.code = ee.ExitCode()
	}
	t.Logf("keybroker-agent %s → exit %d\n%s%s", strings.Join(args, " "), r.code, redact(r.stdout), r.stderr)
	return r
}

// redact hides the tokens in vault-login's JSON output.
func redact(s string) string {
	return tokenJSON.ReplaceAllString(s, `"client_token": "(redacted)"`)
}

var tokenJSON = regexp.MustCompile(`"client_token": *"[^"]*"`)

// vaultLoginArgs are the arguments of a vault-login on tpm against addr.
func vaultLoginArgs(addr, caFile string, tpm *swtpm, role string, more ...string) []string {
	return append([]string{"vault-login", "--vault-addr", addr, "--ca-cert", caFile, "--tpm", tpm.spec(),
		"--role", role, "--event-log", "none"}, more...)
}

// loginOutput is what vault-login -format=json prints.
type loginOutput struct {
	Auth      api.SecretAuth `json:"auth"`
	Unwrapped bool           `json:"unwrapped"`
	TokenFile string         `json:"token_file"`
}

func parseLoginOutput(t *testing.T, r agentRun) loginOutput {
	t.Helper()
	var out loginOutput
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("vault-login -format=json printed %q: %v", r.stdout, err)
	}
	return out
}

// exchange is one request through a proxy and Vault's answer.
type exchange struct {
	path     string // without /v1/
	request  []byte
	status   int
	response []byte
}

// proxy is a TLS server of its own between the agent and Vault. Each
// exchange is recorded as Vault answered it, then goes through rewrite (if
// set) before the agent sees it. rewrite runs under the proxy's lock: what
// it captures may be read once setRewrite or last returned.
type proxy struct {
	url    string
	caFile string

	mu        sync.Mutex
	exchanges []exchange
	rewrite   func(e *exchange)
}

func startProxy(t *testing.T, c *cluster) *proxy {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(readFile(t, c.caFile))) {
		t.Fatal("the cluster CA file holds no certificate")
	}
	upstream := &http.Client{
		// No timeout of its own: the agent's request context bounds each
		// exchange (a plugin's first request starts its process, which is
		// slow on a loaded 2-core machine).
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}
	p := &proxy{}
	p.url, p.caFile = serveTLS(t, "proxy", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		req, err := http.NewRequestWithContext(r.Context(), r.Method, c.addr+r.URL.RequestURI(), bytes.NewReader(body))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		req.Header = r.Header.Clone()
		resp, err := upstream.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		respBody, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		e := exchange{path: strings.TrimPrefix(r.URL.Path, "/v1/"), request: body, status: resp.StatusCode, response: respBody}
		p.mu.Lock()
		p.exchanges = append(p.exchanges, e)
		if p.rewrite != nil {
			p.rewrite(&e)
		}
		p.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(e.status)
		w.Write(e.response)
	})
	return p
}

// serveTLS serves handler over TLS on loopback with a certificate of its
// own until the test ends, and returns its URL and a PEM file (named after
// name) that verifies it.
func serveTLS(t *testing.T, name string, handler http.HandlerFunc) (url, caFile string) {
	t.Helper()
	srv := httptest.NewUnstartedServer(handler)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caFile = filepath.Join(t.TempDir(), name+"-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv.URL, caFile
}

func (p *proxy) setRewrite(f func(e *exchange)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rewrite = f
}

// reached reports whether any request went to path.
func (p *proxy) reached(path string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.exchanges {
		if e.path == path {
			return true
		}
	}
	return false
}

// last returns the last exchange on path.
func (p *proxy) last(t *testing.T, path string) exchange {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.exchanges) - 1; i >= 0; i-- {
		if p.exchanges[i].path == path {
			return p.exchanges[i]
		}
	}
	t.Fatalf("no request to %s went through the proxy", path)
	return exchange{}
}

// fileMode returns path's permission bits.
func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// grepLog reports whether the Vault log has a line holding every one of
// words.
func grepLog(path string, words ...string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
lines:
	for sc.Scan() {
		for _, w := range words {
			if !strings.Contains(sc.Text(), w) {
				continue lines
			}
		}
		return true
	}
	return false
}
