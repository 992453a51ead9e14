package broker_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/brokertest"
	"github.com/keybroker/keybroker/internal/etcdtest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// opEnv is a node (brokertest.Env: a simulated TPM and a policy allowing it,
// with a node SVID and workload entries) and a real broker serving it.
type opEnv struct {
	*brokertest.Env
	r   *broker.Running
	cfg *broker.Config
}

// startOperatorBroker runs a broker (broker.Start) trusting e's node, on
// the bolt store, or on the store block storeBlock when set.
func startOperatorBroker(t *testing.T, storeBlock string) *opEnv {
	t.Helper()
	e := brokertest.New(t, brokertest.Opts{SPIFFE: true})
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.hcl"), []byte(e.PolicySource), 0o600); err != nil {
		t.Fatal(err)
	}
	src := fmt.Sprintf("listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\npolicies = [\"p.hcl\"]\npolicy_poll_interval = \"0\"\n"+
		"ek_allow = [%q]\nspiffe {\n  trust_domain = %q\n}\n"+
		"limits {\n  challenge_per_ek = \"600/m\"\n  attest_per_ek = \"600/m\"\n  outstanding_challenges_per_ek = 0\n}\n%s", e.EKHash, brokertest.TrustDomain, storeBlock)
	cfg, err := broker.ParseConfig([]byte(src), filepath.Join(dir, "broker.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := broker.Start(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return &opEnv{Env: e, r: r, cfg: cfg}
}

// attest runs Challenge and Attest on the broker; tamper flips a PCR value
// the quote covers, a refusal that deny-lists the node.
func (o *opEnv) attest(t *testing.T, tamper bool) (*pb.AttestResponse, error) {
	t.Helper()
	ctx := context.Background()
	req, err := o.Node.ChallengeRequest()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := o.r.Server.Challenge(ctx, req)
	if err != nil {
		t.Fatalf("Challenge: %v", err)
	}
	secret, err := o.Node.Activate(ch)
	if err != nil {
		t.Fatal(err)
	}
	areq := o.AttestRequest(t, ch, secret)
	if tamper {
		areq.GetQuotes()[0].GetPcrs().GetValues()[0][0] ^= 1
	}
	return o.r.Server.Attest(ctx, areq)
}

func (o *opEnv) attestOK(t *testing.T) *x509svid.SVID {
	t.Helper()
	resp, err := o.attest(t, false)
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	svid, _ := o.OpenNodeSVID(t, resp, "node-svid")
	return svid
}

func (o *opEnv) denyList(t *testing.T) {
	t.Helper()
	if _, err := o.attest(t, true); err == nil {
		t.Fatal("a tampered quote was allowed")
	}
	if _, err := o.r.Store().GetDenial(context.Background(), o.EKHash); err != nil {
		t.Fatalf("the node is not deny-listed after a tampered quote: %v", err)
	}
}

func (o *opEnv) issueWeb(t *testing.T, svid *x509svid.SVID) error {
	_, err := o.r.Server.IssueWorkloadX509SVIDs(asPeer(svid), &pb.IssueWorkloadX509SVIDsRequest{Csrs: []*pb.WorkloadCSR{csrFor(t, webID)}})
	return err
}

// receiptCount counts the store's receipts.
func receiptCount(t *testing.T, st store.Receipts) int {
	t.Helper()
	rs, err := st.ListReceipts(context.Background(), store.ListOpts{Limit: store.MaxListLimit})
	if err != nil {
		t.Fatal(err)
	}
	return len(rs)
}

// wantAction checks an operator action's receipt, and that it is the
// store's newest.
func wantAction(t *testing.T, st store.Receipts, r store.Receipt, action, ek, reason string) {
	t.Helper()
	if r.ID == "" || r.Action != action || r.EKHash != ek || r.Reason != reason || r.Operator != "alice" || r.Allowed || r.Check != "" {
		t.Fatalf("receipt = %+v; want %q of %s by alice, reason %q, not allowed", r, action, ek, reason)
	}
	got, err := st.GetReceipt(context.Background(), r.ID)
	if err != nil || got.Action != action || got.Reason != reason || got.Operator != "alice" {
		t.Fatalf("stored receipt %s = %+v, %v", r.ID, got, err)
	}
}

// TestOperatorForgetAllow forgets and allows a node through a running
// bolt broker's admin socket, then on its store file once it stopped.
func TestOperatorForgetAllow(t *testing.T) {
	o := startOperatorBroker(t, "")
	checkForgetAllow(t, o, o.r.Store)
	o.r.Stop()
	checkStopped(t, o)
}

// TestOperatorForgetAllowEtcd does the same on an etcd store, written
// directly while the broker runs.
func TestOperatorForgetAllowEtcd(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Opts{})
	eps := `["` + strings.Join(c.Endpoints(), `", "`) + `"]`
	o := startOperatorBroker(t, "store \"etcd\" {\n  endpoints = "+eps+"\n}\n")
	checkForgetAllow(t, o, o.r.Store)
}

