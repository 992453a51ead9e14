package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
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
	"github.com/keybroker/keybroker/internal/brokertest"
)

// canary is a simulated node's last attestation, as canaryStore stores
// it.
type canary struct {
	allowed bool                           // the decision
	tamper  func(ev *attestation.Evidence) // changes the stored evidence, if set
}

// canaryStore writes a bolt store with one node (a simulated TPM, PCR 0
// and 7 extended) whose last attestation, real evidence, was decided as
// c says, and returns its data directory, the node's EK hash and the
// sha256 values of PCR 0 and 7 it quoted.
func canaryStore(t *testing.T, c canary) (string, string, map[uint32][]byte) {
	t.Helper()
	sim := brokertest.NewSim(t)
	now := time.Now().UTC()
	ev := sim.Evidence(t, now)
	var pcrs map[uint32][]byte
	for _, q := range ev.Quotes {
		if q.Bank == 0x000b {
			pcrs = map[uint32][]byte{0: q.PCRs[0], 7: q.PCRs[7]}
		}
	}
	if c.tamper != nil {
		c.tamper(&ev)
	}
	dir := t.TempDir()
	st, err := store.OpenBolt(filepath.Join(dir, broker.BoltFile), store.BoltOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	id := store.NewReceiptID(now)
	d := &store.Decision{Receipt: &store.Receipt{ID: id, Time: now, EKHash: sim.EKHash, Allowed: c.allowed}, Node: &store.NodeRecord{EKHash: sim.EKHash, FirstSeen: now, LastSeen: now,
		LastReceiptID: id, Evidence: ev}}
	if err := st.Record(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	return dir, sim.EKHash, pcrs
}

func TestPCRPolicyCommands(t *testing.T) {
	dir, ekOK, quoted := canaryStore(t, canary{allowed: true})
	v0, v7 := hex.EncodeToString(quoted[0]), hex.EncodeToString(quoted[7])

	code, stdout, stderr := runCmd(t, "pcr-policy", "approve", "--data-dir", dir, "--node", ekOK[:8], "--pcrs", "0,7", "--note", "canary", "--json")
	var fromNode store.PCRApproval
	if code != 0 || json.Unmarshal([]byte(stdout), &fromNode) != nil || fromNode.Source != "node "+ekOK || len(fromNode.PCRs) != 2 || !strings.HasPrefix(fromNode.Note, "canary (by ") {
		t.Fatalf("approve --node: exit %d, stderr %q, stdout %s", code, stderr, stdout)
	}
	if !bytes.Equal(fromNode.PCRs[0], quoted[0]) || !bytes.Equal(fromNode.PCRs[7], quoted[7]) {
		t.Fatalf("approve --node approved %x, want the values quoted %x", fromNode.PCRs, quoted)
	}
	code, stdout, stderr = runCmd(t, "pcr-policy", "approve", "--data-dir", dir, "--pcr", "0="+v0, "--pcr", "7="+v7)
	if code != 0 || !strings.Contains(stdout, "approved: state "+fromNode.ID+" (sha256, 0="+v0[:8]+"…,7="+v7[:8]+"…)") {
		t.Fatalf("approve --pcr of the same state: exit %d, stderr %q, stdout %s; want the same record", code, stderr, stdout)
	}
	// Scoped to releases: stored with the approval, printed.
	v8 := strings.Repeat("88", 32)
	code, stdout, stderr = runCmd(t, "pcr-policy", "approve", "--data-dir", dir, "--pcr", "7="+v8, "--release", "node-tls", "--release", "db")
	if code != 0 || !strings.Contains(stdout, "releases db,node-tls)") {
		t.Fatalf("approve --release: exit %d, stderr %q, stdout %s", code, stderr, stdout)
	}
	code, stdout, stderr = runCmd(t, "pcr-policy", "list", "--data-dir", dir, "--json")
	if code != 0 || !strings.Contains(stdout, `"releases":["db","node-tls"]`) {
		t.Fatalf("list --json after approve --release: exit %d, stderr %q, stdout %s", code, stderr, stdout)
	}
	code, stdout, stderr = runCmd(t, "pcr-policy", "revoke", "--data-dir", dir, fromNode.ID)
	if code != 0 || !strings.Contains(stdout, "revoked: state "+fromNode.ID) {
		t.Fatalf("revoke: exit %d, stderr %q, stdout %s", code, stderr, stdout)
	}
	code, stdout, stderr = runCmd(t, "pcr-policy", "list", "--data-dir", dir)
	if code != 0 || strings.Count(stdout, "\n") != 3 || !strings.Contains(stdout, fromNode.ID+"  revoked ") {
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
		{"unknown node", []string{"approve", "--node", strings.Repeat("e", 64), "--pcrs", "7"}, "no record or deny-list entry"},
		{"unknown ID", []string{"revoke", "0123456789abcdef"}, "no such PCR approval"},
		{"revoke with --release", []string{"revoke", "--pcr", "7=" + v7, "--release", "x"}, "unknown flag: --release"},
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

// approve --node takes a state only from a node whose last attestation was
// allowed and whose stored evidence verifies again; nothing is stored
// otherwise.
func TestPCRPolicyApproveNodeChecksEvidence(t *testing.T) {
	tests := []struct {
		name    string
		c       canary
		wantErr string
	}{
		{"last attestation refused", canary{allowed: false}, "the node's last attestation was refused"},
		{"a stored PCR value changed", canary{allowed: true, tamper: func(ev *attestation.Evidence) {
			for i := range ev.Quotes {
				if ev.Quotes[i].Bank == 0x000b {
					ev.Quotes[i].PCRs[7] = bytes.Repeat([]byte{0x77}, 32)
				}
			}
		}}, "stored evidence does not verify"},
		{"the stored signature changed", canary{allowed: true, tamper: func(ev *attestation.Evidence) {
			for i := range ev.Quotes {
				s := bytes.Clone(ev.Quotes[i].Signature)
				s[len(s)-1] ^= 1
				ev.Quotes[i].Signature = s
			}
		}}, "stored evidence does not verify"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, ek, _ := canaryStore(t, tt.c)
			code, _, stderr := runCmd(t, "pcr-policy", "approve", "--data-dir", dir, "--node", ek, "--pcrs", "0,7")
			if code == 0 || !strings.Contains(stderr, tt.wantErr) {
				t.Fatalf("approve --node: exit %d, stderr %q; want %q", code, stderr, tt.wantErr)
			}
			code, stdout, _ := runCmd(t, "pcr-policy", "list", "--data-dir", dir)
			if code != 0 || strings.Count(stdout, "\n") != 1 {
				t.Fatalf("list after a refused approve: exit %d, %q; want nothing stored", code, stdout)
			}
		})
	}
}

// keys prints the configured keys, current then next, and never makes one.
func TestPCRPolicyKeys(t *testing.T) {
	dir := t.TempDir()
	var pubs []string
	var privs [][]byte
	for _, name := range []string{"current.pem", "next.pem"} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, _ := x509.MarshalPKCS8PrivateKey(key)
		privs = append(privs, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
		if err := os.WriteFile(filepath.Join(dir, name), privs[len(privs)-1], 0o600); err != nil {
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
	if err := os.WriteFile(open, privs[0], 0o644); err != nil {
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
