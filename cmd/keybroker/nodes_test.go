package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/attestation"
	"github.com/keybroker/keybroker/broker/store"
)

var (
	ekDenied = "c0ffee00" + strings.Repeat("1", 56)
	ekOK     = "d00d0000" + strings.Repeat("2", 56)
)

// nodesStore writes a bolt store with two nodes, one of them deny-listed,
// and returns its data directory and the receipts written, newest first.
func nodesStore(t *testing.T) (string, []string) {
	t.Helper()
	dir := t.TempDir()
	st, err := store.OpenBolt(filepath.Join(dir, broker.BoltFile), store.BoltOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	now := time.Now().Add(-time.Minute).UTC()
	var ids []string
	for i, d := range []*store.Decision{
		{Receipt: &store.Receipt{Time: now, EKHash: ekDenied, Allowed: true}, Node: &store.NodeRecord{EKHash: ekDenied, FirstSeen: now, LastSeen: now,
			Evidence: attestation.Evidence{EKPublic: []byte("ek public")}}},
		{Receipt: &store.Receipt{Time: now.Add(time.Second), EKHash: ekOK, Allowed: true}, Node: &store.NodeRecord{EKHash: ekOK, FirstSeen: now, LastSeen: now}},
		{Receipt: &store.Receipt{Time: now.Add(2 * time.Second), EKHash: ekDenied, Check: "pcr_digest"}, Deny: store.DenyAdd},
	} {
		if err := st.Record(ctx, d); err != nil {
			t.Fatalf("decision %d: %v", i, err)
		}
		ids = append([]string{d.Receipt.ID}, ids...)
	}
	return dir, ids
}

func TestNodesCommands(t *testing.T) {
	dir, ids := nodesStore(t)

	code, stdout, stderr := runCmd(t, "nodes", "list", "--data-dir", dir, "--json")
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if code != 0 || len(lines) != 2 {
		t.Fatalf("nodes list --json: exit %d, stderr %q, stdout:\n%s", code, stderr, stdout)
	}
	var first, second broker.NodeStatus
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil || first.EKHash != ekDenied || first.Denial == nil || first.Denial.Check != "pcr_digest" {
		t.Errorf("first node = %+v, %v; want %s, deny-listed by pcr_digest", first, err, ekDenied)
	}
	if err := json.Unmarshal([]byte(lines[1]), &second); err != nil || second.EKHash != ekOK || second.Denial != nil {
		t.Errorf("second node = %+v, %v; want %s, not deny-listed", second, err, ekOK)
	}
	if strings.Contains(stdout, `"evidence"`) {
		t.Errorf("nodes list --json prints the evidence:\n%s", stdout)
	}
	code, stdout, _ = runCmd(t, "nodes", "list", "--data-dir", dir)
	if code != 0 || !strings.Contains(stdout, ekDenied) || !strings.Contains(stdout, "yes (pcr_digest, receipt "+ids[0]+")") || !strings.Contains(stdout, ids[1]) {
		t.Errorf("nodes list: exit %d, want both nodes, the deny-listed one with its receipt:\n%s", code, stdout)
	}

	code, stdout, stderr = runCmd(t, "nodes", "show", "--data-dir", dir, ekDenied[:8])
	if code != 0 || !strings.Contains(stdout, `"ek_hash": "`+ekDenied+`"`) || !strings.Contains(stdout, `"denial": {`) || strings.Contains(stdout, `"evidence"`) {
		t.Errorf("nodes show: exit %d, stderr %q; want the record and its denial, without evidence:\n%s", code, stderr, stdout)
	}
	code, stdout, _ = runCmd(t, "nodes", "show", "--data-dir", dir, "--evidence", ekDenied)
	if code != 0 || !strings.Contains(stdout, `"evidence": {`) || !strings.Contains(stdout, `"ek_public"`) {
		t.Errorf("nodes show --evidence: exit %d; want the evidence:\n%s", code, stdout)
	}

	code, stdout, stderr = runCmd(t, "nodes", "allow", "--data-dir", dir, ekDenied[:10], "--reason", "boot checked", "--json")
	var r store.Receipt
	if err := json.Unmarshal([]byte(stdout), &r); code != 0 || err != nil || r.Action != "nodes allow" || r.EKHash != ekDenied || r.Reason != "boot checked" || r.Operator != operatorName() {
		t.Fatalf("nodes allow --json: exit %d, stderr %q, receipt %+v", code, stderr, r)
	}
	if code, _, stderr = runCmd(t, "nodes", "allow", "--data-dir", dir, ekDenied, "--reason", "again"); code != 1 || !strings.Contains(stderr, "not on the deny list") {
		t.Errorf("nodes allow of a node not deny-listed: exit %d, stderr %q; want 1, not on the deny list", code, stderr)
	}
	code, stdout, stderr = runCmd(t, "nodes", "forget", "--data-dir", dir, ekOK, "--reason", "TPM cleared")
	if code != 0 || !strings.HasPrefix(stdout, "nodes forget: node "+ekOK+" (receipt ") {
		t.Errorf("nodes forget: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if code, _, stderr = runCmd(t, "nodes", "show", "--data-dir", dir, ekOK); code != 1 || !strings.Contains(stderr, "not found") {
		t.Errorf("nodes show of a forgotten node: exit %d, stderr %q; want 1, not found", code, stderr)
	}
	if code, _, stderr = runCmd(t, "nodes", "forget", "--data-dir", dir, "0123456789", "--reason", "x"); code != 1 || !strings.Contains(stderr, "no EK hash starts with 0123456789") {
		t.Errorf("nodes forget of an unknown node: exit %d, stderr %q", code, stderr)
	}

	// Both actions are receipts; export prints every receipt, newest first.
	code, stdout, stderr = runCmd(t, "receipts", "export", "--data-dir", dir)
	lines = strings.Split(strings.TrimSpace(stdout), "\n")
	if code != 0 || len(lines) != 5 {
		t.Fatalf("receipts export: exit %d, stderr %q, %d lines; want 5:\n%s", code, stderr, len(lines), stdout)
	}
	var actions []string
	for i, l := range lines {
		var r store.Receipt
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("line %d is not a receipt: %v", i, err)
		}
		actions = append(actions, r.Action)
		if i >= 2 && r.ID != ids[i-2] {
			t.Errorf("line %d is receipt %s, want %s", i, r.ID, ids[i-2])
		}
	}
	if actions[0] != "nodes forget" || actions[1] != "nodes allow" {
		t.Errorf("newest receipts' actions = %q; want nodes forget, nodes allow", actions[:2])
	}
	code, stdout, _ = runCmd(t, "receipts", "export", "--data-dir", dir, "--ek", ekDenied, "--before", time.Now().Add(-10*time.Second).UTC().Format(time.RFC3339))
	if code != 0 || strings.Count(stdout, "\n") != 2 || !strings.Contains(stdout, ids[0]) || !strings.Contains(stdout, ids[2]) {
		t.Errorf("receipts export --ek --before: exit %d; want the node's 2 receipts before the actions:\n%s", code, stdout)
	}
	code, stdout, _ = runCmd(t, "receipts", "list", "--data-dir", dir, "--limit", "1")
	if code != 0 || !strings.Contains(stdout, `nodes forget by `+operatorName()+`: "TPM cleared"`) {
		t.Errorf("receipts list does not show the forget action:\n%s", stdout)
	}
}

func TestNodesUsage(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"list without a store", []string{"nodes", "list"}, "keybroker nodes list: --config or --data-dir is required\n"},
		{"list with limit 0", []string{"nodes", "list", "--data-dir", "d", "--limit", "0"}, "--limit must be 1 to 1000"},
		{"show without a node", []string{"nodes", "show", "--data-dir", "d"}, "missing the node's EK hash"},
		{"show with two nodes", []string{"nodes", "show", "--data-dir", "d", "aaaaaaaa", "bbbbbbbb"}, `unexpected arguments ["bbbbbbbb"]`},
		{"forget without a reason", []string{"nodes", "forget", "--data-dir", "d", "aaaaaaaa"}, "--reason is required"},
		{"allow with a blank reason", []string{"nodes", "allow", "--data-dir", "d", "aaaaaaaa", "--reason", " "}, "--reason is required"},
		{"nodes alone", []string{"nodes"}, "keybroker nodes: missing command"},
		{"export with a bad time", []string{"receipts", "export", "--data-dir", "d", "--after", "yesterday"}, `--after: "yesterday" is not an RFC 3339 time`},
		{"export with after past before", []string{"receipts", "export", "--data-dir", "d", "--after", "2026-02-01", "--before", "2026-01-01"}, "--after must be earlier than --before"},
		{"show with a malformed hash", []string{"nodes", "show", "--data-dir", "d", "xyz12345"}, `invalid EK hash: "xyz12345" is not hex digits`},
		{"forget with a short prefix", []string{"nodes", "forget", "--data-dir", "d", "abcd", "--reason", "r"}, "invalid EK hash: prefix abcd is shorter than 8 hex digits"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCmd(t, tc.args...)
			if code != 2 || !strings.Contains(stderr, tc.wantErr) {
				t.Errorf("exit %d, stderr %q; want 2 containing %q", code, stderr, tc.wantErr)
			}
		})
	}
}

