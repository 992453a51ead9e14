package idlog_test

import (
	"strings"
	"testing"

	"github.com/keybroker/keybroker/idlog"
)

const (
	bootLine = `{"type":"boot","pcr":15,"boot_id":"b1","time":"2026-12-05T12:00:00Z"}`
	x509Line = `{"type":"x509","spiffe_id":"spiffe://example.org/web","serial":"1f","expires":"2026-12-05T13:00:00Z","selectors":["unix:uid:1000"],"exe_sha256":"` +
		"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" + `","uid":1000,"time":"2026-12-05T12:00:01Z"}`
)

func TestParse(t *testing.T) {
	l, err := idlog.Parse([]byte(bootLine + "\n" + x509Line + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := idlog.Extend(idlog.Extend([32]byte{}, idlog.Digest([]byte(bootLine))), idlog.Digest([]byte(x509Line)))
	if l.Value != want || l.PCR != 15 || l.BootID != "b1" || len(l.Issued) != 1 || l.Issued[0].Serial != "1f" || l.Issued[0].UID != 1000 ||
		l.Issued[0].Expires.IsZero() || l.Issued[0].GID != nil {
		t.Fatalf("parsed %+v", l)
	}
	// A record with the caller's gid (agents since it is recorded).
	withGID := strings.Replace(x509Line, `"uid":1000`, `"uid":1000,"gid":50`, 1)
	if l, err := idlog.Parse([]byte(bootLine + "\n" + withGID + "\n")); err != nil || l.Issued[0].GID == nil || *l.Issued[0].GID != 50 {
		t.Fatalf("record with gid: %+v, %v", l, err)
	}
	for _, tt := range []struct {
		name, log, wantErr string
	}{
		{"empty", "", "the identity log is empty"},
		{"no final newline", bootLine, "the identity log does not end with a newline"},
		{"too large", bootLine + "\n" + strings.Repeat(x509Line+"\n", idlog.MaxSize/len(x509Line)+1), "the identity log exceeds 262144 bytes"},
		{"no boot record", x509Line + "\n", "identity log record 1: a segment must start with a boot record"},
		{"two boot records", bootLine + "\n" + bootLine + "\n", "identity log record 2: a boot record may only start a segment"},
		{"blank line", bootLine + "\n\n", "identity log record 2: is not a record: EOF"},
		{"spacing", bootLine + "\n" + strings.Replace(x509Line, `"uid":1000`, `"uid": 1000`, 1) + "\n", "identity log record 2: is not in the agent's encoding"},
		{"duplicate key", bootLine + "\n" + strings.Replace(x509Line, `"uid":1000`, `"uid":0,"uid":1000`, 1) + "\n", "identity log record 2: is not in the agent's encoding"},
		{"two objects a line", bootLine + "{}\n", "identity log record 1: has data after the record"},
		{"unknown type", bootLine + "\n" + strings.Replace(x509Line, `"x509"`, `"ssh"`, 1) + "\n", `identity log record 2: unknown record type "ssh"`},
		{"upper-case serial", bootLine + "\n" + strings.Replace(x509Line, `"1f"`, `"1F"`, 1) + "\n", "identity log record 2: serial is not lowercase hex"},
		{"bad SPIFFE ID", bootLine + "\n" + strings.Replace(x509Line, "spiffe://example.org/web", "https://example.org/web", 1) + "\n", "identity log record 2: spiffe_id: scheme is missing or invalid"},
		{"short exe digest", bootLine + "\n" + strings.Replace(x509Line, "0123456789abcdef0123", "", 1) + "\n", "identity log record 2: exe_sha256 is not a SHA-256 in lowercase hex"},
		{"gid on a boot record", strings.Replace(bootLine, `"time"`, `"gid":0,"time"`, 1) + "\n", "identity log record 1: boot record with handout fields"},
		{"no uid", bootLine + "\n" + strings.Replace(x509Line, `,"uid":1000`, "", 1) + "\n", "identity log record 2: handout record without uid"},
		{"resettable PCR", strings.Replace(bootLine, `"pcr":15`, `"pcr":16`, 1) + "\n", "identity log record 1: PCR 16 cannot hold the identity record: use one of 10-15"},
		{"firmware PCR", strings.Replace(bootLine, `"pcr":15`, `"pcr":7`, 1) + "\n", "identity log record 1: PCR 7 cannot hold the identity record: use one of 10-15"},
		{"DRTM PCR", strings.Replace(bootLine, `"pcr":15`, `"pcr":17`, 1) + "\n", "identity log record 1: PCR 17 cannot hold the identity record: use one of 10-15"},
		{"bad time", strings.Replace(bootLine, `2026-12-05T12:00:00Z`, `yesterday`, 1) + "\n", "identity log record 1: time is not an RFC 3339 time"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := idlog.Parse([]byte(tt.log))
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("error %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// FuzzParse: Parse never panics, and what it accepts replays to the value
// it reports.
func FuzzParse(f *testing.F) {
	f.Add([]byte(bootLine + "\n" + x509Line + "\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		l, err := idlog.Parse(raw)
		if err != nil {
			return
		}
		var v [32]byte
		for _, line := range strings.SplitAfter(string(raw), "\n") {
			if line != "" {
				v = idlog.Extend(v, idlog.Digest([]byte(strings.TrimSuffix(line, "\n"))))
			}
		}
		if v != l.Value {
			t.Fatal("value differs from the replay")
		}
	})
}