func checkForgetAllow(t *testing.T, o *opEnv, st func() store.Backend) {
	ctx := context.Background()
	svid := o.attestOK(t)
	first, err := st().GetNode(ctx, o.EKHash)
	if err != nil {
		t.Fatal(err)
	}

	// allow lifts the deny list: the node's SVID gets workload SVIDs again.
	o.denyList(t)
	wantStatus(t, o.issueWeb(t, svid), codes.PermissionDenied, "deny list")
	r, err := broker.AllowNode(ctx, o.cfg, o.EKHash[:broker.MinEKHashPrefix], "checked the boot by hand", "alice")
	if err != nil {
		t.Fatalf("AllowNode: %v", err)
	}
	wantAction(t, st(), r, broker.ActionAllow, o.EKHash, "checked the boot by hand")
	if _, err := st().GetDenial(ctx, o.EKHash); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetDenial after allow: %v; want ErrNotFound", err)
	}
	if err := o.issueWeb(t, svid); err != nil {
		t.Fatalf("workload SVID after allow: %v", err)
	}
	n := receiptCount(t, st())
	if _, err := broker.AllowNode(ctx, o.cfg, o.EKHash, "again", "alice"); !errors.Is(err, broker.ErrNotDenied) {
		t.Errorf("AllowNode of a node not on the deny list: %v; want ErrNotDenied", err)
	}

	// Refusals write nothing.
	unknown := strings.Repeat("0", 64)
	if strings.HasPrefix(o.EKHash, "0") {
		unknown = strings.Repeat("f", 64)
	}
	for _, ref := range []string{unknown, unknown[:12]} {
		if _, err := broker.ForgetNode(ctx, o.cfg, ref, "gone", "alice"); !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), unknown[:12]) {
			t.Errorf("ForgetNode of unknown %s: %v; want ErrNotFound naming it", ref, err)
		}
		if _, err := broker.AllowNode(ctx, o.cfg, ref, "gone", "alice"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("AllowNode of unknown %s: %v; want ErrNotFound", ref, err)
		}
	}
	if _, err := broker.ForgetNode(ctx, o.cfg, o.EKHash, "", "alice"); !errors.Is(err, broker.ErrInvalidAction) {
		t.Errorf("ForgetNode without a reason: %v; want ErrInvalidAction", err)
	}
	if _, err := broker.ForgetNode(ctx, o.cfg, "xyz", "why", "alice"); !errors.Is(err, broker.ErrInvalidEKHash) {
		t.Errorf("ForgetNode of a malformed hash: %v; want ErrInvalidEKHash", err)
	}
	if got := receiptCount(t, st()); got != n {
		t.Fatalf("refused actions wrote %d receipts", got-n)
	}
	checkAmbiguous(t, o, st())

	// forget deletes the record, its SVID index entries and its deny-list
	// entry; the next attestation is a first one.
	o.attestOK(t)
	svid = o.attestOK(t)
	o.denyList(t)
	time.Sleep(10 * time.Millisecond)
	r, err = broker.ForgetNode(ctx, o.cfg, o.EKHash, "TPM2_Clear on the node", "alice")
	if err != nil {
		t.Fatalf("ForgetNode: %v", err)
	}
	wantAction(t, st(), r, broker.ActionForget, o.EKHash, "TPM2_Clear on the node")
	if _, err := st().GetNode(ctx, o.EKHash); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetNode after forget: %v; want ErrNotFound", err)
	}
	if _, err := st().GetDenial(ctx, o.EKHash); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetDenial after forget: %v; want ErrNotFound", err)
	}
	if _, err := st().NodeBySVIDSerial(ctx, svid.Certificates[0].SerialNumber.Text(16)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("NodeBySVIDSerial after forget: %v; want ErrNotFound", err)
	}
	wantStatus(t, o.issueWeb(t, svid), codes.PermissionDenied, "node authentication")
	o.attestOK(t)
	again, err := st().GetNode(ctx, o.EKHash)
	if err != nil || !again.FirstSeen.Equal(again.LastSeen) || !again.FirstSeen.After(r.Time) || !first.FirstSeen.Before(r.Time) {
		t.Fatalf("record after forget and attest = first seen %s, last seen %s, %v; want a first attestation after %s (was first seen %s)",
			again.FirstSeen, again.LastSeen, err, r.Time, first.FirstSeen)
	}
}

// checkAmbiguous adds two records whose EK hashes share 10 hex digits: the
// prefix is refused as ambiguous, one digit more names one.
func checkAmbiguous(t *testing.T, o *opEnv, st store.Backend) {
	t.Helper()
	ctx := context.Background()
	a, b := "abcdef0123"+strings.Repeat("1", 54), "abcdef0123"+strings.Repeat("2", 54)
	for _, ek := range []string{a, b} {
		d := &store.Decision{Receipt: &store.Receipt{EKHash: ek}, Node: &store.NodeRecord{EKHash: ek, LastSeen: time.Now()}}
		if err := st.Record(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	n := receiptCount(t, st)
	if _, err := broker.ForgetNode(ctx, o.cfg, a[:10], "why", "alice"); !errors.Is(err, broker.ErrAmbiguousEKHash) || !strings.Contains(err.Error(), b) {
		t.Errorf("ForgetNode of an ambiguous prefix: %v; want ErrAmbiguousEKHash naming both", err)
	}
	if got := receiptCount(t, st); got != n {
		t.Fatalf("an ambiguous forget wrote %d receipts", got-n)
	}
	if r, err := broker.ForgetNode(ctx, o.cfg, b[:11], "test record", "alice"); err != nil || r.EKHash != b {
		t.Fatalf("ForgetNode of a unique prefix = %s, %v; want %s", r.EKHash, err, b)
	}
	if _, err := broker.ForgetNode(ctx, o.cfg, a, "test record", "alice"); err != nil {
		t.Fatal(err)
	}
}

// checkStopped forgets the node of a stopped bolt broker, in its store file.
func checkStopped(t *testing.T, o *opEnv) {
	ctx := context.Background()
	r, err := broker.ForgetNode(ctx, o.cfg, o.EKHash, "decommissioned", "alice")
	if err != nil {
		t.Fatalf("ForgetNode on the stopped broker's store: %v", err)
	}
	st, err := broker.OpenStore(ctx, o.cfg, broker.StoreOpts{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	wantAction(t, st, r, broker.ActionForget, o.EKHash, "decommissioned")
	if _, err := st.GetNode(ctx, o.EKHash); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetNode after forget on the file: %v; want ErrNotFound", err)
	}
}
