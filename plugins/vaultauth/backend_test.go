package vaultauth

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/refusaltest"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"
	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// The tests run a real node on go-tpm-tools' embedded simulator, one at a
// time (one simulator per process): they must not call t.Parallel.

// clock is a settable time source for the backend.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// env is a backend on its storage; newEnv on the same storage is a Vault
// restart.
type env struct {
	t       *testing.T
	b       *tpmAuthBackend
	storage logical.Storage
	clock   *clock
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return restart(t, &logical.InmemStorage{}, newClock())
}

// restart returns a new backend on storage, as after a Vault restart.
func restart(t *testing.T, storage logical.Storage, c *clock) *env {
	t.Helper()
	return restartOn(t, storage, c, logical.TestSystemView())
}

// restartOn is restart on a node whose system view is sys.
func restartOn(t *testing.T, storage logical.Storage, c *clock, sys logical.SystemView) *env {
	t.Helper()
	conf := logical.TestBackendConfig()
	conf.StorageView = storage
	conf.System = sys
	b := backend()
	b.now = c.now
	if err := b.Setup(context.Background(), conf); err != nil {
		t.Fatalf("setup: %v", err)
	}
	return &env{t: t, b: b, storage: storage, clock: c}
}

func (e *env) restart() *env { return restart(e.t, e.storage, e.clock) }

func (e *env) request(op logical.Operation, path string, data map[string]any) (*logical.Response, error) {
	return e.b.HandleRequest(context.Background(), &logical.Request{
		Operation: op,
		Path:      path,
		Data:      data,
		Storage:   e.storage,
		Connection: &logical.Connection{
			RemoteAddr: "127.0.0.1",
		},
	})
}

// write is a request expected to succeed.
func (e *env) write(path string, data map[string]any) *logical.Response {
	e.t.Helper()
	resp, err := e.request(logical.UpdateOperation, path, data)
	if err != nil || resp.IsError() {
		e.t.Fatalf("write %s: %v %v", path, err, resp.Error())
	}
	return resp
}

// configure trusts data's EKs (ek_allow, ek_ca) with the other settings at
// their defaults.
func (e *env) configure(data map[string]any) {
	e.t.Helper()
	e.write("config", data)
}

// node is a machine: the simulator and the agent's keys in it.
type node struct {
	t      *testing.T
	rw     io.ReadWriteCloser
	n      *agent.Node
	ekHash string
	// certificate, intermediates override what the TPM holds (the
	// simulator has no EK certificate).
	certificate   []byte
	intermediates [][]byte
}

