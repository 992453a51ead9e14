package policies_test

import (
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/policies"
)

// A kubelet release renders a node name bound to the node's EK.
func TestKubeletRelease(t *testing.T) {
	v := attest(t, node{viaCA: true})
	s := mustParse(t, `policy "nodes" {
  select { ek_cas = ["`+testCA+`"] }
  release "kubelet" {
    type      = "kubelet"
    node_name = "worker-${ek_hash_short}"
    ttl       = "12h"
  }
}`)
	d := s.Evaluate(v)
	if !d.Allowed || len(d.Releases) != 1 {
		t.Fatalf("denied or wrong releases: %q %+v", d.Failures, d.Releases)
	}
	r := d.Releases[0]
	if r.Type != policies.TypeKubelet || r.NodeName != "worker-"+v.EKHash()[:16] || r.TTL != 12*time.Hour ||
		r.KubeletAuth != policies.KubeletClientCertificate || r.Mode != policies.ModeTPMBound {
		t.Errorf("release = %+v", r)
	}
}

// A bootstrap_token release lives 15 minutes unless its ttl says
// otherwise, and needs no node_name.
func TestKubeletBootstrapTokenRelease(t *testing.T) {
	v := attest(t, node{viaCA: true})
	s := mustParse(t, `policy "nodes" {
  select { ek_cas = ["`+testCA+`"] }
  release "kubelet" {
    type         = "kubelet"
    kubelet_auth = "bootstrap_token"
  }
}`)
	d := s.Evaluate(v)
	if !d.Allowed || len(d.Releases) != 1 {
		t.Fatalf("denied or wrong releases: %q %+v", d.Failures, d.Releases)
	}
	if r := d.Releases[0]; r.KubeletAuth != policies.KubeletBootstrapToken || r.TTL != policies.DefaultBootstrapTokenTTL || r.NodeName != "" {
		t.Errorf("release = %+v", r)
	}
}

func TestKubeletReleaseRefused(t *testing.T) {
	tests := []struct {
		name, body, want string
	}{
		{"no node name", `type = "kubelet"`, `a kubelet needs a node_name, such as "node-${ek_hash_short}"`},
		{"static node name", `type = "kubelet"
    node_name = "worker-1"`, `node_name must contain the node's ${ek_hash_short}, such as "node-${ek_hash_short}": a node name shared by several nodes would let one act as another in the cluster`},
		{"a name that uses the EK but not in it", `type = "kubelet"
    node_name = "${ek_hash != "" ? "shared-node" : "x"}"`, `node_name must contain the node's ${ek_hash_short}`},
		{"not a DNS name", `type = "kubelet"
    node_name = "Worker_${ek_hash_short}"`, `node_name renders to "Worker_0000000000000000" for a sample node: a node name holds only lower-case letters, digits, '-' and '.'`},
		{"too long", `type = "kubelet"
    node_name = "${ek_hash}${ek_hash}${ek_hash}${ek_hash}"`, `node_name renders to`},
		{"bootstrap token", `type = "kubelet"
    node_name = "n-${ek_hash_short}"
    kubelet_auth = "token"`, `kubelet_auth "token" is not supported; use "client_certificate" or "bootstrap_token"`},
		{"bootstrap token for a day and more", `type = "kubelet"
    kubelet_auth = "bootstrap_token"
    ttl = "25h"`, `ttl exceeds the maximum of 24h for a bootstrap token`},
		{"quarantine without the node's name", `type = "kubelet"
    kubelet_auth = "bootstrap_token"
    quarantine = true`, `quarantine with kubelet_auth "bootstrap_token" needs the node_name the kubelet registers as (--hostname-override)`},
		{"ttl beyond a week", `type = "kubelet"
    node_name = "n-${ek_hash_short}"
    ttl = "200h"`, `ttl "200h" exceeds the maximum of 168h for a kubelet`},
		{"tls names", `type = "kubelet"
    node_name = "n-${ek_hash_short}"
    common_name = "x"`, `common_name is not allowed with type "kubelet"`},
		{"node name on a tls_certificate", `type = "tls_certificate"
    common_name = "x"
    node_name = "n-${ek_hash_short}"`, `node_name is only allowed with type "kubelet"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := policies.Parse([]byte(withRelease(tt.body)), "p.hcl")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}
