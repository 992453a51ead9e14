package broker

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/keybroker/keybroker/broker/receiptchain"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/store/storetest"
	"github.com/keybroker/keybroker/internal/etcdtest"
)

// chainBackend is a store the chain tests run on, with a way to change
// its stored receipts behind the store's back, as an insider could.
type chainBackend struct {
	name string
	// open returns the configuration of a new, empty store of this kind
	// (data_dir of its own) and a second broker's on the same store (bolt:
	// nil, one process only).
	open func(t *testing.T) (cfg, second *Config)
	// rewrite changes the stored bytes of receipt seq with edit (nil:
	// deletes it), while no broker has the store open.
	rewrite func(t *testing.T, cfg *Config, seq uint64, edit func([]byte) []byte)
	// putLegacy stores a receipt as a broker before chaining did: val
	// under its id, without chain fields or index entries.
	putLegacy func(t *testing.T, cfg *Config, id string, val []byte)
}

func chainBackends(t *testing.T) []chainBackend {
	bk := chainBackend{
		name: "bolt",
		open: func(t *testing.T) (*Config, *Config) {
			return &Config{DataDir: t.TempDir(), Store: StoreConfig{Kind: StoreBolt}, ReceiptCheckpoints: defaultCheckpoints()}, nil
		},
		rewrite: func(t *testing.T, cfg *Config, seq uint64, edit func([]byte) []byte) {
			db, err := bolt.Open(filepath.Join(cfg.DataDir, BoltFile), 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			err = db.Update(func(tx *bolt.Tx) error {
				id := tx.Bucket([]byte("receipts_by_seq")).Get(binary.BigEndian.AppendUint64(nil, seq))
				receipts := tx.Bucket([]byte("receipts"))
				if edit == nil {
					return receipts.Delete(id)
				}
				return receipts.Put(id, edit(bytes.Clone(receipts.Get(id))))
			})
			if err != nil {
				t.Fatal(err)
			}
		},
		putLegacy: func(t *testing.T, cfg *Config, id string, val []byte) {
			db, err := bolt.Open(filepath.Join(cfg.DataDir, BoltFile), 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("receipts")).Put([]byte(id), val) }); err != nil {
				t.Fatal(err)
			}
		},
	}
	backends := []chainBackend{bk}
	if testing.Short() {
		return backends
	}
	c := etcdtest.Start(t, etcdtest.Opts{Members: 1})
	ec := chainBackend{
		name: "etcd",
		open: func(t *testing.T) (*Config, *Config) {
			sc := StoreConfig{Kind: StoreEtcd, Endpoints: c.Endpoints(), Prefix: "/" + strings.ReplaceAll(t.Name(), "/", "_") + "/"}
			return &Config{DataDir: t.TempDir(), Store: sc, ReceiptCheckpoints: defaultCheckpoints()},
				&Config{DataDir: t.TempDir(), Store: sc, ReceiptCheckpoints: defaultCheckpoints()}
		},
		rewrite: func(t *testing.T, cfg *Config, seq uint64, edit func([]byte) []byte) {
			ctx := context.Background()
			cli := c.Client(t)
			p := cfg.Store.Prefix
			resp, err := cli.Get(ctx, fmt.Sprintf("%sreceipts_by_seq/%020d", p, seq))
			if err != nil || len(resp.Kvs) != 1 {
				t.Fatalf("seq %d: %v", seq, err)
			}
			key := p + "receipts/" + string(resp.Kvs[0].Value)
			if edit == nil {
				_, err = cli.Delete(ctx, key)
			} else {
				got, gerr := cli.Get(ctx, key)
				if gerr != nil || len(got.Kvs) != 1 {
					t.Fatalf("receipt seq %d: %v", seq, gerr)
				}
				_, err = cli.Put(ctx, key, string(edit(got.Kvs[0].Value)))
			}
			if err != nil {
				t.Fatal(err)
			}
		},
		putLegacy: func(t *testing.T, cfg *Config, id string, val []byte) {
			if _, err := c.Client(t).Put(context.Background(), cfg.Store.Prefix+"receipts/"+id, string(val)); err != nil {
				t.Fatal(err)
			}
		},
	}
	return append(backends, ec)
}

func defaultCheckpoints() ReceiptCheckpointsConfig {
	return ReceiptCheckpointsConfig{Every: DefaultCheckpointEvery, Interval: DefaultCheckpointInterval}
}

// chainBroker is the part of a broker that writes a chain: its store and
// checkpointer.
type chainBroker struct {
	st store.Backend
	cp *checkpointer
}

