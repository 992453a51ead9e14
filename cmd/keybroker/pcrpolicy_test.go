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
	"github.com/keybroker/keybroker/broker/attestation"
	"github.com/keybroker/keybroker/broker/store"
)

// canaryStore writes a bolt store with one node whose last attestation
// quoted sha256 PCR 0 and 7, and returns its data directory.
func canaryStore(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	st, err := store.OpenBolt(filepath.Join(dir, broker.BoltFile), store.BoltOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now().UTC()
	pcrs := map[uint32][]byte{0: []byte(strings.Repeat("\x00", 32)), 7: []byte(strings.Repeat("\x77", 32))}
	d := &store.Decision{Receipt: &store.Receipt{Time: now, EKHash: ekOK, Allowed: true}, Node: &store.NodeRecord{EKHash: ekOK, FirstSeen: now, LastSeen: now,
		Evidence: attestation.Evidence{Quotes: []attestation.Quote{{Attest: []byte("a"), Signature: []byte("s"), Bank: 0x000b, PCRs: pcrs}}}}}
	if err := st.Record(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestPCRPolicyCommands(t *testing.T) {
	dir := canaryStore(t)
	v7 := strings.Repeat("77", 32)

	code, stdout, stderr := runCmd(t, "pcr-policy", "approve", "--data-dir", dir, "--node", ekOK[:8], "--pcrs", "0,7", "--note", "canary", "--json")
	var fromNode store.PCRApproval
	if code != 0 || json.Unmarshal([]byte(stdout), &fromNode) != nil || fromNode.Source != "node "+ekOK || len(fromNode.PCRs) != 2 || !strings.HasPrefix(fromNode.Note, "canary (by ") {
		t.Fatalf("approve --node: exit %d, stderr %q, stdout %s", code, stderr, stdout)
	}
	code, stdout, stderr = runCmd(t, "pcr-policy", "approve", "--data-dir", dir, "--pcr", "0="+strings.Repeat("00", 32), "--pcr", "7="+v7)
	if code != 0 || !strings.Contains(stdout, "approved: state "+fromNode.ID+" (sha256, 0=00000000…,7=77777777…)") {
		t.Fatalf("approve --pcr of the same state: exit %d, stderr %q, stdout %s; want the same record", code, stderr, stdout)
	}
	code, stdout, stderr = runCmd(t, "pcr-policy", "revoke", "--data-dir", dir, fromNode.ID)
	if code != 0 || !strings.Contains(stdout, "revoked: state "+fromNode.ID) {
		t.Fatalf("revoke: exit %d, stderr %q, stdout %s", code, stderr, stdout)
	}
	code, stdout, stderr = runCmd(t, "pcr-policy", "list", "--data-dir", dir)
	if code != 0 || strings.Count(stdout, "\n") != 2 || !strings.Contains(stdout, fromNode.ID+"  revoked ") {
		t.Fatalf("list: exit %d, stderr %q, stdout:\n%s", code, stderr, stdout)
	}

	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"a revoked state", []string{"approve", "--node", ekOK, "--pcrs", "0,7"}, "the state was revoked"},
		{"no state", []string{"approve"}, "name the state: --node with --pcrs, or --pcr INDEX=HEX"},
		{"two ways", []string{"approve", "--node", ekOK, "--pcrs", "7", "--pcr", "7=" + v7}, "name the state one way only"},
		{"node without pcrs", []string{"approve", "--node", ekOK}, "--node needs --pcrs"},
		{"short value", []string{"approve", "--pcr", "7=abcd"}, "PCR 7 has 2 bytes, want 32 for its bank"},
		{"bad index", []string{"approve", "--pcr", "24=" + v7}, `--pcr "24=`},
		{"unquoted PCR", []string{"approve", "--node", ekOK, "--pcrs", "8"}, "did not quote PCR sha256:8"},
		{"unquoted bank", []string{"approve", "--node", ekOK, "--pcrs", "7", "--bank", "sha384"}, "did not quote the sha384 bank"},
		{"unknown node", []string{"approve", "--node", strings.Repeat("e", 64), "--pcrs", "7"}, "no record or deny-list entry"},
		{"unknown ID", []string{"revoke", "0123456789abcdef"}, "no such PCR approval"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"pcr-policy"}, tt.args[0], "--data-dir", dir)
			code, _, stderr := runCmd(t, append(args, tt.args[1:]...)...)
			if code == 0 || !strings.Contains(stderr, tt.wantErr) {
				t.Fatalf("exit %d, stderr %q; want %q", code, stderr, tt.wantErr)
			}
		})
	}
}

