package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/broker/receiptchain"
	"github.com/keybroker/keybroker/broker/store"
)

// chainStore writes a bolt store of five chained receipts with a
// checkpoint of its head signed by the broker's checkpoint key, as a
// broker leaves it when it stops, and returns its data directory and the
// receipts in chain order.
func chainStore(t *testing.T) (string, []store.Receipt) {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, broker.ReceiptsDir), 0o700); err != nil {
		t.Fatal(err)
	}
	key, err := issue.LoadOrCreateSigningKey(filepath.Join(dir, broker.ReceiptsDir, broker.CheckpointKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := receiptchain.NewSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.OpenBolt(filepath.Join(dir, broker.BoltFile), store.BoltOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	var rs []store.Receipt
	for i := range 5 {
		d := &store.Decision{Receipt: &store.Receipt{Time: time.Now().Add(time.Duration(i-10) * time.Second), EKHash: ekOK, Allowed: true}}
		if err := st.Record(ctx, d); err != nil {
			t.Fatal(err)
		}
		rs = append(rs, *d.Receipt)
	}
	head, err := st.ChainHead(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := signer.Seal(head)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutCheckpoint(ctx, cp); err != nil {
		t.Fatal(err)
	}
	return dir, rs
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestReceiptsVerify(t *testing.T) {
	dir, rs := chainStore(t)

	code, pubPEM, stderr := runCmd(t, "receipts", "checkpoint-key", "--data-dir", dir)
	if code != 0 || !strings.HasPrefix(pubPEM, "-----BEGIN PUBLIC KEY-----\n") {
		t.Fatalf("receipts checkpoint-key: exit %d, stderr %q:\n%s", code, stderr, pubPEM)
	}
	keyFile := writeFile(t, "checkpoint.pub", pubPEM)

	code, export, stderr := runCmd(t, "receipts", "export", "--data-dir", dir)
	lines := strings.Split(strings.TrimSpace(export), "\n")
	if code != 0 || len(lines) != 6 || !strings.HasPrefix(lines[5], `{"checkpoint":{"seq":5,`) {
		t.Fatalf("receipts export: exit %d, stderr %q; want 5 receipts and a checkpoint:\n%s", code, stderr, export)
	}
	// Each receipt line is the canonical encoding its chain hash covers.
	if enc, _ := store.EncodeReceipt(&rs[3]); lines[1] != string(enc) || store.ReceiptHash(enc) != rs[4].Prev {
		t.Errorf("export line of seq 4 = %s, want %s hashing to seq 5's prev", lines[1], enc)
	}
	exportFile := writeFile(t, "export.jsonl", export)

	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&otherKey.PublicKey)
	otherFile := writeFile(t, "other.pub", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))

	tamper := func(edit func([]string) []string) string {
		return writeFile(t, "tampered.jsonl", strings.Join(edit(append([]string(nil), lines...)), "\n")+"\n")
	}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout []string
	}{
		{name: "export", args: []string{exportFile, "--key", keyFile},
			wantStdout: []string{"receipts: 5 chained, seq 1 to 5\n", "checkpoints: 1 with a valid signature, the newest covering seq 5\n", "OK: "}},
		{name: "store", args: []string{"--data-dir", dir}, wantStdout: []string{"OK: "}},
		{name: "export, the key of --data-dir", args: []string{exportFile, "--data-dir", dir}, wantStdout: []string{"OK: "}},
		{name: "one byte changed", wantCode: 1, args: []string{tamper(func(l []string) []string {
			l[2] = strings.Replace(l[2], `"ek_hash":"d00d`, `"ek_hash":"e00d`, 1) // seq 3
			return l
		}), "--key", keyFile}, wantStdout: []string{"FAILED: 1 problems\n", "first bad receipt: seq 3 (" + rs[2].ID + ")\n"}},
		{name: "one deleted", wantCode: 1, args: []string{tamper(func(l []string) []string {
			return append(l[:2], l[3:]...)
		}), "--key", keyFile}, wantStdout: []string{"receipt seq 3: missing: receipts seq 3 to 3 are not there", "first bad receipt: seq 3\n"}},
		{name: "reordered", wantCode: 1, args: []string{tamper(func(l []string) []string {
			l[1] = strings.Replace(l[1], `"seq":4,`, `"seq":3,`, 1)
			l[2] = strings.Replace(l[2], `"seq":3,`, `"seq":4,`, 1)
			return l
		}), "--key", keyFile}, wantStdout: []string{"first bad receipt: seq 3 (" + rs[3].ID + ")\n"}},
		{name: "checkpoint under another key", wantCode: 1, args: []string{exportFile, "--key", otherFile},
			wantStdout: []string{"checkpoints: 0 with a valid signature", "checkpoint of seq 5 refused: signed by key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(t, append([]string{"receipts", "verify"}, tt.args...)...)
			if code != tt.wantCode {
				t.Errorf("exit %d, want %d; stderr %q", code, tt.wantCode, stderr)
			}
			for _, w := range tt.wantStdout {
				if !strings.Contains(stdout, w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout)
				}
			}
		})
	}

	var r store.Receipt
	if err := json.Unmarshal([]byte(lines[0]), &r); err != nil || r.Seq != 5 {
		t.Errorf("first export line = %+v, %v; want the newest receipt", r, err)
	}
}

func TestReceiptsVerifyUsage(t *testing.T) {
	for _, tt := range []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"no file, no store", []string{"receipts", "verify"}, "--config or --data-dir is required"},
		{"file without a key", []string{"receipts", "verify", "export.jsonl"}, "--key, --config or --data-dir is required to check checkpoint signatures"},
		{"checkpoint-key without a store", []string{"receipts", "checkpoint-key"}, "--config or --data-dir is required"},
		{"Vault export with a filter", []string{"receipts", "export", "--vault-mount", "auth/tpm", "--ek", "aa"},
			"--vault-mount exports the whole chain: leave out --after, --before and --ek"},
		{"Vault export and a store", []string{"receipts", "export", "--vault-mount", "auth/tpm", "--data-dir", "/tmp"},
			"--vault-mount reads Vault instead of the broker: leave out --config and --data-dir"},
		{"Vault checkpoint key and a store", []string{"receipts", "checkpoint-key", "--vault-mount", "auth/tpm", "--config", "b.hcl"},
			"--vault-mount reads Vault instead of the broker: leave out --config and --data-dir"},
		{"Vault address without a mount", []string{"receipts", "export", "--vault-addr", "https://vault:8200", "--data-dir", "/tmp"},
			"--vault-addr needs --vault-mount"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCmd(t, tt.args...)
			if code == 0 || !strings.Contains(stderr, tt.wantErr) {
				t.Errorf("exit %d, stderr %q; want %q", code, stderr, tt.wantErr)
			}
		})
	}
	code, _, stderr := runCmd(t, "receipts", "checkpoint-key", "--data-dir", t.TempDir())
	if code != 1 || !strings.Contains(stderr, "unable to load the checkpoint key") {
		t.Errorf("checkpoint-key before the broker started: exit %d, stderr %q", code, stderr)
	}
}
