package agent_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/client"
	legacy "github.com/google/go-tpm/legacy/tpm2"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/pcrpolicy"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/brokertest"
	"github.com/keybroker/keybroker/policies"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/sealing"
)

// authorizedEnv is a broker whose TLS release is pcr_sealed with
// pcr_policy "authorized", and a node with a policy counter.
func authorizedEnv(t *testing.T) *brokertest.Env {
	t.Helper()
	signer := newPCRSigner(t)
	return brokertest.New(t, brokertest.Opts{
		PCRPolicy: "authorized",
		Node:      func(o *agent.NodeOpts) { o.PolicyCounter = uint32(sealing.DefaultCounterIndex) },
		Server:    func(o *broker.ServerOpts) { o.PCRPolicy = signer },
	})
}

// nextPCR7 is the SHA-256 PCR 7 env's node will hold after event is
// extended into it (brokertest.Extend), and the state of PCR 0 and 7 then.
func nextState(t *testing.T, env *brokertest.Env, event string) map[uint32][]byte {
	t.Helper()
	pcrs, err := client.ReadPCRs(env.RW, legacy.PCRSelection{Hash: legacy.AlgSHA256, PCRs: []int{0, 7}})
	if err != nil {
		t.Fatal(err)
	}
	ev := sha256.Sum256([]byte(event))
	next := sha256.Sum256(append(pcrs.GetPcrs()[7], ev[:]...))
	return map[uint32][]byte{0: pcrs.GetPcrs()[0], 7: next[:]}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func reopenErr(t *testing.T, env *brokertest.Env, cache string) error {
	t.Helper()
	out := filepath.Join(t.TempDir(), "tls")
	_, err := agent.Reopen(env.Node, cache, agent.FileOut{OutDir: out})
	if err != nil {
		assertNothingWritten(t, out)
	}
	return err
}

// An update approved before the node reboots into it: the credential cached
// before the approval re-opens in the new state, without a new release,
// once an attestation brought the approval; a state nobody approved never
// opens it.
func TestReopenInApprovedState(t *testing.T) {
	env := authorizedEnv(t)
	_, cache := bootstrapCached(t, env)
	credsBefore := readFile(t, filepath.Join(cache, agent.CacheFile))
	var cached pb.AttestResponse
	if err := protojson.Unmarshal(credsBefore, &cached); err != nil {
		t.Fatal(err)
	}
	if b := cached.GetCredentials()[0].GetBlob(); b.GetAuthorization() == nil || b.GetPcrs() != nil || len(cachedApprovals(t, cache)) != 1 {
		t.Fatalf("cached blob %v with %d approvals; want one bound to approvals, with the attested state's", b, len(cachedApprovals(t, cache)))
	}
	approvalsBefore := readFile(t, filepath.Join(cache, agent.ApprovalsFile))

	updated := nextState(t, env, "dbx update")
	if _, err := pcrpolicy.Approve(context.Background(), env.Store, 0x000b, updated, nil, "explicit", "dbx 2026-12", time.Now()); err != nil {
		t.Fatalf("Approve: %v", err)
	}
	// A routine attestation, still in the old state, brings the approval.
	bootstrapInto(t, env, cache, allowed)
	if n := len(cachedApprovals(t, cache)); n != 2 {
		t.Fatalf("%d approvals after the approval; want the attested and the approved state", n)
	}
	approvalsNewest := readFile(t, filepath.Join(cache, agent.ApprovalsFile))
	// The credentials released before the approval, with the approvals of
	// now.
	writeFile(t, filepath.Join(cache, agent.CacheFile), credsBefore)

	brokertest.Extend(t, env.RW, 7, "dbx update")
	if err := reopenErr(t, env, cache); err != nil {
		t.Fatalf("Reopen in the approved state: %v", err)
	}
	// Without the approval (the approvals cached before it) it does not.
	writeFile(t, filepath.Join(cache, agent.ApprovalsFile), approvalsBefore)
	err := reopenErr(t, env, cache)
	if !errors.Is(err, sealing.ErrNotApproved) || !strings.Contains(err.Error(), "the broker has approved none the TPM holds now") {
		t.Fatalf("Reopen without the approval = %v; want %v", err, sealing.ErrNotApproved)
	}

	brokertest.Extend(t, env.RW, 7, "an update nobody approved")
	// The newest approvals do not open it either.
	writeFile(t, filepath.Join(cache, agent.ApprovalsFile), approvalsNewest)
	if err := reopenErr(t, env, cache); !errors.Is(err, sealing.ErrNotApproved) {
		t.Fatalf("Reopen in an unapproved state with the newest approvals = %v; want %v", err, sealing.ErrNotApproved)
	}
	bootstrapInto(t, env, cache, refused) // the policy pins PCR 7
	if _, err := os.Stat(filepath.Join(cache, agent.ApprovalsFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("approvals file after a refusal: %v; want it deleted", err)
	}
	if err := reopenErr(t, env, cache); !errors.Is(err, sealing.ErrNotApproved) {
		t.Fatalf("Reopen in an unapproved state = %v; want %v", err, sealing.ErrNotApproved)
	}
}

// The outcomes bootstrapInto expects.
const (
	allowed = false
	refused = true
)

// bootstrapInto attests env's node again with cache and checks the
// outcome: allowed, or refused by policy (a state it does not allow) with
// nothing written.
func bootstrapInto(t *testing.T, env *brokertest.Env, cache string, wantRefused bool) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "tls")
	_, err := agent.Bootstrap(context.Background(), direct{srv: env.Server}, env.Node, agent.BootstrapOpts{OutDir: out, CacheDir: cache})
	switch {
	case wantRefused && (err == nil || !strings.Contains(err.Error(), "no policy allows this node")):
		t.Fatalf("Bootstrap = %v; want refused by policy", err)
	case wantRefused:
		assertNothingWritten(t, out)
	case err != nil:
		t.Fatalf("Bootstrap: %v", err)
	}
}

