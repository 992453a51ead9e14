package e2e

// The Kubernetes suite: a real kube-apiserver on a real etcd, the broker
// releasing kubelet credentials, the agent on swtpm writing the kubeconfig.
// The kube-apiserver binary is built from the module proxy by `make
// e2e-kubernetes` (module e2e/kube), which names it in
// KEYBROKER_KUBE_APISERVER; without that variable the suite is skipped.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/internal/etcdtest"
	"github.com/keybroker/keybroker/internal/swtpmtest"
)

// KubeAPIServerEnv names the kube-apiserver binary the suite runs.
const KubeAPIServerEnv = "KEYBROKER_KUBE_APISERVER"

const kubeReadyTimeout = 90 * time.Second

// kubeCluster is a running kube-apiserver with the Node authorizer and
// NodeRestriction, trusting kubeletCA and adminCA for client certificates.
type kubeCluster struct {
	url       string // https://127.0.0.1:port
	caFile    string // verifies the API server
	kubeletCA string // dir of the CA (ca.pem, ca-key.pem) the broker signs kubelets with
	admin     *http.Client
	log       *syncBuffer
	// brokerToken is a file holding the bearer token of user
	// keybroker-broker (a static token), for the broker's own requests.
	brokerToken string
	// adminKubeconfig is a kubeconfig for the admin (system:masters);
	// servingCA the API server's CA, PEM.
	adminKubeconfig string
	servingCA       []byte
}

