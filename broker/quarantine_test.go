package broker

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/evidence"
	"github.com/keybroker/keybroker/broker/kube"
	"github.com/keybroker/keybroker/broker/store"
)

// fakeNodes is an API server holding Node objects by name, for the
// decision logic of quarantine; TestKubernetesQuarantine (e2e) runs it
// against a real kube-apiserver.
type fakeNodes struct {
	mu    sync.Mutex
	nodes map[string]map[string]any
	calls []string
}

func (f *fakeNodes) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, r.Method+" "+r.URL.Path)
	name := strings.TrimPrefix(r.URL.Path, "/api/v1/nodes/")
	n, ok := f.nodes[name]
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	if r.Method == http.MethodPut {
		b, _ := io.ReadAll(r.Body)
		var next map[string]any
		if err := json.Unmarshal(b, &next); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		f.nodes[name], n = next, next
	}
	json.NewEncoder(w).Encode(n)
}

func (f *fakeNodes) taints(name string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, _ := json.Marshal(f.nodes[name]["spec"])
	return string(b)
}

// Which decisions change a Node: a refusal about the node itself taints
// the Node of its last kubelet release with quarantine, an allowed one
// untaints it; a refusal before the node proved its TPM (anyone knowing
// its public EK can cause one) and a fault change nothing.
func TestQuarantineDecisions(t *testing.T) {
	api := &fakeNodes{nodes: map[string]map[string]any{"node-a": {"metadata": map[string]any{"name": "node-a"}, "spec": map[string]any{}}}}
	srv := httptest.NewTLSServer(api)
	defer srv.Close()
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("t\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	taint, _ := kube.ParseTaint(kube.DefaultTaint)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	c, err := kube.New(kube.Opts{Server: srv.URL, CAPEM: caPEM, TokenFile: token, Taint: taint})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"), store.BoltOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s := &Server{nodes: st, kube: c, log: slog.New(slog.DiscardHandler)}
	ctx := context.Background()
	const ek = "aa"
	decide := func(allowed bool, deny bool, withNode bool) *store.Receipt {
		t.Helper()
		rec := &store.Receipt{ID: store.NewReceiptID(time.Now()), Time: time.Now(), EKHash: ek, Allowed: allowed}
		o := &evidence.Outcome{}
		var ref *refusal
		var node *store.NodeRecord
		if withNode {
			// As evidence.NodeRecord makes it: the state carried over.
			node = &store.NodeRecord{EKHash: ek, LastSeen: time.Now()}
			if p, err := st.GetNode(ctx, ek); err == nil {
				node.Kubelet, node.Quarantined = p.Kubelet, p.Quarantined
			}
		}
		if allowed {
			rec.Released = []store.ReleasedItem{{Name: "kubelet", Type: "kubelet", NodeName: "node-a", Quarantine: true}}
		} else {
			o.Refusal = &evidence.Refusal{Check: "policy", Deny: deny}
			ref = &refusal{check: "policy"}
		}
		node = s.quarantine(ctx, rec, o, node, ref)
		d := &store.Decision{Receipt: rec, Node: node}
		if err := st.Record(ctx, d); err != nil {
			t.Fatal(err)
		}
		return rec
	}
	calls := func() int { api.mu.Lock(); defer api.mu.Unlock(); return len(api.calls) }

	if rec := decide(true, false, true); rec.Quarantine != nil || calls() != 0 {
		t.Fatalf("a first allowed decision: quarantine %+v, %d API calls", rec.Quarantine, calls())
	}
	if rec := decide(false, false, false); rec.Quarantine != nil || calls() != 0 {
		t.Fatalf("a refusal before the TPM's proof: quarantine %+v, %d API calls", rec.Quarantine, calls())
	}
	rec := decide(false, true, false) // e.g. the TPM counters went back: no new record
	if q := rec.Quarantine; q == nil || q.Node != "node-a" || !q.Tainted || q.Error != "" || !strings.Contains(api.taints("node-a"), `"keybroker.io/attestation"`) {
		t.Fatalf("a refusal of the node: quarantine %+v, node spec %s", q, api.taints("node-a"))
	}
	if n, _ := st.GetNode(ctx, ek); !n.Quarantined || n.Kubelet != "node-a" {
		t.Fatalf("node record after the quarantine: %+v", n)
	}
	rec = decide(false, true, true) // a policy refusal again: still tainted, once
	if q := rec.Quarantine; q == nil || !q.Tainted || strings.Count(api.taints("node-a"), "keybroker.io/attestation") != 1 {
		t.Fatalf("a second refusal: quarantine %+v, node spec %s", q, api.taints("node-a"))
	}
	// A refusal that is not about the node (here: a release that failed on
	// the broker's side, after the policies allowed) keeps the state.
	if rec := decide(false, false, true); rec.Quarantine != nil {
		t.Fatalf("a broker-side failure changed the quarantine: %+v", rec.Quarantine)
	}
	if n, _ := st.GetNode(ctx, ek); !n.Quarantined || n.Kubelet != "node-a" {
		t.Fatalf("node record after a broker-side failure: %+v", n)
	}
	rec = decide(true, false, true)
	if q := rec.Quarantine; q == nil || q.Tainted || q.Error != "" || strings.Contains(api.taints("node-a"), "keybroker.io/attestation") {
		t.Fatalf("allowed again: quarantine %+v, node spec %s", q, api.taints("node-a"))
	}
	if n, _ := st.GetNode(ctx, ek); n.Quarantined {
		t.Fatal("the node record still says quarantined")
	}
	// The Node is gone: the refusal says so, and is still recorded.
	delete(api.nodes, "node-a")
	rec = decide(false, true, true)
	if q := rec.Quarantine; q == nil || !q.Tainted || !strings.Contains(q.Error, "no such Node object") {
		t.Fatalf("a refusal of a node without a Node: quarantine %+v", q)
	}
}
