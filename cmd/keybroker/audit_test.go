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
	"github.com/keybroker/keybroker/idlog"
)

func TestAuditShow(t *testing.T) {
	dir := t.TempDir()
	st, err := store.OpenBolt(filepath.Join(dir, broker.BoltFile), store.BoltOpts{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	var log []byte
	for i, r := range []idlog.Record{
		idlog.BootRecord(15, "boot-1", now),
		idlog.HandoutRecord(idlog.Issued{Type: idlog.TypeX509, SPIFFEID: "spiffe://example.org/web", Serial: "1f", Selectors: []string{"unix:uid:1000"},
			ExeSHA256: strings.Repeat("ab", 32), UID: 1000, Time: now.Add(time.Second)}),
		idlog.HandoutRecord(idlog.Issued{Type: idlog.TypeJWT, SPIFFEID: "spiffe://example.org/db", Serial: "2e", UID: 0, Time: now.Add(2 * time.Second),
			Expires: now.Add(time.Hour)}),
	} {
		line, err := idlog.Encode(r, i == 0)
		if err != nil {
			t.Fatal(err)
		}
		log = append(append(log, line...), '\n')
	}
	for _, d := range []*store.Decision{
		{Receipt: &store.Receipt{Time: now, EKHash: ekOK, Allowed: true}, Node: &store.NodeRecord{EKHash: ekOK, FirstSeen: now, LastSeen: now,
			Evidence: attestation.Evidence{Time: now, EKPublic: []byte("ek"), IdentityLog: log}}},
		{Receipt: &store.Receipt{Time: now, EKHash: ekDenied, Allowed: true}, Node: &store.NodeRecord{EKHash: ekDenied, FirstSeen: now, LastSeen: now,
			Evidence:            attestation.Evidence{Time: now, EKPublic: []byte("ek")},
			EarlierIdentityLogs: []store.IdentityLog{{ReceiptID: "r-0", Log: log, Dropped: 3, DroppedSHA256: make([]byte, 32)}}}},
	} {
		if err := st.Record(context.Background(), d); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()

	code, stdout, stderr := runCmd(t, "audit", "show", "--data-dir", dir, "--node", ekOK[:8])
	if code != 0 || !strings.Contains(stdout, "node "+ekOK+": 2 identities issued in boot boot-1 (sha256 PCR 15)") ||
		!strings.Contains(stdout, "x509  spiffe://example.org/web  1f") || !strings.Contains(stdout, "jwt   spiffe://example.org/db") {
		t.Fatalf("audit show: exit %d, stderr %q, stdout:\n%s", code, stderr, stdout)
	}
	code, stdout, _ = runCmd(t, "audit", "show", "--data-dir", dir, "--node", ekOK, "--json")
	var rec auditRecord
	if err := json.Unmarshal([]byte(stdout), &rec); code != 0 || err != nil || rec.PCR != 15 || len(rec.Issued) != 2 ||
		rec.Issued[0].ExeSHA256 != strings.Repeat("ab", 32) || !rec.Issued[1].Expires.Equal(now.Add(time.Hour)) {
		t.Fatalf("audit show --json: exit %d, %v:\n%s", code, err, stdout)
	}
	// No record in the last attestation: earlier boots are still printed.
	code, stdout, stderr = runCmd(t, "audit", "show", "--data-dir", dir, "--node", ekDenied)
	if code != 0 || !strings.Contains(stdout, "its last verified attestation carried no record of issued identities") ||
		!strings.Contains(stdout, "earlier boot boot-1: 2 identities issued (sha256 PCR 15), verified by receipt r-0") ||
		!strings.Contains(stdout, "3 older boots' records no longer kept") {
		t.Fatalf("a node without a current record: exit %d, stderr %q, stdout:\n%s", code, stderr, stdout)
	}
	if code, _, stderr = runCmd(t, "audit", "show", "--data-dir", dir); code != 2 || !strings.Contains(stderr, "--node") {
		t.Fatalf("without --node: exit %d, stderr %q", code, stderr)
	}
}