// openNode starts a simulator with a random seed, or fixed with seed > 0.
func openNode(t *testing.T, seed int64) *node {
	t.Helper()
	var sim *simulator.Simulator
	var err error
	if seed > 0 {
		sim, err = simulator.GetWithFixedSeedInsecure(seed)
	} else {
		sim, err = simulator.Get()
	}
	if err != nil {
		t.Fatalf("unable to start the TPM simulator: %v", err)
	}
	n, err := agent.NewNode(sim, agent.NodeOpts{})
	if err != nil {
		sim.Close()
		t.Fatalf("node: %v", err)
	}
	ekHash, err := verify.EKHash(n.EK().PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	nd := &node{t: t, rw: sim, n: n, ekHash: ekHash}
	t.Cleanup(nd.close)
	return nd
}

// close flushes the node's keys, checks that nothing else was left loaded
// in the TPM, and stops the simulator.
func (n *node) close() {
	sim := n.rw.(*simulator.Simulator)
	if sim.IsClosed() {
		return
	}
	n.n.Close()
	if hs, err := client.Handles(sim, tpm2.HandleTypeTransient); err != nil || len(hs) > 0 {
		n.t.Errorf("transient TPM objects left: %v %v", hs, err)
	}
	sim.Close()
}

// pcr returns the hex SHA-256 value of a PCR.
func (n *node) pcr(idx int) string {
	n.t.Helper()
	p, err := client.ReadPCRs(n.rw, tpm2.PCRSelection{Hash: tpm2.AlgSHA256, PCRs: []int{idx}})
	if err != nil {
		n.t.Fatal(err)
	}
	return hex.EncodeToString(p.GetPcrs()[uint32(idx)])
}

// extend changes PCR idx of the SHA-256 bank, as booting something else
// would.
func (n *node) extend(idx int) {
	n.t.Helper()
	sum := sha256.Sum256([]byte("something else booted"))
	if err := tpm2.PCRExtend(n.rw, tpmutil.Handle(idx), tpm2.AlgSHA256, sum[:], ""); err != nil {
		n.t.Fatal(err)
	}
}

// challengeData is the node's challenge request as the challenge path takes it.
func (n *node) challengeData() map[string]any {
	n.t.Helper()
	req, err := n.n.ChallengeRequest()
	if err != nil {
		n.t.Fatal(err)
	}
	data := map[string]any{
		"ek_public": b64(req.GetEkPublic()),
		"ak_public": b64(req.GetAkPublic()),
	}
	if n.certificate != nil {
		data["ek_certificate"] = b64(n.certificate)
	}
	var inter []string
	for _, c := range n.intermediates {
		inter = append(inter, b64(c))
	}
	if inter != nil {
		data["ek_intermediates"] = inter
	}
	return data
}

// answer activates the challenge in the TPM and quotes with the secret: the
// login data for role, without the role when role is "".
func (n *node) answer(ch *logical.Response, role string) map[string]any {
	n.t.Helper()
	return n.answerEdited(ch, role, nil)
}

// answerEdited is answer with the quotes and event log changed by edit
// (nil: none).
func (n *node) answerEdited(ch *logical.Response, role string, edit func(*refusaltest.Answer)) map[string]any {
	n.t.Helper()
	blob, err := base64.StdEncoding.DecodeString(ch.Data["credential_blob"].(string))
	if err != nil {
		n.t.Fatal(err)
	}
	secret, err := base64.StdEncoding.DecodeString(ch.Data["encrypted_secret"].(string))
	if err != nil {
		n.t.Fatal(err)
	}
	s, err := n.n.Activate(&pb.ChallengeResponse{CredentialBlob: blob, EncryptedSecret: secret})
	if err != nil {
		n.t.Fatalf("activate: %v", err)
	}
	quotes, err := n.n.Quote(s)
	if err != nil {
		n.t.Fatalf("quote: %v", err)
	}
	// The EK and AK material of the challenge request, presented again.
	data := n.challengeData()
	data["challenge_id"] = ch.Data["challenge_id"]
	if edit != nil {
		a := (&refusaltest.Answer{Quotes: quotes}).Clone()
		edit(a)
		quotes = a.Quotes
		if a.EventLog != nil {
			data["event_log"] = b64(a.EventLog)
		}
	}
	data["quotes"] = quotesData(quotes)
	if role != "" {
		data["role"] = role
	}
	return data
}

// quotesData is quotes as the login path takes them.
func quotesData(quotes []*pb.Quote) []any {
	var out []any
	for _, q := range quotes {
		values := map[string]any{}
		for idx, v := range q.GetPcrs().GetValues() {
			values[strconv.Itoa(int(idx))] = b64(v)
		}
		out = append(out, map[string]any{
			"attest":    b64(q.GetAttest()),
			"signature": b64(q.GetSignature()),
			"pcrs":      map[string]any{"hash_alg": int(q.GetPcrs().GetHashAlg()), "values": values},
		})
	}
	return out
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// challenge asks e for a challenge for n and fails the test if refused.
func (e *env) challenge(n *node) *logical.Response {
	e.t.Helper()
	return e.write("challenge", n.challengeData())
}

// login attests n with role: a challenge, then the answer.
func (e *env) login(n *node, role string) (*logical.Response, error) {
	e.t.Helper()
	return e.request(logical.UpdateOperation, "login", n.answer(e.challenge(n), role))
}

// pcrPolicy is a role policy selecting ekHash and requiring PCR 7's
// SHA-256 value.
func pcrPolicy(ekHash, pcr7 string) string {
	return fmt.Sprintf(`policy "boot" {
  select { ek_hashes = [%q] }
  require = ["pcrs.sha256[7] == '%s'"]
}
`, ekHash, pcr7)
}

// wantDenied checks a refused login: permission denied, no auth, and a
// caller-visible message that names the check and nothing of the policy.
func wantDenied(t *testing.T, resp *logical.Response, err error, want string) {
	t.Helper()
	if err != logical.ErrPermissionDenied {
		t.Fatalf("err = %v (resp %v), want permission denied", err, resp)
	}
	if resp != nil && resp.Auth != nil {
		t.Fatal("a refused login carries auth")
	}
	if msg := resp.Error(); msg == nil || !strings.Contains(msg.Error(), want) {
		t.Fatalf("message = %v, want it to contain %q", msg, want)
	}
}

func TestPerformanceStandbyForwards(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	setup(t, e, n)
	// A login on the active node leaves the marker of its challenge.
	if resp, err := e.request(logical.UpdateOperation, "login", n.answer(e.challenge(n), "web")); err != nil || resp.Auth == nil {
		t.Fatalf("login: %v %v", err, resp.Error())
	}
	data := n.answer(e.challenge(n), "web")

	// The same storage seen from a performance standby: challenge and
	// login are forwarded to the active node (ErrReadOnly asks Vault to
	// forward), which alone issues challenges and uses them up, and so is
	// signing the receipt chain's head, which the active node extends.
	sys := logical.TestSystemView()
	sys.ReplicationStateVal = consts.ReplicationPerformanceStandby
	standby := restartOn(t, e.storage, e.clock, sys)
	for path, d := range map[string]map[string]any{"challenge": n.challengeData(), "login": data, "checkpoints": nil} {
		if _, err := standby.request(logical.UpdateOperation, path, d); err != logical.ErrReadOnly {
			t.Errorf("%s on a performance standby: %v, want it forwarded", path, err)
		}
	}
	// The standby's periodic function leaves the markers to the active node.
	e.clock.add(time.Hour)
	if err := standby.b.periodic(t.Context(), &logical.Request{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	if keys, _ := e.storage.List(t.Context(), consumedPrefix); len(keys) != 1 {
		t.Errorf("markers = %v after the standby's periodic function", keys)
	}

	if !slices.Equal(e.b.PathsSpecial.Unauthenticated, []string{"login", "challenge"}) {
		t.Errorf("Unauthenticated = %v", e.b.PathsSpecial.Unauthenticated)
	}
	// The challenge keys stay in the cluster whose markers they go with,
	// and are seal-wrapped like the config.
	// So do the receipts, their chain and its checkpoints; the checkpoint
	// key is seal-wrapped too.
	if !slices.Equal(e.b.PathsSpecial.LocalStorage, []string{challengeKeysPath, consumedPrefix, nodePrefix, ticketPrefix, receiptPrefix, deniedPrefix, eventLogPrefix,
		chainHeadPath, chainSeqPrefix, checkpointPrefix, checkpointKeyPath}) {
		t.Errorf("LocalStorage = %v", e.b.PathsSpecial.LocalStorage)
	}
	if !slices.Equal(e.b.PathsSpecial.SealWrapStorage, []string{configPath, challengeKeysPath, checkpointKeyPath}) {
		t.Errorf("SealWrapStorage = %v", e.b.PathsSpecial.SealWrapStorage)
	}
}

// TestRecordLockSharedWithNode: storage locks are shared by hash, so a
// challenge's marker may have the lock of the node record written with it;
// Record must take that lock once.
func TestRecordLockSharedWithNode(t *testing.T) {
	e := newEnv(t)
	st := e.b.store(e.storage)
	nodeLock := locksutil.LockForKey(e.b.storageLocks, nodePrefix+hashA)
	id := ""
	for i := 0; id == ""; i++ {
		if c := fmt.Sprintf("challenge-%d", i); locksutil.LockForKey(e.b.storageLocks, consumedPrefix+c) == nodeLock {
			id = c
		}
	}
	now := e.clock.now()
	decision := func() *store.Decision {
		return &store.Decision{ChallengeID: id, ChallengeExpiry: now.Add(time.Minute),
			Receipt: &store.Receipt{EKHash: hashA}, Node: &store.NodeRecord{EKHash: hashA, LastSeen: now}}
	}
	first := decision()
	done := make(chan error, 1)
	go func() { done <- st.Record(t.Context(), first) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("record: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("recording a decision whose marker's lock is the node record's deadlocked")
	}
	if rec, err := st.GetNode(t.Context(), hashA); err != nil || rec.EKHash != hashA || !rec.FirstSeen.Equal(now) {
		t.Errorf("node record = %+v, %v", rec, err)
	}
	// The receipt is not kept, but named as the broker names receipts.
	if r := first.Receipt; r.ID == "" || r.Time.IsZero() || first.Node.LastReceiptID != r.ID {
		t.Errorf("receipt = %+v, node's last receipt %q", r, first.Node.LastReceiptID)
	}
	// A second decision on the challenge writes nothing.
	d := decision()
	d.Node.LastSeen = now.Add(time.Second)
	if err := st.Record(t.Context(), d); !errors.Is(err, store.ErrConsumed) {
		t.Fatalf("second record: %v, want ErrConsumed", err)
	}
	if rec, _ := st.GetNode(t.Context(), hashA); !rec.LastSeen.Equal(now) {
		t.Errorf("a refused record wrote the node record: last seen %v", rec.LastSeen)
	}
}
