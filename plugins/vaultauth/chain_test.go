package vaultauth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/broker/receiptchain"
	"github.com/keybroker/keybroker/broker/store"
)

// decide records a decision of node ek on challenge ch: a refusal that
// deny-lists the node, so that Record writes the marker, the seq index
// entry, the receipt, the head, the node record and the deny-list entry,
// in this order.
func decide(ctx context.Context, st *vaultStore, ch, ek string) error {
	now := st.now()
	return st.Record(ctx, &store.Decision{ChallengeID: ch, ChallengeExpiry: now.Add(time.Minute),
		Receipt: &store.Receipt{EKHash: ek, Check: "policy"}, Deny: store.DenyAdd,
		Node: &store.NodeRecord{EKHash: ek, LastSeen: now}})
}

// chainExport reads the chain through the auth method's paths as
// "keybroker receipts export --vault-mount" does (after signing the
// head): the lines of an export, and the checkpoint key.
func (e *env) chainExport() ([][]byte, receiptchain.Keys) {
	e.t.Helper()
	if _, err := e.request(logical.UpdateOperation, "checkpoints", nil); err != nil {
		e.t.Fatalf("sign the head: %v", err)
	}
	var lines [][]byte
	resp, err := e.request(logical.ListOperation, "receipts/", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	ids, _ := resp.Data["keys"].([]string)
	for _, id := range ids {
		r, err := e.request(logical.ReadOperation, "receipts/"+id, nil)
		if err != nil || r == nil {
			e.t.Fatalf("read receipt %s: %v", id, err)
		}
		enc, ok := r.Data["encoded"].([]byte)
		if !ok {
			e.t.Fatalf("receipt %s has no encoding: %v", id, r.Data)
		}
		lines = append(lines, enc)
	}
	resp, err = e.request(logical.ListOperation, "checkpoints/", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	seqs, _ := resp.Data["keys"].([]string)
	for _, seq := range seqs {
		r, err := e.request(logical.ReadOperation, "checkpoints/"+seq, nil)
		if err != nil || r == nil {
			e.t.Fatalf("read checkpoint %s: %v", seq, err)
		}
		n, _ := strconv.ParseUint(r.Data["seq"].(string), 10, 64)
		at, _ := time.Parse(time.RFC3339Nano, r.Data["time"].(string))
		line, err := receiptchain.CheckpointLine(store.Checkpoint{Seq: n, Head: r.Data["head"].(string), Time: at,
			KeyID: r.Data["key_id"].(string), Signature: r.Data["signature"].([]byte)})
		if err != nil {
			e.t.Fatal(err)
		}
		lines = append(lines, line)
	}
	return lines, e.checkpointKeys()
}

// checkpointKeys reads checkpoint-key.
func (e *env) checkpointKeys() receiptchain.Keys {
	e.t.Helper()
	r, err := e.request(logical.ReadOperation, "checkpoint-key", nil)
	if err != nil || r == nil {
		e.t.Fatalf("read checkpoint-key: %v", err)
	}
	keys := receiptchain.Keys{}
	if err := receiptchain.ParseKeys([]byte(r.Data["public_key"].(string)), keys); err != nil {
		e.t.Fatal(err)
	}
	return keys
}

// verifyChain verifies what chainExport reads.
func (e *env) verifyChain() receiptchain.Report {
	e.t.Helper()
	lines, keys := e.chainExport()
	v := receiptchain.NewVerifier(keys)
	for _, l := range lines {
		v.Add(l)
	}
	return v.Report()
}

// nthPut fails the n-th Put (counting from 1) and those after it, as a
// storage that went away; with crash it panics instead, as a plugin
// process that died there.
type nthPut struct {
	logical.Storage
	n, puts int
	crash   bool
	failed  string // the key of the Put that failed
}

func (f *nthPut) Put(ctx context.Context, e *logical.StorageEntry) error {
	f.puts++
	if f.puts < f.n {
		return f.Storage.Put(ctx, e)
	}
	if f.failed == "" {
		f.failed = e.Key
	}
	if f.crash {
		panic(errCrash)
	}
	return errors.New("storage unavailable")
}

// A write that fails, or a crash, at any step of recording a decision
// neither forks the chain nor leaves a gap: the next decision rolls the
// head forward over a receipt whose head was not written, or takes the
// seq of a receipt that was never written.
func TestChainSurvivesEveryFailedWrite(t *testing.T) {
	steps := []struct {
		failed string // the key prefix of the n-th Put
		kept   bool   // the decision's receipt is in the chain
	}{
		{consumedPrefix, false}, {chainSeqPrefix, false}, {receiptPrefix, false},
		{chainHeadPath, true}, {nodePrefix, true}, {deniedPrefix, true},
	}
	for i, step := range steps {
		for _, crash := range []bool{false, true} {
			t.Run(fmt.Sprintf("put %d (%s) crash=%v", i+1, step.failed, crash), func(t *testing.T) {
				e := newEnv(t)
				ctx := t.Context()
				st := e.b.store(e.storage)
				for j := range 2 {
					e.clock.add(time.Millisecond)
					if err := decide(ctx, st, fmt.Sprintf("ch%d", j), "ek-a"); err != nil {
						t.Fatal(err)
					}
				}
				e.clock.add(time.Millisecond)
				failing := &nthPut{Storage: e.storage, n: i + 1, crash: crash}
				func() {
					defer func() {
						if r := recover(); r != nil && r != errCrash {
							panic(r)
						}
					}()
					if err := decide(ctx, e.b.store(failing), "ch2", "ek-b"); err == nil {
						t.Fatal("a decision whose write failed was recorded")
					}
				}()
				if !strings.HasPrefix(failing.failed, step.failed) {
					t.Fatalf("put %d wrote %q, want %s…", i+1, failing.failed, step.failed)
				}
				// After a crash the plugin starts again.
				e = e.restart()
				e.clock.add(time.Millisecond)
				if err := decide(ctx, e.b.store(e.storage), "ch3", "ek-c"); err != nil {
					t.Fatalf("the next decision: %v", err)
				}
				rep := e.verifyChain()
				want := 3
				if step.kept {
					want = 4
				}
				if !rep.OK() || rep.Receipts != want || rep.First != 1 || rep.Last != uint64(want) || rep.Covered != uint64(want) {
					t.Fatalf("chain %+v, want %d receipts, seq 1 to %d, verified", rep, want, want)
				}
				ids, _ := e.storage.List(ctx, receiptPrefix)
				if len(ids) != want {
					t.Fatalf("receipts stored %v, want %d: a receipt outside the chain", ids, want)
				}
			})
		}
	}
}

// Concurrent logins extend one chain without a gap or a fork.
func TestChainConcurrentDecisions(t *testing.T) {
	e := newEnv(t)
	st := e.b.store(e.storage)
	const workers, each = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				errs <- decide(t.Context(), st, fmt.Sprintf("ch%d-%d", w, i), fmt.Sprintf("ek-%d", w))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	rep := e.verifyChain()
	if !rep.OK() || rep.Receipts != workers*each || rep.Last != workers*each || rep.Covered != workers*each {
		t.Fatalf("chain %+v, problems %v", rep, rep.Problems)
	}
}

// The chain's stored bytes, changed behind the auth method's back: the
// verifier names the first bad receipt.
func TestChainTampering(t *testing.T) {
	const n = 12
	tests := []struct {
		name      string
		tamper    func(t *testing.T, e *env)
		wantFirst string
	}{
		{name: "intact"},
		{name: "one byte changed", tamper: func(t *testing.T, e *env) {
			rewriteSeq(t, e, 7, func(v []byte) []byte { return replaceOnce(t, v, `"check":"policy"`, `"check":"polica"`) })
		}, wantFirst: "receipt seq 7 ("},
		{name: "one deleted", tamper: func(t *testing.T, e *env) { rewriteSeq(t, e, 7, nil) }, wantFirst: "receipt seq 7: missing"},
		{name: "newest deleted", tamper: func(t *testing.T, e *env) { rewriteSeq(t, e, n, nil) },
			wantFirst: fmt.Sprintf("receipt seq %d: missing: a signed checkpoint covers seq %d", n, n)},
		{name: "reordered", tamper: func(t *testing.T, e *env) {
			rewriteSeq(t, e, 7, func(v []byte) []byte { return replaceOnce(t, v, `"seq":7,`, `"seq":8,`) })
			rewriteSeq(t, e, 8, func(v []byte) []byte { return replaceOnce(t, v, `"seq":8,`, `"seq":7,`) })
		}, wantFirst: "receipt seq 7 ("},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			st := e.b.store(e.storage)
			for i := range n {
				e.clock.add(time.Millisecond)
				if err := decide(t.Context(), st, fmt.Sprintf("ch%d", i), "ek-a"); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := e.request(logical.UpdateOperation, "checkpoints", nil); err != nil {
				t.Fatal(err)
			}
			if tt.tamper != nil {
				tt.tamper(t, e)
			}
			rep := e.verifyChain()
			switch {
			case tt.wantFirst == "" && (!rep.OK() || rep.Receipts != n || rep.Covered != n):
				t.Fatalf("report %+v, want %d receipts covered", rep, n)
			case tt.wantFirst != "" && rep.OK():
				t.Fatalf("verified, want %q", tt.wantFirst)
			case tt.wantFirst != "" && !strings.HasPrefix(rep.Problems[0].String(), tt.wantFirst):
				t.Errorf("first problem = %q, want %q (all: %v)", rep.Problems[0], tt.wantFirst, rep.Problems)
			}
		})
	}
}

func replaceOnce(t *testing.T, v []byte, from, to string) []byte {
	t.Helper()
	out := bytes.Replace(v, []byte(from), []byte(to), 1)
	if bytes.Equal(out, v) {
		t.Fatalf("%s not in %s", from, v)
	}
	return out
}

// rewriteSeq rewrites the stored receipt of seq with edit, or deletes it
// (edit nil).
func rewriteSeq(t *testing.T, e *env, seq uint64, edit func([]byte) []byte) {
	t.Helper()
	ctx := t.Context()
	idx, err := e.storage.Get(ctx, seqKey(chainSeqPrefix, seq))
	if err != nil || idx == nil {
		t.Fatalf("seq %d not indexed: %v", seq, err)
	}
	key := receiptPrefix + string(idx.Value)
	if edit == nil {
		if err := e.storage.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
		return
	}
	raw, err := e.storage.Get(ctx, key)
	if err != nil || raw == nil {
		t.Fatalf("receipt of seq %d: %v", seq, err)
	}
	if err := e.storage.Put(ctx, &logical.StorageEntry{Key: key, Value: edit(raw.Value)}); err != nil {
		t.Fatal(err)
	}
}

// Checkpoints come every defaultCheckpointEvery receipts without waiting for the
// periodic function, and from the periodic function once
// defaultCheckpointInterval passed; the key is made once, kept seal-wrapped and
// survives a restart.
func TestCheckpointSchedule(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	st := e.b.store(e.storage)
	for i := range defaultCheckpointEvery + 1 {
		if err := decide(ctx, st, fmt.Sprintf("ch%d", i), "ek-a"); err != nil {
			t.Fatal(err)
		}
	}
	cps, err := st.ListCheckpoints(ctx, 0, 0)
	if err != nil || len(cps) != 1 || cps[0].Seq != defaultCheckpointEvery {
		t.Fatalf("checkpoints after %d receipts: %+v, %v; want one of seq %d", defaultCheckpointEvery+1, cps, err, defaultCheckpointEvery)
	}
	keys := e.checkpointKeys()
	if err := keys.VerifyCheckpoint(cps[0]); err != nil {
		t.Fatal(err)
	}

	// The periodic function: not yet due, then due.
	periodic := func() {
		t.Helper()
		if err := e.b.periodic(ctx, &logical.Request{Storage: e.storage}); err != nil {
			t.Fatalf("periodic: %v", err)
		}
	}
	periodic()
	if cps, _ := st.ListCheckpoints(ctx, defaultCheckpointEvery, 0); len(cps) != 0 {
		t.Fatalf("a checkpoint before it was due: %+v", cps)
	}
	e.clock.add(defaultCheckpointInterval)
	periodic()
	if cps, _ := st.ListCheckpoints(ctx, defaultCheckpointEvery, 0); len(cps) != 1 || cps[0].Seq != defaultCheckpointEvery+1 {
		t.Fatalf("checkpoints after the interval: %+v; want seq %d", cps, defaultCheckpointEvery+1)
	}

	special := e.b.PathsSpecial
	if raw, err := e.storage.Get(ctx, checkpointKeyPath); err != nil || raw == nil ||
		!slices.Contains(special.SealWrapStorage, checkpointKeyPath) || !slices.Contains(special.LocalStorage, checkpointKeyPath) {
		t.Fatalf("stored checkpoint key %v, %v: want it kept, seal-wrapped, local", raw != nil, err)
	}
	again := e.restart()
	if got := again.checkpointKeys(); len(got) != 1 || got[cps[0].KeyID] == nil {
		t.Fatalf("the checkpoint key changed on restart: %v", got)
	}
	// A restarted backend signs a head not signed yet on its first look.
	if err := decide(ctx, again.b.store(e.storage), "after-restart", "ek-a"); err != nil {
		t.Fatal(err)
	}
	if err := again.b.periodic(ctx, &logical.Request{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	if cps, _ := st.ListCheckpoints(ctx, defaultCheckpointEvery+1, 0); len(cps) != 1 || cps[0].Seq != defaultCheckpointEvery+2 {
		t.Fatalf("checkpoints after a restart: %+v", cps)
	}
}

// The schedule follows the config: checkpoint_every and
// checkpoint_interval, read back as written.
func TestCheckpointScheduleConfigured(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	e.configure(map[string]any{"ek_allow": hashA, "checkpoint_every": 3, "checkpoint_interval": "10m"})
	if resp, err := e.request(logical.ReadOperation, "config", nil); err != nil ||
		resp.Data["checkpoint_every"] != uint64(3) || resp.Data["checkpoint_interval"] != int64(600) {
		t.Fatalf("config read: %v, %v", resp, err)
	}
	st := e.b.store(e.storage)
	for i := range 7 {
		if err := decide(ctx, st, fmt.Sprintf("ch%d", i), "ek-a"); err != nil {
			t.Fatal(err)
		}
	}
	seqs := func() (out []uint64) {
		cps, err := st.ListCheckpoints(ctx, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cps {
			out = append(out, c.Seq)
		}
		return out
	}
	if got := seqs(); !slices.Equal(got, []uint64{3, 6}) {
		t.Fatalf("checkpoints of seqs %v, want 3 and 6", got)
	}
	e.clock.add(defaultCheckpointInterval)
	if err := e.b.periodic(ctx, &logical.Request{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	if got := seqs(); len(got) != 2 {
		t.Fatalf("checkpoints of seqs %v before checkpoint_interval passed", got)
	}
	e.clock.add(10 * time.Minute)
	if err := e.b.periodic(ctx, &logical.Request{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	if got := seqs(); !slices.Equal(got, []uint64{3, 6, 7}) {
		t.Fatalf("checkpoints of seqs %v, want 3, 6 and 7", got)
	}
}