func TestNodesHelp(t *testing.T) {
	for name, usage := range map[string]string{
		"nodes":                   "keybroker nodes [command]",
		"nodes list":              "keybroker nodes list (--config broker.hcl | --data-dir DIR | --vault-mount auth/tpm) [flags]",
		"nodes show":              "keybroker nodes show (--config broker.hcl | --data-dir DIR | --vault-mount auth/tpm) EKHASH [flags]",
		"nodes forget":            "keybroker nodes forget (--config broker.hcl | --data-dir DIR) EKHASH --reason TEXT [flags]",
		"nodes allow":             "keybroker nodes allow (--config broker.hcl | --data-dir DIR) EKHASH --reason TEXT [flags]",
		"receipts export":         "keybroker receipts export (--config broker.hcl | --data-dir DIR | --vault-mount auth/tpm) [--after TIME] [--before TIME] [--ek HASH] [flags]",
		"receipts checkpoint-key": "keybroker receipts checkpoint-key (--config broker.hcl | --data-dir DIR | --vault-mount auth/tpm) [flags]",
	} {
		code, stdout, stderr := runCmd(t, append(strings.Fields(name), "--help")...)
		if code != 0 || stderr != "" || strings.Count(stdout, "Usage:") != 1 || !strings.Contains(stdout, usage) {
			t.Errorf("%s --help: exit %d, stderr %q; want one Usage: with %q:\n%s", name, code, stderr, usage, stdout)
		}
	}
}

