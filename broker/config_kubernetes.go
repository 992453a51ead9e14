package broker

import (
	"bytes"
	"net/url"
	"os"

	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/broker/kube"
	"github.com/keybroker/keybroker/broker/release"
	"github.com/keybroker/keybroker/broker/verify"
)

// KubernetesFile is the kubernetes block: the cluster kubelet releases
// join.
//
//	kubernetes {
//	  server         = "https://10.0.0.1:6443"   # kube-apiserver, https
//	  ca_cert        = "cluster-ca.pem"          # verifies the API server; default: the node's system roots
//	  client_ca_cert = "kubelet-client-ca.pem"   # signs kubelet client certificates: kube-apiserver --client-ca-file
//	  client_ca_key  = "kubelet-client-ca.key"   # its key, PKCS#8 or SEC1 PEM
//	  token_file     = "kube-token"              # optional: the broker's own bearer token (bootstrap tokens, quarantine)
//	  quarantine_taint = "keybroker.io/attestation=failed:NoExecute"  # the default
//	}
type KubernetesFile struct {
	Server          string `hcl:"server"`
	CACert          string `hcl:"ca_cert,optional"`
	ClientCACert    string `hcl:"client_ca_cert"`
	ClientCAKey     string `hcl:"client_ca_key"`
	TokenFile       string `hcl:"token_file,optional"`
	QuarantineTaint string `hcl:"quarantine_taint,optional"`
}

// build validates the kubernetes block and loads its CA, each problem at
// the attribute it is about; abs resolves relative paths.
func (kf *KubernetesFile) build(abs func(string) string, at spot, p *problems) *release.Kubernetes {
	k := &release.Kubernetes{Server: kf.Server}
	u, err := url.Parse(kf.Server)
	rng := at.attr("server")
	switch {
	case !at.has("server"):
		// HCL reported it missing.
	case err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil:
		p.at(rng, "kubernetes: server %q is not a URL such as \"https://10.0.0.1:6443\"", kf.Server)
	case u.Scheme != "https":
		p.at(rng, "kubernetes: server %q must use https", kf.Server)
	}
	if kf.CACert != "" {
		rng := at.attr("ca_cert")
		data, err := os.ReadFile(abs(kf.CACert))
		switch {
		case err != nil:
			p.at(rng, "kubernetes: unable to read ca_cert %s: %v", kf.CACert, err)
		case !bytes.Contains(data, []byte("-----BEGIN ")):
			p.at(rng, "kubernetes: ca_cert %s: holds no PEM certificate", kf.CACert)
		default:
			if _, err := verify.ParseCertificates(data); err != nil {
				p.at(rng, "kubernetes: ca_cert %s: %v", kf.CACert, err)
			}
			k.ClusterCAPEM = data
		}
	}
	k.API = kf.api(k, abs, at, p)
	if kf.ClientCACert == "" || kf.ClientCAKey == "" {
		if at.has("client_ca_cert") && at.has("client_ca_key") {
			p.at(at.def, "kubernetes: client_ca_cert and client_ca_key cannot be empty")
		}
		return k
	}
	ca, err := issue.LoadCA(abs(kf.ClientCACert), abs(kf.ClientCAKey), issue.CAOpts{})
	if err != nil {
		p.at(at.attr("client_ca_cert"), "kubernetes: %v", err)
		return k
	}
	k.ClientCA = ca
	return k
}

// api builds the broker's own client of the API server (bootstrap tokens,
// quarantine): nil without token_file.
func (kf *KubernetesFile) api(k *release.Kubernetes, abs func(string) string, at spot, p *problems) *kube.Client {
	taint := kube.DefaultTaint
	if kf.QuarantineTaint != "" {
		taint = kf.QuarantineTaint
	}
	t, err := kube.ParseTaint(taint)
	if err != nil {
		p.at(at.attr("quarantine_taint"), "kubernetes: quarantine_taint: %v", err)
	}
	if kf.TokenFile == "" {
		if at.has("quarantine_taint") {
			p.at(at.attr("quarantine_taint"), "kubernetes: quarantine_taint needs token_file, the broker's identity for tainting nodes")
		}
		return nil
	}
	readable(p, at.attr("token_file"), "kubernetes: ", "token_file", abs(kf.TokenFile), kf.TokenFile)
	if err != nil || k.Server == "" {
		return nil
	}
	c, err := kube.New(kube.Opts{Server: k.Server, CAPEM: k.ClusterCAPEM, TokenFile: abs(kf.TokenFile), Taint: t})
	if err != nil {
		return nil // the server or CA problem is reported above
	}
	return c
}
