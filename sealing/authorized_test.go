package sealing_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-tpm-tools/client"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	legacy "github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpmutil"

	"github.com/keybroker/keybroker/internal/tpmtest"
	"github.com/keybroker/keybroker/sealing"
)

// authorizedNode is a simulator with its EK and policy counter, and the
// broker's PCR-policy signing keys.
type authorizedNode struct {
	rw      io.ReadWriter
	ek      *client.Key
	counter *tpm2.TPMSNVPublic
	version uint64
	current *ecdsa.PrivateKey
	next    *ecdsa.PrivateKey
}

func newAuthorizedNode(t *testing.T) *authorizedNode {
	t.Helper()
	rw := tpmtest.Open(t)
	ek, err := client.EndorsementKeyRSA(rw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ek.Close() })
	counter, version, err := sealing.EnsureCounter(rw, sealing.DefaultCounterIndex)
	if err != nil {
		t.Fatal(err)
	}
	return &authorizedNode{rw: rw, ek: ek, counter: counter, version: version, current: newSigningKey(t), next: newSigningKey(t)}
}

func newSigningKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func signerPublic(t *testing.T, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	p, err := sealing.SignerPublic(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (n *authorizedNode) wrap(t *testing.T, signers ...*ecdsa.PrivateKey) *sealing.Envelope {
	t.Helper()
	auth := &sealing.Authorization{Counter: n.counter, Bank: uint32(tpm2.TPMAlgSHA256), PCRs: []uint32{0, 7}, Node: []byte(thisNode)}
	for _, k := range signers {
		auth.Signers = append(auth.Signers, signerPublic(t, k))
	}
	env, err := sealing.Wrap(n.ek.PublicKey(), payload, sealing.WrapOpts{Authorization: auth, KeyID: "tls"})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func (n *authorizedNode) state(t *testing.T) *tpmpb.PCRs {
	t.Helper()
	pcrs, err := client.ReadPCRs(n.rw, legacy.PCRSelection{Hash: legacy.AlgSHA256, PCRs: []int{0, 7}})
	if err != nil {
		t.Fatal(err)
	}
	return pcrs
}

func (n *authorizedNode) approve(t *testing.T, k *ecdsa.PrivateKey, pcrs *tpmpb.PCRs) *sealing.Approval {
	t.Helper()
	return n.approveFor(t, k, pcrs, thisNode)
}

// thisNode names the simulator's node in its envelopes' policyRef.
const thisNode = "node-a"

func (n *authorizedNode) approveFor(t *testing.T, k *ecdsa.PrivateKey, pcrs *tpmpb.PCRs, node string) *sealing.Approval {
	t.Helper()
	a, err := sealing.SignApproval(k, pcrs, []byte(node), n.counter, n.version)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (n *authorizedNode) extend(t *testing.T, what string) {
	t.Helper()
	sum := sha256.Sum256([]byte(what))
	if err := legacy.PCRExtend(n.rw, tpmutil.Handle(7), legacy.AlgSHA256, sum[:], ""); err != nil {
		t.Fatal(err)
	}
}

func (n *authorizedNode) open(env *sealing.Envelope, approvals ...*sealing.Approval) ([]byte, error) {
	return sealing.OpenAuthorized(n.rw, n.ek, env, approvals)
}

func mustOpen(t *testing.T, n *authorizedNode, env *sealing.Envelope, approvals ...*sealing.Approval) {
	t.Helper()
	got, err := n.open(env, approvals...)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("OpenAuthorized = %q, %v; want the payload", got, err)
	}
}

// mustRefuse checks that the envelope does not open, with want, and that
// the refusal left no more sessions or objects loaded in the TPM than
// before.
func mustRefuse(t *testing.T, n *authorizedNode, want error, env *sealing.Envelope, approvals ...*sealing.Approval) {
	t.Helper()
	before := loadedHandles(t, n.rw)
	got, err := n.open(env, approvals...)
	if !errors.Is(err, want) || got != nil {
		t.Fatalf("OpenAuthorized = %q, %v; want %v", got, err, want)
	}
	if after := loadedHandles(t, n.rw); after != before {
		t.Fatalf("a refused open left %d sessions and objects loaded, %d before", after, before)
	}
}

// loadedHandles counts the sessions and transient objects loaded.
func loadedHandles(t *testing.T, rw io.ReadWriter) int {
	t.Helper()
	n := 0
	for _, ht := range []legacy.HandleType{legacy.HandleTypeLoadedSession, legacy.HandleTypeTransient} {
		hs, err := client.Handles(rw, ht)
		if err != nil {
			t.Fatal(err)
		}
		n += len(hs)
	}
	return n
}

// The whole update story on one TPM: sealed to approvals, the envelope
// opens in the attested state; after an extend it does not; once the new
// state is approved it opens again without being sealed again.
func TestAuthorizedOpensInApprovedStatesOnly(t *testing.T) {
	n := newAuthorizedNode(t)
	env := n.wrap(t, n.current)
	if env.Blob.GetPcrs() != nil {
		t.Errorf("an authorized blob names literal PCR values: %v", env.Blob.GetPcrs())
	}
	if _, err := sealing.Open(n.ek, env); err == nil || !strings.Contains(err.Error(), "open it with OpenAuthorized") {
		t.Errorf("Open of an authorized envelope = %v; want it sent to OpenAuthorized", err)
	}
	attested := n.approve(t, n.current, n.state(t))
	mustOpen(t, n, env, attested)

	n.extend(t, "firmware update")
	mustRefuse(t, n, sealing.ErrNotApproved, env, attested)

	updated := n.approve(t, n.current, n.state(t))
	mustOpen(t, n, env, attested, updated)

	n.extend(t, "a state nobody approved")
	mustRefuse(t, n, sealing.ErrNotApproved, env, attested, updated)
}

// Approvals the TPM must refuse although they name the current state.
func TestAuthorizedRefusesForgedApprovals(t *testing.T) {
	n := newAuthorizedNode(t)
	env := n.wrap(t, n.current)
	now := n.state(t)
	other := &tpmpb.PCRs{Hash: now.GetHash(), Pcrs: map[uint32][]byte{0: now.GetPcrs()[0], 7: bytes.Repeat([]byte{7}, 32)}}
	stranger := newSigningKey(t)

	// Signed by the right key over another state, relabelled as this one.
	overOther := n.approve(t, n.current, other)
	overOther.PCRs = now
	// Signed by a key the blob does not name, claiming to be the right key.
	byStranger := n.approve(t, stranger, now)
	byStranger.Signer = signerPublic(t, n.current)
	// Variants past the Go-side filter (signer, selection, current state),
	// so that the TPM's own check of each binding is what refuses them:
	// signed over fewer PCRs, relabelled as the whole selection;
	fewer := n.approve(t, n.current, &tpmpb.PCRs{Hash: now.GetHash(), Pcrs: map[uint32][]byte{7: now.GetPcrs()[7]}})
	fewer.PCRs = now
	// signed over another counter index (PolicyNV names the counter);
	otherCounter, err := sealing.SignApproval(n.current, now, []byte(thisNode), sealing.CounterPublic(sealing.DefaultCounterIndex+1), n.version)
	if err != nil {
		t.Fatal(err)
	}
	// A valid approval for an envelope bound to another key, presented
	// with an envelope that claims to be bound to the stranger.
	otherEnv := n.wrap(t, stranger)
	otherEnv.Authorization = env.Authorization

	tests := []struct {
		name      string
		env       *sealing.Envelope
		approvals []*sealing.Approval
		want      error
	}{
		{"signature over another policy", env, []*sealing.Approval{overOther}, sealing.ErrImport},
		{"signature by another key", env, []*sealing.Approval{byStranger}, sealing.ErrImport},
		{"approval by a key the blob does not name", env, []*sealing.Approval{n.approve(t, stranger, now)}, sealing.ErrNotApproved},
		{"approval for another node", env, []*sealing.Approval{n.approveFor(t, n.current, now, "node-b")}, sealing.ErrImport},
		{"approval over fewer PCRs", env, []*sealing.Approval{n.approve(t, n.current, &tpmpb.PCRs{Hash: now.GetHash(), Pcrs: map[uint32][]byte{7: now.GetPcrs()[7]}})}, sealing.ErrNotApproved},
		{"blob bound to another key", otherEnv, []*sealing.Approval{n.approve(t, n.current, now)}, sealing.ErrImport},
		{"in the TPM: signed over fewer PCRs, relabelled", env, []*sealing.Approval{fewer}, sealing.ErrImport},
		{"in the TPM: signed over another counter index", env, []*sealing.Approval{otherCounter}, sealing.ErrImport},
		{"in the TPM: for another node (policyRef)", env, []*sealing.Approval{n.approveFor(t, n.current, now, "node-b"), n.approveFor(t, n.current, now, thisNode+"x")}, sealing.ErrImport},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mustRefuse(t, n, tt.want, tt.env, tt.approvals...)
		})
	}
	mustOpen(t, n, env, n.approve(t, n.current, now))
}

// Revocation: once the node's policy counter passes an approval's version,
// that approval no longer opens; an approval re-signed at the new version
// does.
func TestAuthorizedRevocationByCounter(t *testing.T) {
	n := newAuthorizedNode(t)
	env := n.wrap(t, n.current)
	old := n.approve(t, n.current, n.state(t))
	mustOpen(t, n, env, old)

	v, err := sealing.AdvanceCounter(n.rw, sealing.DefaultCounterIndex, n.version+1)
	if err != nil || v != n.version+1 {
		t.Fatalf("AdvanceCounter = %d, %v; want %d", v, err, n.version+1)
	}
	mustRefuse(t, n, sealing.ErrImport, env, old)

	n.version = v
	mustOpen(t, n, env, n.approve(t, n.current, n.state(t)))

	// AdvanceCounter never lowers.
	if v, err := sealing.AdvanceCounter(n.rw, sealing.DefaultCounterIndex, 1); err != nil || v != n.version {
		t.Fatalf("AdvanceCounter to a lower target = %d, %v; want %d unchanged", v, err, n.version)
	}
	// A counter deleted and defined again cannot go back: the TPM starts it
	// at the highest count it ever held, so the approval of before the
	// advance still does not open.
	tpm := transport.FromReadWriter(n.rw)
	name, err := tpm2.NVName(n.counter)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.NVUndefineSpace{AuthHandle: tpm2.TPMRHOwner, NVIndex: tpm2.NamedHandle{Handle: sealing.DefaultCounterIndex, Name: *name}}).Execute(tpm); err != nil {
		t.Fatalf("NV_UndefineSpace: %v", err)
	}
	_, again, err := sealing.EnsureCounter(n.rw, sealing.DefaultCounterIndex)
	if err != nil || again < n.version {
		t.Fatalf("counter defined again = %d, %v; want at least %d", again, err, n.version)
	}
	mustRefuse(t, n, sealing.ErrImport, env, old)
	n.version = again
	if _, err := sealing.AdvanceCounter(n.rw, sealing.DefaultCounterIndex, n.version+sealing.MaxCounterSteps+1); err == nil {
		t.Fatal("AdvanceCounter took more than MaxCounterSteps steps")
	}
}