func openChainBroker(t *testing.T, cfg *Config) *chainBroker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := OpenStore(ctx, cfg, StoreOpts{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	signer, err := loadCheckpointSigner(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &chainBroker{st: st, cp: newCheckpointer(st, signer, cfg.ReceiptCheckpoints, slog.New(slog.DiscardHandler))}
}

// record records n decisions at once (sharing group commits, or racing
// at the etcd head), made at the time when gives for i.
func (b *chainBroker) record(t *testing.T, n int, when func(i int) time.Time) {
	t.Helper()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			d := storetest.Decide(fmt.Sprintf("c-%d-%d", i, time.Now().UnixNano()), fmt.Sprintf("ek-%d", i%3), nil)
			d.Receipt.Time = when(i)
			if err := b.st.Record(context.Background(), d); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
}

func madeNow(int) time.Time { return time.Now() }

// signHead signs the head (as a broker does on stop) and closes the store.
func (b *chainBroker) signHead(t *testing.T) {
	t.Helper()
	if _, err := b.cp.sign(context.Background(), time.Now(), true); err != nil {
		t.Fatal(err)
	}
	b.st.Close()
}

func publicKeys(t *testing.T, cfgs ...*Config) receiptchain.Keys {
	t.Helper()
	keys := receiptchain.Keys{}
	for _, cfg := range cfgs {
		pemKey, err := CheckpointPublicKey(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := receiptchain.ParseKeys(pemKey, keys); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

func verifyChain(t *testing.T, cfg *Config, keys receiptchain.Keys) receiptchain.Report {
	t.Helper()
	rep, err := VerifyChain(context.Background(), cfg, keys)
	if err != nil {
		t.Fatalf("VerifyChain: %v", err)
	}
	return rep
}

// TestReceiptChainTampering writes a chain through the store, then
// changes it behind the store's back: verification names the first bad
// receipt, and refuses checkpoints under another key.
func TestReceiptChainTampering(t *testing.T) {
	replace := func(from, to string) func([]byte) []byte {
		return func(v []byte) []byte {
			out := bytes.Replace(v, []byte(from), []byte(to), 1)
			if bytes.Equal(out, v) {
				t.Fatalf("%s not in %s", from, v)
			}
			return out
		}
	}
	for _, bk := range chainBackends(t) {
		t.Run(bk.name, func(t *testing.T) {
			tests := []struct {
				name      string
				tamper    func(t *testing.T, cfg *Config)
				wantFirst string
			}{
				{name: "intact"},
				{name: "one byte changed", tamper: func(t *testing.T, cfg *Config) {
					bk.rewrite(t, cfg, 7, replace(`"ek-`, `"eK-`))
				}, wantFirst: "receipt seq 7 ("},
				{name: "one deleted", tamper: func(t *testing.T, cfg *Config) {
					bk.rewrite(t, cfg, 7, nil)
				}, wantFirst: "receipt seq 7: missing"},
				{name: "newest deleted", tamper: func(t *testing.T, cfg *Config) {
					bk.rewrite(t, cfg, 20, nil)
				}, wantFirst: "receipt seq 20: missing: a signed checkpoint covers seq 20, but the chain ends at seq 19"},
				{name: "reordered", tamper: func(t *testing.T, cfg *Config) {
					bk.rewrite(t, cfg, 7, replace(`"seq":7,`, `"seq":8,`))
					bk.rewrite(t, cfg, 8, replace(`"seq":8,`, `"seq":7,`))
				}, wantFirst: "receipt seq 7 ("},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					cfg, _ := bk.open(t)
					b := openChainBroker(t, cfg)
					b.record(t, 20, madeNow)
					b.signHead(t)
					if tt.tamper != nil {
						tt.tamper(t, cfg)
					}
					rep := verifyChain(t, cfg, publicKeys(t, cfg))
					switch {
					case tt.wantFirst == "" && !rep.OK():
						t.Fatalf("problems: %v", rep.Problems)
					case tt.wantFirst == "" && (rep.Receipts != 20 || rep.Covered != 20):
						t.Errorf("report = %+v, want 20 receipts covered", rep)
					case tt.wantFirst != "" && rep.OK():
						t.Fatalf("verified, want %q", tt.wantFirst)
					case tt.wantFirst != "" && !strings.HasPrefix(rep.Problems[0].String(), tt.wantFirst):
						t.Errorf("first problem = %q, want %q (all: %v)", rep.Problems[0], tt.wantFirst, rep.Problems)
					}
				})
			}
			t.Run("checkpoint under another key", func(t *testing.T) {
				cfg, _ := bk.open(t)
				b := openChainBroker(t, cfg)
				b.record(t, 3, madeNow)
				b.signHead(t)
				other := &Config{DataDir: t.TempDir()}
				if _, err := loadCheckpointSigner(other); err != nil {
					t.Fatal(err)
				}
				rep := verifyChain(t, cfg, publicKeys(t, other))
				if rep.OK() || rep.Checkpoints != 0 || !strings.Contains(fmt.Sprint(rep.Problems), "checkpoint of seq 3 refused") {
					t.Errorf("report = %+v, want the checkpoint refused", rep)
				}
			})
		})
	}
}

// TestReceiptChainPurge deletes receipts past their retention: the chain
// left begins after a signed checkpoint, and verifies.
func TestReceiptChainPurge(t *testing.T) {
	for _, bk := range chainBackends(t) {
		t.Run(bk.name, func(t *testing.T) {
			cfg, _ := bk.open(t)
			b := openChainBroker(t, cfg)
			old := time.Now().Add(-48 * time.Hour)
			for range 3 { // several group commits
				b.record(t, 10, func(i int) time.Time { return old.Add(time.Duration(i) * time.Millisecond) })
			}
			b.record(t, 5, madeNow)
			r := &Running{st: b.st, checkpoints: b.cp}
			r.purgeOnce(slog.New(slog.DiscardHandler), time.Now(), 24*time.Hour)
			rs, err := b.st.ListReceipts(context.Background(), store.ListOpts{})
			if err != nil || len(rs) != 5 {
				t.Fatalf("receipts left = %d, %v; want 5", len(rs), err)
			}
			b.signHead(t)
			rep := verifyChain(t, cfg, publicKeys(t, cfg))
			if !rep.OK() || rep.First != 31 || rep.Last != 35 {
				t.Errorf("report = %+v, want seq 31 to 35 verified", rep)
			}
		})
	}
}

// TestReceiptChainTwoBrokers has two brokers, each with its own
// checkpoint key, record decisions at once on one etcd: one chain, no gap,
// verified under both keys.
func TestReceiptChainTwoBrokers(t *testing.T) {
	for _, bk := range chainBackends(t) {
		cfg, second := bk.open(t)
		if second == nil {
			continue
		}
		t.Run(bk.name, func(t *testing.T) {
			a, b := openChainBroker(t, cfg), openChainBroker(t, second)
			var wg sync.WaitGroup
			for _, br := range []*chainBroker{a, b} {
				wg.Go(func() {
					for range 3 {
						br.record(t, 15, madeNow)
						if _, err := br.cp.sign(context.Background(), time.Now(), true); err != nil {
							t.Error(err)
						}
					}
				})
			}
			wg.Wait()
			a.signHead(t)
			b.signHead(t)
			rep := verifyChain(t, cfg, publicKeys(t, cfg, second))
			if !rep.OK() || rep.Receipts != 90 || rep.First != 1 || rep.Last != 90 {
				t.Errorf("report = %+v, want 90 receipts verified", rep)
			}
			if rep := verifyChain(t, cfg, publicKeys(t, second)); rep.OK() {
				t.Error("verified with only the second broker's key, want the first's checkpoints refused")
			}
		})
	}
}

// TestReceiptChainAfterUnchained runs on a store holding receipts written
// before receipts were chained: they still read, are counted and not
// verified, and go with retention; the chain written after them verifies.
func TestReceiptChainAfterUnchained(t *testing.T) {
	for _, bk := range chainBackends(t) {
		t.Run(bk.name, func(t *testing.T) {
			cfg, _ := bk.open(t)
			openChainBroker(t, cfg).st.Close() // creates the store
			old := time.Now().Add(-72 * time.Hour)
			var legacyIDs []string
			for i := range 3 {
				at := old.Add(time.Duration(i) * time.Second)
				id := store.NewReceiptID(at)
				legacyIDs = append(legacyIDs, id)
				bk.putLegacy(t, cfg, id, fmt.Appendf(nil, `{"id":%q,"time":%q,"ek_hash":"ek-old","allowed":true}`, id, at.UTC().Format(time.RFC3339Nano)))
			}
			b := openChainBroker(t, cfg)
			got, err := b.st.GetReceipt(context.Background(), legacyIDs[0])
			if err != nil || got.Seq != 0 || got.EKHash != "ek-old" {
				t.Fatalf("legacy receipt = %+v, %v", got, err)
			}
			b.record(t, 4, madeNow)
			b.signHead(t)
			rep := verifyChain(t, cfg, publicKeys(t, cfg))
			if !rep.OK() || rep.Unchained != 3 || rep.Receipts != 4 {
				t.Fatalf("report = %+v, want 4 verified and 3 unchained", rep)
			}

			b = openChainBroker(t, cfg)
			r := &Running{st: b.st, checkpoints: b.cp}
			r.purgeOnce(slog.New(slog.DiscardHandler), time.Now(), 24*time.Hour)
			if _, err := b.st.GetReceipt(context.Background(), legacyIDs[2]); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("legacy receipt past retention: %v, want deleted", err)
			}
			b.signHead(t)
			if rep := verifyChain(t, cfg, publicKeys(t, cfg)); !rep.OK() || rep.Unchained != 0 || rep.Receipts != 4 {
				t.Errorf("after purge report = %+v, want 4 verified", rep)
			}
		})
	}
}

// TestReceiptChainLiveBroker exports through a running broker's admin
// socket, which signs the head first, and verifies; the broker signs its
// head again when it stops.
func TestReceiptChainLiveBroker(t *testing.T) {
	dir := t.TempDir()
	hash := strings.Repeat("ab", 32)
	policy := "policy \"p\" {\n  select { ek_hashes = [\"" + hash + "\"] }\n  release \"r\" {\n    type = \"tls_certificate\"\n    common_name = \"x\"\n  }\n}\n"
	if err := os.WriteFile(filepath.Join(dir, "p.hcl"), []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig([]byte(`listen = "127.0.0.1:0"
data_dir = "data"
policies = ["p.hcl"]
ek_allow = ["`+hash+`"]
receipt_checkpoints {
  every    = 1000000
  interval = "24h"
}`), filepath.Join(dir, "broker.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := Start(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	keyPath := filepath.Join(dir, "data", ReceiptsDir, CheckpointKeyFile)
	if fi, err := os.Stat(keyPath); err != nil || fi.Mode().Perm() != 0o600 || cfg.CheckpointKeyPath() != keyPath {
		t.Fatalf("checkpoint key %s: %v, %v; want mode 0600", keyPath, fi, err)
	}
	b := &chainBroker{st: r.Store()}
	b.record(t, 5, madeNow)
	// The checkpointer's first look signs the head: no checkpoint yet.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		cps, err := r.Store().ListCheckpoints(context.Background(), 0, 0)
		if err == nil && len(cps) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint after 20s: %v", err)
		}
	}
	b.record(t, 2, madeNow)
	keys := publicKeys(t, cfg)
	if rep := verifyChain(t, cfg, keys); !rep.OK() || rep.Receipts != 7 || rep.Covered != 7 {
		t.Fatalf("live export: %+v, want 7 receipts covered by the checkpoint the export had signed", rep)
	}
	cps, err := r.Store().ListCheckpoints(context.Background(), 0, 0)
	if err != nil || len(cps) != 2 || cps[0].Seq != 5 || cps[1].Seq != 7 {
		t.Errorf("checkpoints = %+v, %v; want seq 5 (first look) and 7 (export)", cps, err)
	}
	b.record(t, 1, madeNow)
	r.Stop()
	if rep := verifyChain(t, cfg, keys); !rep.OK() || rep.Covered != 8 {
		t.Errorf("after stop: %+v, want 8 receipts covered by the checkpoint of the stop", rep)
	}
}

func TestReceiptCheckpointsConfig(t *testing.T) {
	for _, tt := range []struct {
		name, block, wantErr string
	}{
		{"every 0", `every = 0`, "receipt_checkpoints: every must be between 1 and 1000000"},
		{"interval too short", `interval = "10ms"`, "receipt_checkpoints: interval must be between 1s and 24h0m0s"},
		{"empty key file", `key_file = ""`, "receipt_checkpoints: key_file cannot be empty"},
		{"missing key file", `key_file = "nope.pem"`, "receipt_checkpoints: key_file nope.pem:"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			src := "data_dir = \"d\"\npolicies = [\"p\"]\nreceipt_checkpoints {\n  " + tt.block + "\n}\n"
			_, err := ParseConfig([]byte(src), filepath.Join(t.TempDir(), "broker.hcl"))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseConfig = %v, want %q", err, tt.wantErr)
			}
		})
	}
	cfg, err := ParseConfig([]byte("data_dir = \"d\"\npolicies = [\"p\"]\nek_allow = [\""+strings.Repeat("ab", 32)+"\"]\n"), filepath.Join(t.TempDir(), "broker.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ReceiptCheckpoints != defaultCheckpoints() {
		t.Errorf("without the block: %+v; want the defaults", cfg.ReceiptCheckpoints)
	}
}
