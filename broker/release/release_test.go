package release_test

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	tpm2new "github.com/google/go-tpm/tpm2"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/broker/release"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/brokertest"
	"github.com/keybroker/keybroker/internal/fakevaultsource"
	"github.com/keybroker/keybroker/policies"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// simNode is a simulated TPM's node, verified: its answer to a challenge
// made in software, as the broker's Attest verifies it.
type simNode struct {
	node     *agent.Node
	verified *verify.Verified
	pcr0     string
	pcr7     string
}

func newSimNode(t *testing.T) *simNode {
	t.Helper()
	sim := brokertest.NewSim(t)
	ev := sim.Evidence(t, time.Now())
	var vq []verify.Quote
	for _, q := range ev.Quotes {
		vq = append(vq, verify.Quote{Attest: q.Attest, Signature: q.Signature, Bank: tpm2new.TPMAlgID(q.Bank), PCRs: q.PCRs})
	}
	id, err := verify.Node(ev.EKPublic, nil, nil, ev.AKPublic, verify.Opts{Trust: verify.Trust{EKHashes: []string{sim.EKHash}}})
	if err != nil {
		t.Fatal(err)
	}
	v, err := verify.Quotes(id, ev.SecretHash, vq, verify.Opts{})
	if err != nil {
		t.Fatal(err)
	}
	if v, err = v.WithHistory(nil); err != nil {
		t.Fatal(err)
	}
	pcrs, err := client.ReadPCRs(sim.RW, tpm2.PCRSelection{Hash: tpm2.AlgSHA256, PCRs: []int{0, 7}})
	if err != nil {
		t.Fatal(err)
	}
	return &simNode{node: sim.Node, verified: v,
		pcr0: hex.EncodeToString(pcrs.GetPcrs()[0]), pcr7: hex.EncodeToString(pcrs.GetPcrs()[7])}
}

// decision evaluates policy source src (brokertest.Policy's arguments
// after the EK hash and PCRs: mode and extra lines) for n.
func (n *simNode) decision(t *testing.T, src string) policies.Decision {
	t.Helper()
	set, err := policies.Parse([]byte(src), "test.hcl")
	if err != nil {
		t.Fatal(err)
	}
	d := set.Evaluate(n.verified)
	if !d.Allowed {
		t.Fatalf("policy refused the node: %v", d.Failures)
	}
	return d
}

func newReleaser(t *testing.T, opts release.Opts) *release.Releaser {
	t.Helper()
	ca, err := issue.LoadOrCreateCA(t.TempDir(), issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	opts.CA = ca
	r, err := release.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// A TLS certificate released tpm_bound or pcr_sealed opens in the node's
// TPM to a key that matches its certificate.
func TestReleaseTLS(t *testing.T) {
	n := newSimNode(t)
	r := newReleaser(t, release.Opts{})
	hash := n.verified.EKHash()
	for _, mode := range []struct{ name, extra string }{
		{"tpm_bound", ""},
		{"pcr_sealed", "\n    pcr_bank    = \"sha256\"\n    pcrs        = [0, 7]"},
	} {
		t.Run(mode.name, func(t *testing.T) {
			d := n.decision(t, fmt.Sprintf(brokertest.Policy, hash, n.pcr0, n.pcr7, mode.name, mode.extra))
			out, err := r.Release(context.Background(), n.verified, d, "")
			if err != nil {
				t.Fatal(err)
			}
			if len(out.Credentials) != 1 || len(out.Items) != 1 || out.Items[0].Mode != mode.name || out.Items[0].Serial == "" {
				t.Fatalf("released %d credentials, items %+v", len(out.Credentials), out.Items)
			}
			payload, err := n.node.Open(out.Credentials[0])
			if err != nil {
				t.Fatalf("the node cannot open its credential: %v", err)
			}
			var tc pb.TLSCredential
			if err := proto.Unmarshal(payload, &tc); err != nil {
				t.Fatal(err)
			}
			if _, err := tls.X509KeyPair(tc.GetCertificatePem(), tc.GetKeyPem()); err != nil {
				t.Fatalf("released key and certificate do not match: %v", err)
			}
		})
	}
}

// A decision the broker cannot release whole releases nothing, and says
// why.
func TestReleaseRefusals(t *testing.T) {
	n := newSimNode(t)
	r := newReleaser(t, release.Opts{})
	hash := n.verified.EKHash()
	svid := fmt.Sprintf(brokertest.SPIFFEPolicy, hash, n.pcr0, n.pcr7, "tpm_bound", "", "")
	kv := fmt.Sprintf(`policy "kv" {
  select {
    ek_hashes = [%q]
  }
  release "db-password" {
    type = "vault_kv"
    mode = "tpm_bound"
    path = "secret/data/db"
  }
}
`, hash)
	kubelet := fmt.Sprintf(`policy "kube" {
  select {
    ek_hashes = [%q]
  }
  release "kubelet" {
    type      = "kubelet"
    node_name = "n-${ek_hash_short}"
  }
}
`, hash)
	for _, tt := range []struct {
		name string
		src  string
		kind release.Kind
		msg  string
	}{
		{"x509_svid without a SPIFFE authority", svid, release.KindSPIFFE, "release: the policies release a SPIFFE identity this broker cannot issue"},
		{"vault_kv without a vault", kv, release.KindNoVault, "release: vault unavailable (not configured)"},
		{"kubelet without kubernetes", kubelet, release.KindNoKubernetes, "release: kubernetes is not configured"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, err := r.Release(context.Background(), n.verified, n.decision(t, tt.src), "")
			var f *release.Failure
			if !errors.As(err, &f) || f.Kind != tt.kind || f.Msg != tt.msg || len(f.Notes) == 0 || out != nil {
				t.Fatalf("Release = %v, %v; want kind %d %q with notes, nothing released", out, err, tt.kind, tt.msg)
			}
		})
	}
}

// A vault_pki release that cannot be sealed (its PCRs were not quoted)
// asks Vault for nothing: no certificate exists unreleased. (Policies
// refuse such a node before; this is the release step's own guard.)
func TestVaultCertificateNeverLeftUnreleased(t *testing.T) {
	n := newSimNode(t)
	fake := fakevaultsource.New(t)
	r := newReleaser(t, release.Opts{Vault: fake.Client(t)})
	d := policies.Decision{Allowed: true, Releases: []policies.Release{{
		Name: "sealed-tls", Type: policies.TypeVaultPKI, Mode: policies.ModePCRSealed,
		PCRBank: tpm2new.TPMAlgSHA512, PCRs: []uint32{7}, Path: "pki/issue/nodes", CommonName: "node.example.com", TTL: time.Hour,
	}}}
	out, err := r.Release(context.Background(), n.verified, d, "")
	var f *release.Failure
	if out != nil || !errors.As(err, &f) || f.Kind != release.KindIssue {
		t.Fatalf("Release = %v, %v; want an issue failure", out, err)
	}
	for _, p := range fake.Paths() {
		if strings.HasPrefix(p, "pki/") {
			t.Fatalf("Vault was asked %s for a release that could not be sealed", p)
		}
	}
	if got := fake.Revoked(); len(got) != 0 {
		t.Fatalf("revoked %v", got)
	}
}