// Every approval of the current state is tried in order: one the TPM
// refuses (signed before the counter advanced) does not hide a later one
// that opens.
func TestAuthorizedTriesEveryMatchingApproval(t *testing.T) {
	n := newAuthorizedNode(t)
	env := n.wrap(t, n.current)
	old := n.approve(t, n.current, n.state(t))
	v, err := sealing.AdvanceCounter(n.rw, sealing.DefaultCounterIndex, n.version+1)
	if err != nil {
		t.Fatal(err)
	}
	n.version = v
	mustOpen(t, n, env, old, n.approve(t, n.current, n.state(t)))
	mustRefuse(t, n, sealing.ErrImport, env, old, old)
}

// Rotation: a blob bound to the current and the next signing key opens with
// approvals by either, so the next key takes over without a new release.
func TestAuthorizedRotation(t *testing.T) {
	n := newAuthorizedNode(t)
	env := n.wrap(t, n.current, n.next)
	mustOpen(t, n, env, n.approve(t, n.current, n.state(t)))
	n.extend(t, "kernel update")
	mustOpen(t, n, env, n.approve(t, n.next, n.state(t)))
	mustRefuse(t, n, sealing.ErrNotApproved, env, n.approve(t, newSigningKey(t), n.state(t)))
}

func TestAuthorizationChecks(t *testing.T) {
	k := newSigningKey(t)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sealing.SignerPublic(&p384.PublicKey); err == nil {
		t.Error("SignerPublic accepted a P-384 key")
	}
	one := signerPublic(t, k)
	badCounter := sealing.CounterPublic(sealing.DefaultCounterIndex)
	badCounter.Attributes.OwnerWrite = true
	outside := sealing.CounterPublic(0x01800000)
	sha256Bank := uint32(tpm2.TPMAlgSHA256)
	tests := []struct {
		name    string
		auth    sealing.Authorization
		wantErr string
	}{
		{"no signer", sealing.Authorization{}, "names 0 PCR-policy signers, want 1 to 8"},
		{"nine signers", sealing.Authorization{Signers: make([][]byte, 9)}, "names 9 PCR-policy signers"},
		{"signer twice", sealing.Authorization{Signers: [][]byte{one, one}}, "names a PCR-policy signer twice"},
		{"signer not a TPMT_PUBLIC", sealing.Authorization{Signers: [][]byte{{1, 2}}}, "PCR-policy signer is not a TPMT_PUBLIC"},
		{"counter not ours", sealing.Authorization{Signers: [][]byte{one}, Counter: badCounter}, "is not a keybroker policy counter"},
		{"counter outside the owner range", sealing.Authorization{Signers: [][]byte{one}, Counter: outside}, "not in the owner NV range"},
		{"no PCRs", sealing.Authorization{Bank: sha256Bank, Signers: [][]byte{one}}, "a PCR policy needs at least one PCR"},
		{"PCR 24", sealing.Authorization{Bank: sha256Bank, PCRs: []uint32{24}, Signers: [][]byte{one}}, "PCR index 24 is above 23"},
		{"PCR twice", sealing.Authorization{Bank: sha256Bank, PCRs: []uint32{7, 7}, Signers: [][]byte{one}}, "PCR 7 is selected twice"},
		{"unknown bank", sealing.Authorization{Bank: 0x99, PCRs: []uint32{7}, Signers: [][]byte{one}}, "unsupported PCR bank 0x0099"},
		{"no node", sealing.Authorization{Signers: [][]byte{one}, Node: []byte{}}, "names its node in 1 to 128 bytes, not 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.auth.Bank == 0 { // a valid selection unless the case is about it
				tt.auth.Bank, tt.auth.PCRs = sha256Bank, []uint32{7}
			}
			if tt.auth.Node == nil { // a node unless the case is about it
				tt.auth.Node = []byte(thisNode)
			}
			_, err := tt.auth.AuthPolicy()
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("AuthPolicy = %v; want %q", err, tt.wantErr)
			}
		})
	}
}