// startKube starts kube-apiserver on a fresh etcd. It skips the test when
// KEYBROKER_KUBE_APISERVER is unset.
func startKube(t *testing.T) *kubeCluster {
	t.Helper()
	bin := os.Getenv(KubeAPIServerEnv)
	if bin == "" {
		t.Skipf("%s is not set: run make e2e-kubernetes", KubeAPIServerEnv)
	}
	etcd := etcdtest.Start(t, etcdtest.Opts{})
	dir := t.TempDir()
	serving, err := issue.LoadOrCreateCA(filepath.Join(dir, "serving-ca"), issue.CAOpts{CommonName: "e2e cluster"})
	if err != nil {
		t.Fatal(err)
	}
	kubeletCA := filepath.Join(dir, "kubelet-ca")
	kubelets, err := issue.LoadOrCreateCA(kubeletCA, issue.CAOpts{CommonName: "e2e kubelet clients"})
	if err != nil {
		t.Fatal(err)
	}
	admins, err := issue.LoadOrCreateCA(filepath.Join(dir, "admin-ca"), issue.CAOpts{CommonName: "e2e admins"})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := serving.IssueTLS(issue.TLSTemplate{CommonName: "kube-apiserver", DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "serving.pem"), string(cert.CertificatePEM)+string(cert.ChainPEM))
	writeFile(t, filepath.Join(dir, "serving-key.pem"), string(cert.KeyPEM))
	writeFile(t, filepath.Join(dir, "client-ca.pem"), string(kubelets.BundlePEM())+string(admins.BundlePEM()))
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	saDER, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		t.Fatal(err)
	}
	saPub, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "sa.key"), string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: saDER})))
	writeFile(t, filepath.Join(dir, "sa.pub"), string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub})))

	token := make([]byte, 16)
	if _, err := rand.Read(token); err != nil {
		t.Fatal(err)
	}
	brokerToken := fmt.Sprintf("%x", token)
	writeFile(t, filepath.Join(dir, "tokens.csv"), brokerToken+",keybroker-broker,keybroker-broker-uid\n")
	writeFile(t, filepath.Join(dir, "broker-token"), brokerToken+"\n")

	port := freePort(t)
	k := &kubeCluster{url: "https://127.0.0.1:" + strconv.Itoa(port), caFile: filepath.Join(dir, "serving-ca", issue.CACertFile),
		kubeletCA: kubeletCA, log: &syncBuffer{}, brokerToken: filepath.Join(dir, "broker-token")}
	cmd := exec.Command(bin,
		"--etcd-servers="+strings.Join(etcd.Endpoints(), ","),
		"--bind-address=127.0.0.1", "--endpoint-reconciler-type=none", "--secure-port="+strconv.Itoa(port),
		"--tls-cert-file="+filepath.Join(dir, "serving.pem"), "--tls-private-key-file="+filepath.Join(dir, "serving-key.pem"),
		"--client-ca-file="+filepath.Join(dir, "client-ca.pem"), "--token-auth-file="+filepath.Join(dir, "tokens.csv"),
		"--service-account-key-file="+filepath.Join(dir, "sa.pub"), "--service-account-signing-key-file="+filepath.Join(dir, "sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc", "--service-cluster-ip-range=10.0.0.0/24",
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction", "--enable-bootstrap-token-auth",
		"--cert-dir="+filepath.Join(dir, "certs"))
	exited := startProc(t, "kube-apiserver", cmd, k.log)

	adminCert, err := admins.IssueTLS(issue.TLSTemplate{CommonName: "e2e-admin", Organization: []string{"system:masters"}, Client: true, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(adminCert.CertificatePEM, adminCert.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	k.admin = kubeClient(t, serving.BundlePEM(), pair)
	k.servingCA = serving.BundlePEM()
	k.adminKubeconfig = filepath.Join(dir, "admin.kubeconfig")
	adminDoc, err := json.Marshal(map[string]any{
		"apiVersion": "v1", "kind": "Config", "current-context": "admin",
		"clusters": []any{map[string]any{"name": "e2e", "cluster": map[string]any{"server": k.url, "certificate-authority-data": serving.BundlePEM()}}},
		"users": []any{map[string]any{"name": "admin", "user": map[string]any{
			"client-certificate-data": append(append([]byte{}, adminCert.CertificatePEM...), adminCert.ChainPEM...), "client-key-data": adminCert.KeyPEM}}},
		"contexts": []any{map[string]any{"name": "admin", "context": map[string]any{"cluster": "e2e", "user": "admin"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, k.adminKubeconfig, string(adminDoc))
	start := time.Now()
	for {
		code, body, err := k.do(k.admin, http.MethodGet, "/readyz", nil)
		if err == nil && code == http.StatusOK {
			break
		}
		select {
		case <-exited:
			t.Fatalf("kube-apiserver exited: %s", lastLines(k.log.String(), 40))
		default:
		}
		if time.Since(start) > kubeReadyTimeout {
			t.Fatalf("kube-apiserver not ready after %v: %d %s %v", kubeReadyTimeout, code, body, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("kube-apiserver ready on %s in %v", k.url, time.Since(start).Round(time.Millisecond))
	return k
}

// kubeClient is an HTTPS client that trusts caPEM and presents cert.
func kubeClient(t *testing.T, caPEM []byte, cert tls.Certificate) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("no CA certificate")
	}
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}}
}

// do sends a JSON request to the API server and returns the status and
// body.
func (k *kubeCluster) do(c *http.Client, method, path string, body any) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		r = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, k.url+path, r)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, out, err
}

// kubeconfigClient reads the kubeconfig the agent wrote and returns a
// client made only from it: the server, its CA, the client certificate.
func kubeconfigClient(t *testing.T, path string) (server string, c *http.Client) {
	t.Helper()
	var doc struct {
		Clusters []struct {
			Cluster struct {
				Server string `json:"server"`
				CAData []byte `json:"certificate-authority-data"`
			} `json:"cluster"`
		} `json:"clusters"`
		Users []struct {
			User struct {
				Cert string `json:"client-certificate"`
				Key  string `json:"client-key"`
			} `json:"user"`
		} `json:"users"`
	}
	if err := json.Unmarshal(readFile(t, path), &doc); err != nil || len(doc.Clusters) != 1 || len(doc.Users) != 1 {
		t.Fatalf("kubeconfig %s: %v", path, err)
	}
	pair, err := tls.LoadX509KeyPair(doc.Users[0].User.Cert, doc.Users[0].User.Key)
	if err != nil {
		t.Fatalf("kubeconfig client certificate: %v", err)
	}
	return doc.Clusters[0].Cluster.Server, kubeClient(t, doc.Clusters[0].Cluster.CAData, pair)
}

// kubeletPolicy releases a kubelet credential sealed to PCR 0 and 7 to
// nodes with swtpm's EK CA in the state p measured.
func kubeletPolicy(p *pcrs) string {
	return fmt.Sprintf(`policy "workers" {
  select { ek_cas = ["swtpm"] }
  require = [%q, %q]
  release "kubelet" {
    type      = "kubelet"
    mode      = "pcr_sealed"
    pcrs      = [0, 7]
    ttl       = "1h"
    node_name = "node-${ek_hash_short}"
  }
}
`, "pcrs.sha256[0] == '"+p.value(0)+"'", "pcrs.sha256[7] == '"+p.value(7)+"'")
}

// An attested node's kubelet credential authenticates to a real
// kube-apiserver as system:node:<name> in system:nodes, may create its own
// Node object and not another node's; a node whose boot changed gets no
// credential.
func TestKubernetesKubeletJoin(t *testing.T) {
	skipUnlessE2E(t)
	kube := startKube(t)
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	p := bootMeasured(t, tpm)
	ekHash := ekHashOf(t, tpm)
	b := startBroker(t, brokerOpts{ekCAs: []ekCA{swtpmCA(tpm)}, policy: kubeletPolicy(p),
		extra: fmt.Sprintf("kubernetes {\n  server = %q\n  ca_cert = %q\n  client_ca_cert = %q\n  client_ca_key = %q\n}\n",
			kube.url, kube.caFile, filepath.Join(kube.kubeletCA, issue.CACertFile), filepath.Join(kube.kubeletCA, issue.CAKeyFile))})

	out := filepath.Join(t.TempDir(), "pki")
	kubeconfig := filepath.Join(t.TempDir(), "kubelet", "kubelet.conf")
	wantExit(t, bootstrap(t, tpm, b, out, "--kubeconfig", kubeconfig), 0)
	for _, f := range []string{kubeconfig, filepath.Join(out, "kubelet-client.pem")} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v (want mode 0600)", f, err)
		}
	}
	server, kubelet := kubeconfigClient(t, kubeconfig)
	if server != kube.url {
		t.Fatalf("kubeconfig server %q, want %q", server, kube.url)
	}
	nodeName := "node-" + ekHash[:16]

	// Who the API server says the kubelet is.
	if user, groups := kube.whoami(t, kubelet); user != "system:node:"+nodeName || !slices.Contains(groups, "system:nodes") {
		t.Fatalf("the kubelet is %q in %v, want system:node:%s in system:nodes", user, groups, nodeName)
	}

	// Its own Node object: yes; another node's: no (Node authorizer and
	// NodeRestriction).
	node := func(name string) map[string]any {
		return map[string]any{"apiVersion": "v1", "kind": "Node", "metadata": map[string]any{"name": name}}
	}
	if code, body, err := kube.do(kubelet, http.MethodPost, "/api/v1/nodes", node(nodeName)); err != nil || code != http.StatusCreated {
		t.Fatalf("creating its own Node: %d %s %v", code, body, err)
	}
	if code, body, err := kube.do(kubelet, http.MethodPost, "/api/v1/nodes", node("node-someone-else")); err != nil || code != http.StatusForbidden {
		t.Fatalf("creating another node's Node: %d %s %v; want 403", code, body, err)
	}
	if code, body, err := kube.do(kube.admin, http.MethodGet, "/api/v1/nodes/"+nodeName, nil); err != nil || code != http.StatusOK {
		t.Fatalf("the Node as the admin sees it: %d %s %v", code, body, err)
	}
	if code, _, _ := kube.do(kube.admin, http.MethodGet, "/api/v1/nodes/node-someone-else", nil); code != http.StatusNotFound {
		t.Errorf("another node's Node exists: %d", code)
	}

	// The boot changes: the broker refuses, nothing new is written.
	clientFile := filepath.Join(out, "kubelet-client.pem")
	clientBefore, kubeconfigBefore := readFile(t, clientFile), readFile(t, kubeconfig)
	p.measure(t, 7, "unknown bootloader")
	r := bootstrap(t, tpm, b, out, "--kubeconfig", kubeconfig)
	wantExit(t, r, 1)
	wantContains(t, "refused bootstrap", r.stderr, "policy")
	if !bytes.Equal(clientBefore, readFile(t, clientFile)) || !bytes.Equal(kubeconfigBefore, readFile(t, kubeconfig)) {
		t.Error("a refused bootstrap changed the kubelet's files")
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// quarantineRBAC lets user keybroker-broker read and update Node objects:
// all the broker's quarantine needs.
func (k *kubeCluster) quarantineRBAC(t *testing.T) {
	t.Helper()
	for path, obj := range map[string]map[string]any{
		"/apis/rbac.authorization.k8s.io/v1/clusterroles": {
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
			"metadata": map[string]any{"name": "keybroker-quarantine"},
			"rules":    []any{map[string]any{"apiGroups": []string{""}, "resources": []string{"nodes"}, "verbs": []string{"get", "update"}}},
		},
		"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings": {
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
			"metadata": map[string]any{"name": "keybroker-quarantine"},
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "keybroker-quarantine"},
			"subjects": []any{map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "keybroker-broker"}},
		},
	} {
		if code, body, err := k.do(k.admin, http.MethodPost, path, obj); err != nil || code != http.StatusCreated {
			t.Fatalf("POST %s: %d %s %v", path, code, body, err)
		}
	}
}

// nodeTaints returns the taints of Node name, as the admin reads them.
func (k *kubeCluster) nodeTaints(t *testing.T, name string) []map[string]any {
	t.Helper()
	code, body, err := k.do(k.admin, http.MethodGet, "/api/v1/nodes/"+name, nil)
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET node %s: %d %s %v", name, code, body, err)
	}
	var n struct {
		Spec struct {
			Taints []map[string]any `json:"taints"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(body, &n); err != nil {
		t.Fatal(err)
	}
	return n.Spec.Taints
}

// hasTaint reports whether taints hold key with effect (and value, if not
// empty).
func hasTaint(taints []map[string]any, key, value, effect string) bool {
	return slices.ContainsFunc(taints, func(m map[string]any) bool {
		v, _ := m["value"].(string)
		return m["key"] == key && m["effect"] == effect && (value == "" || v == value)
	})
}

// Quarantine: a node admitted with a kubelet release with quarantine is
// refused after its boot changed, and the broker taints its Node object
// (keeping the taints others put there); once the operator approves the new
// state and the node attests again, the taint is gone. Both receipts say
// what was done.
func TestKubernetesQuarantine(t *testing.T) {
	skipUnlessE2E(t)
	kube := startKube(t)
	kube.quarantineRBAC(t)
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	p := bootMeasured(t, tpm)
	ekHash := ekHashOf(t, tpm)
	quarantined := strings.Replace(kubeletPolicy(p), `node_name = "node-${ek_hash_short}"`, `node_name = "node-${ek_hash_short}"
    quarantine = true`, 1)
	b := startBroker(t, brokerOpts{ekCAs: []ekCA{swtpmCA(tpm)}, policy: quarantined,
		extra: fmt.Sprintf("kubernetes {\n  server = %q\n  ca_cert = %q\n  client_ca_cert = %q\n  client_ca_key = %q\n  token_file = %q\n}\n",
			kube.url, kube.caFile, filepath.Join(kube.kubeletCA, issue.CACertFile), filepath.Join(kube.kubeletCA, issue.CAKeyFile), kube.brokerToken)})
	out := filepath.Join(t.TempDir(), "pki")
	kubeconfig := filepath.Join(out, "kubelet.kubeconfig")
	wantExit(t, bootstrap(t, tpm, b, out), 0)
	nodeName := "node-" + ekHash[:16]
	_, kubelet := kubeconfigClient(t, kubeconfig)
	node := map[string]any{"apiVersion": "v1", "kind": "Node", "metadata": map[string]any{"name": nodeName},
		"spec": map[string]any{"taints": []any{map[string]any{"key": "example.com/maintenance", "value": "soon", "effect": "NoSchedule"}}}}
	if code, body, err := kube.do(kubelet, http.MethodPost, "/api/v1/nodes", node); err != nil || code != http.StatusCreated {
		t.Fatalf("the kubelet creating its Node: %d %s %v", code, body, err)
	}

	// The boot changes: refused, and the Node is tainted.
	old7 := p.value(7)
	p.measure(t, 7, "unknown bootloader")
	r := bootstrap(t, tpm, b, out)
	wantExit(t, r, 1)
	taints := kube.nodeTaints(t, nodeName)
	if !hasTaint(taints, "keybroker.io/attestation", "failed", "NoExecute") || !hasTaint(taints, "example.com/maintenance", "soon", "NoSchedule") {
		t.Fatalf("taints after the refusal: %v; want the quarantine taint and the maintenance taint", taints)
	}
	rs := receipts(t, b)
	if q := rs[0].Quarantine; rs[0].Allowed || q == nil || q.Node != nodeName || !q.Tainted || q.Error != "" {
		t.Fatalf("the refusal's receipt: allowed %v, quarantine %+v", rs[0].Allowed, q)
	}

	// The operator approves the new state: the node attests, the taint goes.
	writeFile(t, b.policyFile, strings.Replace(quarantined, old7, p.value(7), 1))
	b.signal(t, syscall.SIGHUP)
	b.waitLog(t, "policies reloaded", 1)
	wantExit(t, bootstrap(t, tpm, b, out), 0)
	taints = kube.nodeTaints(t, nodeName)
	if hasTaint(taints, "keybroker.io/attestation", "", "NoExecute") || !hasTaint(taints, "example.com/maintenance", "soon", "NoSchedule") {
		t.Fatalf("taints after the node attested again: %v; want only the maintenance taint", taints)
	}
	rs = receipts(t, b)
	if q := rs[0].Quarantine; !rs[0].Allowed || q == nil || q.Node != nodeName || q.Tainted || q.Error != "" {
		t.Fatalf("the allowed receipt: allowed %v, quarantine %+v", rs[0].Allowed, q)
	}
}

// KubeControllerManagerEnv names the kube-controller-manager binary the
// bootstrap token test runs (make e2e-kubernetes sets it).
const KubeControllerManagerEnv = "KEYBROKER_KUBE_CONTROLLER_MANAGER"

// startControllerManager runs kube-controller-manager's CSR controllers
// (approving, signing with signerDir's CA, cleaning) against k.
func (k *kubeCluster) startControllerManager(t *testing.T, signerDir string) {
	t.Helper()
	bin := os.Getenv(KubeControllerManagerEnv)
	if bin == "" {
		t.Skipf("%s is not set: run make e2e-kubernetes", KubeControllerManagerEnv)
	}
	cmd := exec.Command(bin, "--kubeconfig="+k.adminKubeconfig, "--controllers=csrsigning,csrapproving,csrcleaner",
		"--cluster-signing-cert-file="+filepath.Join(signerDir, issue.CACertFile), "--cluster-signing-key-file="+filepath.Join(signerDir, issue.CAKeyFile),
		"--leader-elect=false", "--use-service-account-credentials=false", "--secure-port=0", "--bind-address=127.0.0.1")
	startProc(t, "kube-controller-manager", cmd, &syncBuffer{})
}

// startProc starts cmd with its output in log, and kills it when the test
// ends, logging the tail of its output if the test failed; the channel
// closes when it exits.
func startProc(t *testing.T, name string, cmd *exec.Cmd, log *syncBuffer) <-chan struct{} {
	t.Helper()
	cmd.Stdout, cmd.Stderr = log, log
	killWithParent(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatalf("unable to run %s: %v", name, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("%s output (tail):\n%s", name, lastLines(log.String(), 40))
		}
	})
	return exited
}

// bootstrapRBAC lets user keybroker-broker create and delete Secrets in
// kube-system (bootstrap tokens), and the bootstrappers of keybroker's
// tokens create node client CSRs that kube-controller-manager approves.
func (k *kubeCluster) bootstrapRBAC(t *testing.T) {
	t.Helper()
	objs := []struct {
		path string
		obj  map[string]any
	}{
		{"/apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/roles", map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
			"metadata": map[string]any{"name": "keybroker-bootstrap-tokens", "namespace": "kube-system"},
			"rules":    []any{map[string]any{"apiGroups": []string{""}, "resources": []string{"secrets"}, "verbs": []string{"create", "delete"}}},
		}},
		{"/apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/rolebindings", map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
			"metadata": map[string]any{"name": "keybroker-bootstrap-tokens", "namespace": "kube-system"},
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "keybroker-bootstrap-tokens"},
			"subjects": []any{map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "keybroker-broker"}},
		}},
	}
	for _, role := range []string{"system:node-bootstrapper", "system:certificates.k8s.io:certificatesigningrequests:nodeclient"} {
		objs = append(objs, struct {
			path string
			obj  map[string]any
		}{"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
			"metadata": map[string]any{"name": "keybroker-" + strings.ReplaceAll(role, ":", "-")},
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
			"subjects": []any{map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:bootstrappers:keybroker"}},
		}})
	}
	for _, o := range objs {
		if code, body, err := k.do(k.admin, http.MethodPost, o.path, o.obj); err != nil || code != http.StatusCreated {
			t.Fatalf("POST %s: %d %s %v", o.path, code, body, err)
		}
	}
}

// whoami is the user and groups the API server sees behind c.
func (k *kubeCluster) whoami(t *testing.T, c *http.Client) (string, []string) {
	t.Helper()
	code, body, err := k.do(c, http.MethodPost, "/apis/authentication.k8s.io/v1/selfsubjectreviews",
		map[string]any{"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
	if err != nil || code != http.StatusCreated {
		t.Fatalf("SelfSubjectReview: %d %s %v", code, body, err)
	}
	var review struct {
		Status struct {
			UserInfo struct {
				Username string   `json:"username"`
				Groups   []string `json:"groups"`
			} `json:"userInfo"`
		} `json:"status"`
	}
	if err := json.Unmarshal(body, &review); err != nil {
		t.Fatal(err)
	}
	return review.Status.UserInfo.Username, review.Status.UserInfo.Groups
}

// bootstrapTokens counts the bootstrap token Secrets in kube-system.
func (k *kubeCluster) bootstrapTokens(t *testing.T) []map[string]any {
	t.Helper()
	code, body, err := k.do(k.admin, http.MethodGet, "/api/v1/namespaces/kube-system/secrets?fieldSelector=type%3Dbootstrap.kubernetes.io%2Ftoken", nil)
	if err != nil || code != http.StatusOK {
		t.Fatalf("listing bootstrap tokens: %d %s %v", code, body, err)
	}
	var list struct {
		Items []map[string]any `json:"items"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// kubelet_auth = "bootstrap_token": the attested node gets a bootstrap
// kubeconfig whose token authenticates as system:bootstrap:<id> in the
// broker's bootstrappers group and expires with the release's TTL (and
// then authenticates no one); a
// kubelet-style CSR made with it is approved and signed by
// kube-controller-manager, and the certificate authenticates as the node.
// Bootstrapping again replaces the node's token; a node whose boot changed
// gets no token, none is created, and its unused one is deleted.
func TestKubernetesBootstrapToken(t *testing.T) {
	skipUnlessE2E(t)
	kube := startKube(t)
	kube.bootstrapRBAC(t)
	// The cluster's signer must be a CA the API server trusts for client
	// certificates: the kubelet client CA is one.
	kube.startControllerManager(t, kube.kubeletCA)
	tpm := swtpmtest.Start(t, swtpmtest.Opts{})
	p := bootMeasured(t, tpm)
	ekHash := ekHashOf(t, tpm)
	policy := strings.Replace(kubeletPolicy(p), `node_name = "node-${ek_hash_short}"`, `node_name = "node-${ek_hash_short}"
    kubelet_auth = "bootstrap_token"`, 1)
	policy = strings.Replace(policy, `ttl       = "1h"`, `ttl       = "40s"`, 1)
	b := startBroker(t, brokerOpts{ekCAs: []ekCA{swtpmCA(tpm)}, policy: policy,
		extra: fmt.Sprintf("kubernetes {\n  server = %q\n  ca_cert = %q\n  client_ca_cert = %q\n  client_ca_key = %q\n  token_file = %q\n}\n",
			kube.url, kube.caFile, filepath.Join(kube.kubeletCA, issue.CACertFile), filepath.Join(kube.kubeletCA, issue.CAKeyFile), kube.brokerToken)})
	out := filepath.Join(t.TempDir(), "pki")
	bootKubeconfig := filepath.Join(t.TempDir(), "bootstrap-kubelet.conf")
	before := time.Now()
	wantExit(t, bootstrap(t, tpm, b, out, "--bootstrap-kubeconfig", bootKubeconfig), 0)
	if fi, err := os.Stat(bootKubeconfig); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v (want mode 0600)", bootKubeconfig, err)
	}
	var doc struct {
		Clusters []struct {
			Cluster struct {
				Server string `json:"server"`
				CAData []byte `json:"certificate-authority-data"`
			} `json:"cluster"`
		} `json:"clusters"`
		Users []struct {
			User struct {
				Token string `json:"token"`
			} `json:"user"`
		} `json:"users"`
	}
	if err := json.Unmarshal(readFile(t, bootKubeconfig), &doc); err != nil || len(doc.Users) != 1 || doc.Users[0].User.Token == "" || doc.Clusters[0].Cluster.Server != kube.url {
		t.Fatalf("bootstrap kubeconfig: %v %+v", err, doc)
	}
	token := doc.Users[0].User.Token
	id, _, _ := strings.Cut(token, ".")
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(doc.Clusters[0].Cluster.CAData)
	bootClient := &http.Client{Timeout: 20 * time.Second, Transport: &bearer{token: token, base: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}}
	if user, groups := kube.whoami(t, bootClient); user != "system:bootstrap:"+id || !slices.Contains(groups, "system:bootstrappers:keybroker") {
		t.Fatalf("the bootstrap token is %q in %v", user, groups)
	}
	secrets := kube.bootstrapTokens(t)
	if len(secrets) != 1 {
		t.Fatalf("%d bootstrap tokens, want 1", len(secrets))
	}
	data, _ := secrets[0]["data"].(map[string]any)
	expB64, _ := data["expiration"].(string)
	expRaw, _ := base64.StdEncoding.DecodeString(expB64)
	exp, err := time.Parse(time.RFC3339, string(expRaw))
	if err != nil || exp.Before(before.Add(39*time.Second)) || exp.After(time.Now().Add(40*time.Second)) {
		t.Fatalf("the token expires at %q (%v); want 40 seconds after the release", expRaw, err)
	}

	// The kubelet's TLS bootstrap: a CSR for its node name, approved and
	// signed by the cluster.
	nodeName := "node-" + ekHash[:16]
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "system:node:" + nodeName, Organization: []string{"system:nodes"}}}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr := map[string]any{"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
		"metadata": map[string]any{"generateName": "node-csr-"},
		"spec": map[string]any{"request": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}),
			"signerName": "kubernetes.io/kube-apiserver-client-kubelet", "usages": []string{"digital signature", "client auth"}}}
	code, body, err := kube.do(bootClient, http.MethodPost, "/apis/certificates.k8s.io/v1/certificatesigningrequests", csr)
	if err != nil || code != http.StatusCreated {
		t.Fatalf("creating the CSR with the bootstrap token: %d %s %v", code, body, err)
	}
	var created struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(body, &created); err != nil {
		t.Fatal(err)
	}
	var certPEM []byte
	for deadline := time.Now().Add(60 * time.Second); certPEM == nil; time.Sleep(250 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("CSR %s not signed in 60s", created.Metadata.Name)
		}
		code, body, err := kube.do(bootClient, http.MethodGet, "/apis/certificates.k8s.io/v1/certificatesigningrequests/"+created.Metadata.Name, nil)
		if err != nil || code != http.StatusOK {
			t.Fatalf("reading the CSR: %d %s %v", code, body, err)
		}
		var st struct {
			Status struct {
				Certificate []byte `json:"certificate"`
			} `json:"status"`
		}
		if err := json.Unmarshal(body, &st); err != nil {
			t.Fatal(err)
		}
		if len(st.Status.Certificate) > 0 {
			certPEM = st.Status.Certificate
		}
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		t.Fatal(err)
	}
	if user, groups := kube.whoami(t, kubeClient(t, kube.servingCA, pair)); user != "system:node:"+nodeName || !slices.Contains(groups, "system:nodes") {
		t.Fatalf("the signed certificate is %q in %v", user, groups)
	}

	// Once expired, the token authenticates no one.
	time.Sleep(time.Until(exp) + 2*time.Second)
	if code, body, err := kube.do(bootClient, http.MethodPost, "/apis/authentication.k8s.io/v1/selfsubjectreviews",
		map[string]any{"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}); err != nil || code != http.StatusUnauthorized {
		t.Fatalf("the expired bootstrap token: %d %s %v; want 401", code, body, err)
	}

	// Bootstrapping again replaces the node's token: one at a time.
	wantExit(t, bootstrap(t, tpm, b, out, "--bootstrap-kubeconfig", bootKubeconfig), 0)
	secrets = kube.bootstrapTokens(t)
	if len(secrets) != 1 || secrets[0]["metadata"].(map[string]any)["name"] == "bootstrap-token-"+id {
		t.Fatalf("after a second bootstrap: %d tokens (the first, bootstrap-token-%s, must be gone)", len(secrets), id)
	}

	// The boot changes: refused, no new token, and the node's unused one is
	// deleted.
	p.measure(t, 7, "unknown bootloader")
	wantExit(t, bootstrap(t, tpm, b, out, "--bootstrap-kubeconfig", bootKubeconfig), 1)
	if n := len(kube.bootstrapTokens(t)); n != 0 {
		t.Fatalf("%d bootstrap tokens after a refusal, want none", n)
	}
}

// bearer adds a bearer token to each request.
type bearer struct {
	token string
	base  http.RoundTripper
}

func (b *bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.base.RoundTrip(r)
}