// A revoked approval stops opening once the node attested after the
// revocation: its counter passed the version the approval was signed at.
func TestRevokedApprovalStopsOpening(t *testing.T) {
	env, cache, updated, withApproval := approvedThenRevoked(t, "kernel 6.19")
	if _, err := pcrpolicy.Approve(context.Background(), env.Store, 0x000b, updated, nil, "explicit", "", time.Now()); !errors.Is(err, pcrpolicy.ErrRevoked) {
		t.Fatalf("Approve of a revoked state = %v; want %v", err, pcrpolicy.ErrRevoked)
	}
	bootstrapInto(t, env, cache, allowed) // the broker has the node advance its counter
	if got := cachedApprovals(t, cache); len(got) != 1 || got[0].GetVersion() <= approvalVersion(t, withApproval) {
		t.Errorf("approvals after the revocation = %v; want the attested state's only, at a higher version", got)
	}

	// Whoever kept the approvals of before the revocation gains nothing.
	writeFile(t, filepath.Join(cache, agent.ApprovalsFile), withApproval)
	brokertest.Extend(t, env.RW, 7, "kernel 6.19")
	err := reopenErr(t, env, cache)
	if !errors.Is(err, sealing.ErrImport) || !strings.Contains(err.Error(), "refused its PCR-policy approval") {
		t.Fatalf("Reopen with a revoked approval = %v; want the TPM's refusal", err)
	}
}

