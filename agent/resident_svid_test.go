package agent_test

import (
	"context"
	"crypto/ecdsa"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/internal/brokertest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/resident"
	"github.com/keybroker/keybroker/sealing"
)

// TestResidentNodeSVID: with a tpm_resident x509_svid release bound to
// PCRs 0 and 7, the agent's node SVID is for a key created in the TPM
// under a PolicyPCR of the attested values; the agent writes the SVID and
// its TSS2 key file (no private key), gets workload SVIDs from a started
// broker over mutual TLS whose handshakes the TPM signs, and after PCR 7
// changes the TPM refuses to sign them: no handshake, no new SVID.
func TestResidentNodeSVID(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{Mode: "tpm_bound", SPIFFE: true, SVIDMode: "tpm_resident", SVIDExtra: "\n    pcrs      = [0, 7]"})
	r := brokertest.Start(t, brokertest.StartOpts{Policy: env.PolicySource, EKHashes: []string{env.EKHash}, TrustDomain: brokertest.TrustDomain})
	sel, err := resident.ParsePCRs("sha256:0,7")
	if err != nil {
		t.Fatal(err)
	}
	node, err := agent.NewNode(env.RW, agent.NodeOpts{TPMResident: []string{"node-svid"}, TPMResidentPCRs: map[string]*resident.PCRs{"node-svid": sel}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(node.Close)
	ctx := testContext(t)
	out, cache := filepath.Join(t.TempDir(), "out"), filepath.Join(t.TempDir(), "cache")
	att, err := agent.Attest(ctx, brokerClient(t, r), node, agent.AttestOpts{Out: &agent.FileOut{OutDir: out}, CacheDir: cache})
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	svid := att.NodeSVID
	if svid == nil || svid.Mode != pb.ReleaseMode_TPM_RESIDENT || svid.Key == nil {
		t.Fatalf("node SVID = %+v, want a TPM_RESIDENT one with its TPM key", svid)
	}
	if _, ok := svid.SVID.PrivateKey.(*ecdsa.PrivateKey); ok {
		t.Fatal("the node SVID's key is a software key")
	}

	// The files: the SVID, and its key as a TSS2 key file, 0600.
	if _, err := agent.WriteFiles(att, agent.FileOut{OutDir: out}); err != nil {
		t.Fatalf("WriteFiles: %v", err)
	}
	files := map[string]string{}
	for _, f := range []string{agent.SVIDFile, agent.SVIDKeyFile} {
		b, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Fatal(err)
		}
		files[f] = string(b)
	}
	if !strings.HasPrefix(files[agent.SVIDKeyFile], "-----BEGIN TSS2 PRIVATE KEY-----\n") || strings.Count(files[agent.SVIDKeyFile], "-----BEGIN") != 1 {
		t.Fatalf("%s is not one TSS2 key file:\n%s", agent.SVIDKeyFile, files[agent.SVIDKeyFile])
	}
	if fi, err := os.Stat(filepath.Join(out, agent.SVIDKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: %v, want mode 0600", agent.SVIDKeyFile, err)
	}
	key, err := resident.ParsePEM([]byte(files[agent.SVIDKeyFile]))
	if err != nil || string(key.Public) != string(svid.Key.Public) || string(key.Private) != string(svid.Key.Private) {
		t.Fatalf("%s does not hold the TPM key's blobs: %v", agent.SVIDKeyFile, err)
	}
	if leaf, err := parseCert(files[agent.SVIDFile]); err != nil || !leaf.Equal(svid.SVID.Certificates[0]) {
		t.Fatalf("%s does not start with the node SVID: %v", agent.SVIDFile, err)
	}

	// The cache keeps the other credentials (the TLS release), not the
	// resident SVID, whose key is created anew at each attestation: it
	// reopens.
	cachedJSON, err := os.ReadFile(filepath.Join(cache, agent.CacheFile))
	if err != nil {
		t.Fatal(err)
	}
	cached := string(cachedJSON)
	if !strings.Contains(cached, `"node-tls"`) || strings.Contains(cached, `"node-svid"`) {
		t.Fatalf("the cache holds:\n%s\nwant node-tls and not node-svid", cached)
	}
	if _, err := agent.Reopen(node, cache, agent.FileOut{OutDir: filepath.Join(t.TempDir(), "reopened")}); err != nil {
		t.Fatalf("Reopen: %v", err)
	}

	// Workload SVIDs over mutual TLS, the client's handshake signed in
	// the TPM.
	log, _ := testLogger(t)
	mgr, err := agent.NewSVIDManager(agent.BrokerTarget{Addr: r.Addr(), CAPEM: r.CA.BundlePEM()}, agent.WithSVIDLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Update(ctx, att); err != nil {
		t.Fatalf("Update (workload SVIDs over mTLS with the TPM key): %v", err)
	}
	snap, _ := mgr.Snapshot()
	if len(snap.X509SVIDs) != 2 {
		t.Fatalf("%d workload SVIDs, want 2", len(snap.X509SVIDs))
	}
	for id, s := range snap.X509SVIDs {
		if _, _, err := x509svid.Verify(s.Certificates, r.SPIFFE.Bundle()); err != nil {
			t.Errorf("%s does not verify against the broker's bundle: %v", id, err)
		}
	}

	// Another boot state: the TPM no longer signs with the node SVID's
	// key, so the agent cannot authenticate to the broker.
	brokertest.Extend(t, env.RW, 7, "another bootloader")
	err = mgr.Update(ctx, att)
	if err == nil {
		t.Fatal("workload SVIDs were issued after PCR 7 changed: the TPM signed the handshake")
	}
	if !strings.Contains(err.Error(), "tls: failed to sign handshake: the TPM did not sign with the resident key") || !strings.Contains(err.Error(), "a policy check failed") {
		t.Fatalf("Update after PCR 7 changed = %v, want the TPM's policy refusal", err)
	}
}

// tampered is a broker whose Attest answers are edited before the agent
// sees them.
type tampered struct {
	direct
	edit func(*pb.AttestResponse)
}

func (c tampered) Attest(ctx context.Context, in *pb.AttestRequest, opts ...grpc.CallOption) (*pb.AttestResponse, error) {
	resp, err := c.direct.Attest(ctx, in, opts...)
	if err == nil {
		c.edit(resp)
	}
	return resp, err
}

// TestResidentNodeSVIDRefused: the agent takes a TPM_RESIDENT node SVID
// only for the key it created in the TPM, and only without a key in the
// payload; otherwise the attestation fails at open.
func TestResidentNodeSVIDRefused(t *testing.T) {
	env := brokertest.New(t, brokertest.Opts{Mode: "tpm_bound", SPIFFE: true, SVIDMode: "tpm_resident"})
	node, err := agent.NewNode(env.RW, agent.NodeOpts{TPMResident: []string{"node-svid"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(node.Close)
	req, err := node.ChallengeRequest()
	if err != nil {
		t.Fatal(err)
	}
	ek, err := tpm2.Unmarshal[tpm2.TPMTPublic](req.GetEkPublic())
	if err != nil {
		t.Fatal(err)
	}
	// A node SVID for a key the broker made, sealed to this node's EK.
	forged := func(withKey bool) func(*pb.AttestResponse) {
		return func(resp *pb.AttestResponse) {
			svid, err := env.SPIFFE.IssueX509SVID(spiffeid.RequireFromString("spiffe://example.org/node/x"), time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			bundle, err := env.SPIFFE.BundleJWKS()
			if err != nil {
				t.Fatal(err)
			}
			cred := &pb.X509SVIDCredential{SpiffeId: svid.ID.String(), CertificatesPem: issue.CertificatesPEM(svid.Chain), SpiffeBundle: bundle}
			if withKey {
				cred.KeyPem = svid.KeyPEM
			}
			payload, err := proto.Marshal(cred)
			if err != nil {
				t.Fatal(err)
			}
			for i, c := range resp.GetCredentials() {
				if c.GetType() == pb.CredentialType_X509_SVID {
					sealed, err := sealing.SealCredential(ek, c.GetName(), c.GetType(), payload, nil)
					if err != nil {
						t.Fatal(err)
					}
					sealed.Mode = pb.ReleaseMode_TPM_RESIDENT
					resp.Credentials[i] = sealed
				}
			}
		}
	}
	for _, tt := range []struct {
		name    string
		edit    func(*pb.AttestResponse)
		wantErr string
	}{
		{"SVID for another key", forged(false), `open: credential "node-svid": the certificate is not for the key created in the TPM`},
		{"payload with a key", forged(true), `open: credential "node-svid": a tpm_resident node X.509-SVID carries a private key`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := agent.Attest(context.Background(), tampered{direct{srv: env.Server}, tt.edit}, node, agent.AttestOpts{})
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("Attest = %v, want %q", err, tt.wantErr)
			}
		})
	}
	// Untouched, the same broker's answer opens.
	att, err := agent.Attest(context.Background(), direct{srv: env.Server}, node, agent.AttestOpts{})
	if err != nil || att.NodeSVID.Key == nil {
		t.Fatalf("Attest = %v; want a TPM_RESIDENT node SVID", err)
	}
}
