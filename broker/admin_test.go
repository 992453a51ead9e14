package broker_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/evidence"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/brokertest"
	"github.com/keybroker/keybroker/internal/tpmtest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// TestAdminNodes reads node records through a running broker's admin socket
// and, once it stopped, from its store file: the same records either way.
func TestAdminNodes(t *testing.T) {
	rw := tpmtest.Open(t)
	node, err := agent.NewNode(rw, agent.NodeOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	ekHash, err := node.EKHash()
	if err != nil {
		t.Fatal(err)
	}
	r := brokertest.Start(t, brokertest.StartOpts{EKHashes: []string{ekHash}, Policy: `policy "p" {
  select { ek_hashes = ["` + ekHash + `"] }
  require = ["!history.rebooted"]
  release "r" {
    type = "tls_certificate"
    common_name = "x"
  }
}`})
	ctx := context.Background()

	if ns, err := broker.ListNodes(ctx, &broker.Config{DataDir: r.DataDir()}, store.ListNodesOpts{}); err != nil || len(ns) != 0 {
		t.Fatalf("ListNodes before any attestation = %v, %v; want none", ns, err)
	}
	req, err := node.ChallengeRequest()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := r.Server.Challenge(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := node.Activate(ch)
	if err != nil {
		t.Fatal(err)
	}
	quotes, err := node.Quote(secret)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := r.Server.Attest(ctx, &pb.AttestRequest{ChallengeId: ch.GetChallengeId(), Quotes: quotes, EkPublic: req.EkPublic, AkPublic: req.AkPublic})
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}

	read := func(t *testing.T, how string) string {
		t.Helper()
		ns, err := broker.ListNodes(ctx, &broker.Config{DataDir: r.DataDir()}, store.ListNodesOpts{})
		if err != nil {
			t.Fatalf("ListNodes %s: %v", how, err)
		}
		if len(ns) != 1 || ns[0].EKHash != ekHash || ns[0].LastReceiptID != resp.GetReceiptId() || len(ns[0].Evidence.Quotes) == 0 {
			t.Fatalf("ListNodes %s = %d records; want the node's, with receipt %s and its evidence", how, len(ns), resp.GetReceiptId())
		}
		n, err := broker.GetNode(ctx, &broker.Config{DataDir: r.DataDir()}, ekHash)
		if err != nil {
			t.Fatalf("GetNode %s: %v", how, err)
		}
		one, _ := json.Marshal(n)
		listed, _ := json.Marshal(ns[0])
		if string(one) != string(listed) {
			t.Errorf("GetNode %s differs from ListNodes", how)
		}
		if p, err := broker.GetNode(ctx, &broker.Config{DataDir: r.DataDir()}, ekHash[:broker.MinEKHashPrefix]); err != nil || p.EKHash != ekHash {
			t.Errorf("GetNode %s by the EK hash's first %d digits = %s, %v; want the node", how, broker.MinEKHashPrefix, p.EKHash, err)
		}
		unknown := "01234567"
		if strings.HasPrefix(ekHash, unknown) {
			unknown = "76543210"
		}
		if _, err := broker.GetNode(ctx, &broker.Config{DataDir: r.DataDir()}, unknown); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("GetNode %s of an unknown node: got %v, want ErrNotFound", how, err)
		}
		if _, err := broker.GetNode(ctx, &broker.Config{DataDir: r.DataDir()}, ""); !errors.Is(err, broker.ErrInvalidEKHash) {
			t.Errorf("GetNode %s of an empty hash: got %v, want ErrInvalidEKHash", how, err)
		}
		if _, err := evidence.Reverify(n.Evidence, verify.Opts{Trust: verify.Trust{EKHashes: []string{ekHash}}}); err != nil {
			t.Errorf("Reverify of the evidence read %s: %v", how, err)
		}
		return string(one)
	}
	live := read(t, "through the admin socket")
	r.Stop()
	if stopped := read(t, "from the store file"); stopped != live {
		t.Errorf("the stopped broker's store holds another record than the running broker served")
	}
}