// approvedThenRevoked bootstraps an authorizedEnv node with a cache, has
// the operator approve the state after event (S1), attests to bring the
// approval, and revokes S1. It returns the env, the cache, S1 and the
// approvals file as it was before the revocation.
func approvedThenRevoked(t *testing.T, event string) (*brokertest.Env, string, map[uint32][]byte, []byte) {
	t.Helper()
	env := authorizedEnv(t)
	_, cache := bootstrapCached(t, env)
	s1 := nextState(t, env, event)
	a, err := pcrpolicy.Approve(context.Background(), env.Store, 0x000b, s1, nil, "explicit", "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	bootstrapInto(t, env, cache, allowed)
	withApproval := readFile(t, filepath.Join(cache, agent.ApprovalsFile))
	if _, err := pcrpolicy.Revoke(context.Background(), env.Store, a.ID, "bad kernel", time.Now()); err != nil {
		t.Fatal(err)
	}
	return env, cache, s1, withApproval
}

// A node refused after a revocation stops opening the revoked state too:
// the refusal carries the raised bound, the agent advances its counter and
// deletes its cached approvals, and approvals kept from before stop
// opening in the TPM.
func TestRefusedNodeStopsOpeningRevokedState(t *testing.T) {
	env, cache, _, withApproval := approvedThenRevoked(t, "kernel 6.20")
	// The node reboots into S1 and attests: the policy (PCR 7 pinned)
	// refuses it.
	brokertest.Extend(t, env.RW, 7, "kernel 6.20")
	bootstrapInto(t, env, cache, refused)
	if _, err := os.Stat(filepath.Join(cache, agent.ApprovalsFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("approvals file after the refusal: %v; want it deleted", err)
	}
	if err := reopenErr(t, env, cache); !errors.Is(err, sealing.ErrNotApproved) {
		t.Fatalf("Reopen after the refusal = %v; want %v", err, sealing.ErrNotApproved)
	}
	// Approvals kept from before the revocation: the counter passed them.
	writeFile(t, filepath.Join(cache, agent.ApprovalsFile), withApproval)
	err := reopenErr(t, env, cache)
	if !errors.Is(err, sealing.ErrImport) || !strings.Contains(err.Error(), "refused its PCR-policy approval") {
		t.Fatalf("Reopen in the revoked state with approvals of before = %v; want the TPM's refusal", err)
	}
}

func cachedApprovals(t *testing.T, cache string) []*pb.PCRApproval {
	t.Helper()
	var r pb.AttestResponse
	if err := protojson.Unmarshal(readFile(t, filepath.Join(cache, agent.ApprovalsFile)), &r); err != nil {
		t.Fatal(err)
	}
	return r.GetPcrApprovals()
}

func approvalVersion(t *testing.T, file []byte) uint64 {
	t.Helper()
	var r pb.AttestResponse
	if err := protojson.Unmarshal(file, &r); err != nil || len(r.GetPcrApprovals()) == 0 {
		t.Fatalf("approvals file: %v", err)
	}
	return r.GetPcrApprovals()[0].GetVersion()
}

// A node without a policy counter gets no pcr_policy "authorized" release,
// and is told why; nothing is written.
func TestAuthorizedNeedsACounter(t *testing.T) {
	signer := newPCRSigner(t)
	env := brokertest.New(t, brokertest.Opts{PCRPolicy: "authorized", Server: func(o *broker.ServerOpts) { o.PCRPolicy = signer }})
	out := filepath.Join(t.TempDir(), "tls")
	_, err := agent.Bootstrap(context.Background(), direct{srv: env.Server}, env.Node, agent.BootstrapOpts{OutDir: out})
	if err == nil || !strings.Contains(err.Error(), `"node-tls" is pcr_policy "authorized" and the node reported no policy counter`) {
		t.Fatalf("Bootstrap without a counter = %v", err)
	}
	assertNothingWritten(t, out)
	if rs := env.Receipts(t); len(rs) != 1 || rs[0].Allowed || rs[0].DenyListed {
		t.Errorf("receipts = %+v; want one refusal, not deny-listed", rs)
	}
}

// newPCRSigner is a broker PCR-policy signer with a fresh key.
func newPCRSigner(t *testing.T) *pcrpolicy.Signer {
	t.Helper()
	signer, err := pcrpolicy.NewSigner(newKey(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	return signer
}

// Rotation: credentials sealed while the broker published a next key open
// with approvals by that key once it is the current one; credentials sealed
// before it was published need a new release.
func TestRotationKeepsOpening(t *testing.T) {
	current, next := newKey(t), newKey(t)
	before, err := pcrpolicy.NewSigner(current, nil)
	if err != nil {
		t.Fatal(err)
	}
	env := brokertest.New(t, brokertest.Opts{
		PCRPolicy: "authorized",
		Node:      func(o *agent.NodeOpts) { o.PolicyCounter = uint32(sealing.DefaultCounterIndex) },
		Server:    func(o *broker.ServerOpts) { o.PCRPolicy = before },
	})
	_, cache := bootstrapCached(t, env)
	sealedToCurrent := readFile(t, filepath.Join(cache, agent.CacheFile))

	// next_key_file published: new blobs name both keys.
	bootstrapWith(t, env, cache, current, next)
	sealedToBoth := readFile(t, filepath.Join(cache, agent.CacheFile))
	// next made the current key: approvals are by it alone.
	bootstrapWith(t, env, cache, next, nil)

	if err := reopenErr(t, env, cache); err != nil {
		t.Fatalf("Reopen of the credentials released after the rotation: %v", err)
	}
	writeFile(t, filepath.Join(cache, agent.CacheFile), sealedToBoth)
	if err := reopenErr(t, env, cache); err != nil {
		t.Fatalf("Reopen of credentials sealed to the current and the next key, with the next key's approvals: %v", err)
	}
	writeFile(t, filepath.Join(cache, agent.CacheFile), sealedToCurrent)
	if err := reopenErr(t, env, cache); !errors.Is(err, sealing.ErrNotApproved) {
		t.Fatalf("Reopen of credentials sealed before the next key was published = %v; want %v", err, sealing.ErrNotApproved)
	}
}

// bootstrapWith attests env's node, with cache, to a server like env's
// whose PCR-policy keys are current and next.
func bootstrapWith(t *testing.T, env *brokertest.Env, cache string, current, next *ecdsa.PrivateKey) {
	t.Helper()
	signer, err := pcrpolicy.NewSigner(current, next)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policies.Parse([]byte(env.PolicySource), "test.hcl")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := broker.NewServer(broker.ServerOpts{Verify: verify.Opts{Trust: verify.Trust{EKHashes: []string{env.EKHash}}},
		Store: env.Store, CA: env.CA, Policies: pol, PCRPolicy: signer, Now: env.Clock})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "tls")
	if _, err := agent.Bootstrap(context.Background(), direct{srv: srv}, env.Node, agent.BootstrapOpts{OutDir: out, CacheDir: cache}); err != nil {
		t.Fatalf("Bootstrap: %v", err)
	}
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