// A node on the deny list without a record (refused before it ever
// verified) is shown and allowed by its full EK hash only.
func TestNodesDenyOnly(t *testing.T) {
	dir := t.TempDir()
	st, err := store.OpenBolt(filepath.Join(dir, broker.BoltFile), store.BoltOpts{})
	if err != nil {
		t.Fatal(err)
	}
	ek := "e0e0e0e0" + strings.Repeat("3", 56)
	err = st.Record(context.Background(), &store.Decision{Receipt: &store.Receipt{EKHash: ek, Check: "pcr_digest"}, Deny: store.DenyAdd})
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCmd(t, "nodes", "show", "--data-dir", dir, ek)
	if code != 0 || !strings.Contains(stdout, `"no_record": true`) || !strings.Contains(stdout, `"check": "pcr_digest"`) {
		t.Errorf("nodes show of a deny-listed node without record: exit %d, stderr %q:\n%s", code, stderr, stdout)
	}
	if code, _, stderr = runCmd(t, "nodes", "allow", "--data-dir", dir, ek[:8], "--reason", "r"); code != 1 || !strings.Contains(stderr, "not found") {
		t.Errorf("nodes allow by prefix of a node without record: exit %d, stderr %q; want 1, not found", code, stderr)
	}
	if code, stdout, stderr = runCmd(t, "nodes", "allow", "--data-dir", dir, ek, "--reason", "r"); code != 0 || !strings.Contains(stdout, "nodes allow: node "+ek) {
		t.Errorf("nodes allow by full hash: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if code, stdout, _ = runCmd(t, "nodes", "show", "--data-dir", dir, ek); code != 1 {
		t.Errorf("nodes show after allow: exit %d; want 1, nothing left:\n%s", code, stdout)
	}
}
