package agent_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/internal/brokertest"
)

// kubeconfigDoc is the part of a kubeconfig the test reads.
type kubeconfigDoc struct {
	Clusters []struct {
		Name    string `json:"name"`
		Cluster struct {
			Server string `json:"server"`
			CAData []byte `json:"certificate-authority-data"`
		} `json:"cluster"`
	} `json:"clusters"`
	Users []struct {
		Name string `json:"name"`
		User struct {
			ClientCertificate string `json:"client-certificate"`
			ClientKey         string `json:"client-key"`
		} `json:"user"`
	} `json:"users"`
	Contexts []struct {
		Name    string `json:"name"`
		Context struct {
			Cluster string `json:"cluster"`
			User    string `json:"user"`
		} `json:"context"`
	} `json:"contexts"`
	CurrentContext string `json:"current-context"`
}

// kubePolicy releases to env's node a pcr_sealed kubelet credential, with
// or without the TLS certificate of brokertest.Policy.
func kubePolicy(env *brokertest.Env, withTLS bool) string {
	kubelet := `release "kubelet" {
    type      = "kubelet"
    mode      = "pcr_sealed"
    pcrs      = [0, 7]
    ttl       = "1h"
    node_name = "node-${ek_hash_short}"
  }
  `
	src := env.PolicySource
	if !withTLS {
		src = regexp.MustCompile(`(?s)  release "node-tls" \{.*?\n  \}\n`).ReplaceAllString(src, "")
		return strings.Replace(src, "\n}\n", "\n  "+kubelet+"\n}\n", 1)
	}
	return strings.Replace(src, `release "node-tls" {`, kubelet+`release "node-tls" {`, 1)
}

// kubeCAs makes the cluster CA (verifying the API server) and the kubelet
// client CA, and the kubernetes block naming them.
func kubeCAs(t *testing.T) (clusterCA, clientCA *issue.CA, block string) {
	t.Helper()
	cdir, kdir := t.TempDir(), t.TempDir()
	var err error
	if clusterCA, err = issue.LoadOrCreateCA(cdir, issue.CAOpts{CommonName: "cluster"}); err != nil {
		t.Fatal(err)
	}
	if clientCA, err = issue.LoadOrCreateCA(kdir, issue.CAOpts{CommonName: "kubelet clients"}); err != nil {
		t.Fatal(err)
	}
	block = "kubernetes {\n  server = \"https://127.0.0.1:6443\"\n  ca_cert = \"" + filepath.Join(cdir, issue.CACertFile) + "\"\n" +
		"  client_ca_cert = \"" + filepath.Join(kdir, issue.CACertFile) + "\"\n  client_ca_key = \"" + filepath.Join(kdir, issue.CAKeyFile) + "\"\n}\n"
	return clusterCA, clientCA, block
}

// A kubelet release becomes a client certificate for system:node:<name>
// from the client CA and a kubeconfig naming the API server, its CA and
// that certificate, both 0600; a node whose boot changed gets nothing and
// keeps what it had.
func TestBootstrapKubelet(t *testing.T) {
	for _, withTLS := range []bool{true, false} {
		name := "with a TLS certificate"
		if !withTLS {
			name = "alone"
		}
		t.Run(name, func(t *testing.T) {
			env := brokertest.New(t, brokertest.Opts{})
			clusterCA, clientCA, block := kubeCAs(t)
			r := brokertest.Start(t, brokertest.StartOpts{Policy: kubePolicy(env, withTLS), EKHashes: []string{env.EKHash}, Config: block})
			client := brokerClient(t, r)
			out, kubeDir := t.TempDir(), filepath.Join(t.TempDir(), "kubelet")
			kubeconfig := filepath.Join(kubeDir, "kubeconfig")
			res, err := agent.Bootstrap(testContext(t), client, env.Node, agent.BootstrapOpts{OutDir: out, Kubeconfig: kubeconfig})
			if err != nil {
				t.Fatalf("Bootstrap: %v", err)
			}
			nodeName := "node-" + env.EKHash[:16]
			clientFile := filepath.Join(out, agent.KubeletClientFile)
			if res.KubeletNode != nodeName || !slices.Contains(res.Files, clientFile) || !slices.Contains(res.Files, kubeconfig) {
				t.Fatalf("result: node %q, files %v", res.KubeletNode, res.Files)
			}
			if _, err := os.Stat(filepath.Join(out, agent.KeyFile)); withTLS != (err == nil) {
				t.Errorf("key.pem written: %v, want %v", err == nil, withTLS)
			}
			for _, f := range []string{clientFile, kubeconfig} {
				if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
					t.Errorf("%s: %v, mode %v; want 0600", f, err, fi.Mode())
				}
			}

			var doc kubeconfigDoc
			raw, _ := os.ReadFile(kubeconfig)
			if err := json.Unmarshal(raw, &doc); err != nil {
				t.Fatalf("kubeconfig: %v", err)
			}
			if len(doc.Clusters) != 1 || doc.Clusters[0].Cluster.Server != "https://127.0.0.1:6443" ||
				!bytes.Equal(doc.Clusters[0].Cluster.CAData, clusterCA.BundlePEM()) {
				t.Errorf("kubeconfig cluster = %+v", doc.Clusters)
			}
			if len(doc.Users) != 1 || doc.Users[0].Name != "system:node:"+nodeName ||
				doc.Users[0].User.ClientCertificate != clientFile || doc.Users[0].User.ClientKey != clientFile {
				t.Errorf("kubeconfig user = %+v", doc.Users)
			}
			if len(doc.Contexts) != 1 || doc.CurrentContext != doc.Contexts[0].Name ||
				doc.Contexts[0].Context.User != doc.Users[0].Name || doc.Contexts[0].Context.Cluster != doc.Clusters[0].Name {
				t.Errorf("kubeconfig contexts = %+v, current %q", doc.Contexts, doc.CurrentContext)
			}

			// The client file holds the certificate, its chain and its key.
			pemData, _ := os.ReadFile(clientFile)
			pair, err := tls.X509KeyPair(pemData, pemData)
			if err != nil {
				t.Fatalf("client file: %v", err)
			}
			leaf := pair.Leaf
			if leaf.Subject.CommonName != "system:node:"+nodeName || !slices.Equal(leaf.Subject.Organization, []string{"system:nodes"}) ||
				!slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) || leaf.IsCA {
				t.Errorf("certificate subject %v, EKU %v", leaf.Subject, leaf.ExtKeyUsage)
			}
			roots := x509.NewCertPool()
			roots.AddCert(clientCA.Certificate())
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("certificate does not verify against the client CA: %v", err)
			}
			if rest := pemBlocks(pemData); !slices.Equal(rest, []string{"CERTIFICATE", "CERTIFICATE", "PRIVATE KEY"}) {
				t.Errorf("client file blocks %v", rest)
			}

			// The boot changes: nothing is released, the files stay.
			brokertest.Extend(t, env.RW, 7, "unknown bootloader")
			if _, err := agent.Bootstrap(testContext(t), client, env.Node, agent.BootstrapOpts{OutDir: out, Kubeconfig: kubeconfig}); err == nil {
				t.Fatal("Bootstrap succeeded after PCR 7 changed")
			}
			if again, _ := os.ReadFile(clientFile); !bytes.Equal(again, pemData) {
				t.Error("a refused bootstrap changed the client file")
			}
		})
	}
}

// pemBlocks lists the types of the PEM blocks in data.
func pemBlocks(data []byte) []string {
	var types []string
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			return types
		}
		types = append(types, b.Type)
	}
}