// keys prints the configured keys, current then next, and never makes one.
func TestPCRPolicyKeys(t *testing.T) {
	dir := t.TempDir()
	var pubs []string
	for _, name := range []string{"current.pem", "next.pem"} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, _ := x509.MarshalPKCS8PrivateKey(key)
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		pkix, _ := x509.MarshalPKIXPublicKey(key.Public())
		pubs = append(pubs, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pkix})))
	}
	head := "data_dir = \"data\"\npolicies = [\"p.hcl\"]\nek_allow = [\"" + strings.Repeat("ab", 32) + "\"]\n"
	write := func(name, body string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(head+body), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	code, stdout, stderr := runCmd(t, "pcr-policy", "keys", "--config", write("keys.hcl", "pcr_policy {\n  key_file = \"current.pem\"\n  next_key_file = \"next.pem\"\n}\n"))
	if code != 0 || stdout != pubs[0]+pubs[1] {
		t.Fatalf("keys: exit %d, stderr %q, stdout:\n%s\nwant the current then the next public key", code, stderr, stdout)
	}
	code, stdout, stderr = runCmd(t, "pcr-policy", "keys", "--config", write("none.hcl", ""))
	if code != 1 || stdout != "" || !strings.Contains(stderr, "unable to load PCR-policy signing key") {
		t.Errorf("keys before the broker made one: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	code, _, stderr = runCmd(t, "pcr-policy", "keys", "--config", write("same.hcl", "pcr_policy {\n  key_file = \"current.pem\"\n  next_key_file = \"current.pem\"\n}\n"))
	if code != 1 || !strings.Contains(stderr, "pcr_policy: next_key_file holds the same key as key_file") {
		t.Errorf("keys with next = current: exit %d, stderr %q", code, stderr)
	}
	// A key file group or others may read is refused, named as what it is.
	open := filepath.Join(dir, "open.pem")
	if err := os.WriteFile(open, readFileT(t, filepath.Join(dir, "current.pem")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runCmd(t, "pcr-policy", "keys", "--config", write("open.hcl", "pcr_policy {\n  key_file = \"open.pem\"\n}\n"))
	if code != 1 || !strings.Contains(stderr, "unable to load PCR-policy signing key") || !strings.Contains(stderr, "readable or writable by group or others (mode 0644)") || strings.Contains(stderr, "JWT") {
		t.Errorf("keys with a key file of mode 0644: exit %d, stderr %q", code, stderr)
	}
	// With store "etcd" every replica must sign with the same key.
	etcd := "store \"etcd\" {\n  endpoints = [\"http://127.0.0.1:2379\"]\n}\n"
	for name, body := range map[string]string{"etcd-block.hcl": etcd + "pcr_policy {\n  next_key_file = \"next.pem\"\n}\n", "etcd-none.hcl": etcd} {
		code, _, stderr = runCmd(t, "pcr-policy", "keys", "--config", write(name, body))
		if code != 1 || !strings.Contains(stderr, `pcr_policy: key_file is required with store "etcd"`) {
			t.Errorf("keys with store etcd and no key_file (%s): exit %d, stderr %q", name, code, stderr)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !os.IsNotExist(err) {
		t.Errorf("pcr-policy keys made the data directory: %v", err)
	}
}

func readFileT(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
