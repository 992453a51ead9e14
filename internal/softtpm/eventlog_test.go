package softtpm

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"testing"

	legacy "github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/keybroker/keybroker/broker/attestation"
	"github.com/keybroker/keybroker/broker/evidence"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/broker/verify/tcglog"
	"github.com/keybroker/keybroker/internal/tpmtest"
)

// corpusDir holds the broker's corpus of real event logs (its README
// names each log's origin).
const corpusDir = "../../broker/verify/testdata/eventlogs"

func readCorpusLog(t *testing.T, name string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(corpusDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// eventLogNode makes a node that booted as raw says, in banks.
func eventLogNode(t *testing.T, key KeyType, raw []byte, banks ...tpm2.TPMAlgID) *Node {
	t.Helper()
	pcrs, err := EventLogPCRs(raw, banks...)
	if err != nil {
		t.Fatalf("EventLogPCRs: %v", err)
	}
	n, err := New(Opts{Key: key, Banks: banks, PCRs: pcrs, EventLog: raw})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// attestEvidence runs node through a challenge as the broker makes it and
// returns what the broker would verify: the node's challenge request and
// its answer, with the event log it sent.
func attestEvidence(t *testing.T, node *Node) attestation.Evidence {
	t.Helper()
	secret := random(t, 32)
	got, err := node.Activate(makeCredential(t, node.EKPublic(), node.AKName(), secret))
	if err != nil {
		t.Fatalf("Activate: %v", err)
	}
	quotes, err := node.Quote(got)
	if err != nil {
		t.Fatalf("Quote: %v", err)
	}
	req, ans := node.ChallengeRequest(), node.AttestRequest("c1", quotes)
	ev := attestation.Evidence{EKPublic: req.GetEkPublic(), AKPublic: req.GetAkPublic(),
		SecretHash: sha256.Sum256(secret), EventLog: ans.GetEventLog()}
	for _, q := range ans.GetQuotes() {
		ev.Quotes = append(ev.Quotes, attestation.Quote{Attest: q.GetAttest(), Signature: q.GetSignature(),
			Bank: uint16(q.GetPcrs().GetHashAlg()), PCRs: q.GetPcrs().GetValues()})
	}
	return ev
}

// A node booted from a real machine's event log sends the log with its
// attestation and quotes what the log replays to: every PCR the log
// measures holds the broker's replay of it (tcglog.Replay), in each bank,
// and the broker's verification of the evidence (broker/evidence: the
// quotes, then the event log replayed against them) accepts it with every
// measured event. Logs that start at locality 3, measure only some of
// PCRs 0-7, or carry SHA-384 digests too are among them.
func TestEventLogNodeVerifies(t *testing.T) {
	tests := []struct {
		log   string
		banks []tpm2.TPMAlgID
		key   KeyType
	}{
		{log: "ubuntu-2404-amd-sevsnp.bin", key: ECC},
		{log: "ubuntu-2404-intel-tdx.bin", key: RSA},
		{log: "crypto-agile.bin", key: ECC},
		{log: "gdc-host.bin", key: ECC},
		{log: "sb-cert.bin", key: ECC},
		{log: "cos-125-intel-tdx-secure-boot.bin", banks: []tpm2.TPMAlgID{tpm2.TPMAlgSHA256, tpm2.TPMAlgSHA384}, key: ECC},
	}
	for _, tc := range tests {
		t.Run(tc.log, func(t *testing.T) {
			raw := readCorpusLog(t, tc.log)
			node := eventLogNode(t, tc.key, raw, tc.banks...)
			log, err := tcglog.Parse(raw)
			if err != nil {
				t.Fatal(err)
			}
			ev := attestEvidence(t, node)
			if !bytes.Equal(ev.EventLog, raw) {
				t.Fatalf("AttestRequest sent %d bytes of event log, want the %d of %s", len(ev.EventLog), len(raw), tc.log)
			}
			trust := verify.Trust{EKHashes: []string{node.EKHash()}}
			_, v, err := evidence.Verify(ev, verify.Opts{Trust: trust})
			if err != nil {
				t.Fatalf("the broker refuses the node's evidence: %v", err)
			}
			banks := tc.banks
			if banks == nil {
				banks = []tpm2.TPMAlgID{tpm2.TPMAlgSHA256}
			}
			for _, bank := range banks {
				replayed, err := log.Replay(bank)
				if err != nil {
					t.Fatal(err)
				}
				quoted := v.PCRs(bank)
				for idx, want := range replayed {
					if !bytes.Equal(quoted[idx], want) {
						t.Errorf("%s PCR %d quoted %x, the log replays to %x", verify.BankName(bank), idx, quoted[idx], want)
					}
				}
			}
			f := v.EventLog()
			measured := 0
			for _, e := range log.Events {
				if e.Measured() {
					measured++
				}
			}
			if f == nil || len(f.Events) != measured || f.Bank != tpm2.TPMAlgSHA256 {
				t.Fatalf("event log facts %+v: want %d events read from sha256", f, measured)
			}
		})
	}
}

// A node booted from a log holds, in all 24 PCRs, what a real TPM holds
// after the log's every measured event is extended into it: the embedded
// simulator, extended event by event as the machine's firmware did. PCRs
// the log does not measure hold the simulator's reset values (zero, the
// DRTM PCRs 17-22 all ones).
func TestEventLogPCRsMatchSimulator(t *testing.T) {
	for _, name := range []string{"ubuntu-2104-no-dbx.bin", "sb-cert.bin"} {
		t.Run(name, func(t *testing.T) {
			raw := readCorpusLog(t, name)
			log, err := tcglog.Parse(raw)
			if err != nil {
				t.Fatal(err)
			}
			if log.StartupLocality != 0 {
				t.Fatal("the simulator starts at locality 0")
			}
			rw := tpmtest.Open(t)
			for _, e := range log.Events {
				if !e.Measured() {
					continue
				}
				if err := legacy.PCRExtend(rw, tpmutil.Handle(e.PCR), legacy.AlgSHA256, e.Digests[tpm2.TPMAlgSHA256], ""); err != nil {
					t.Fatalf("extend event %d into PCR %d: %v", e.Seq, e.PCR, err)
				}
			}
			node := eventLogNode(t, ECC, raw)
			got, err := node.PCRs(tpm2.TPMAlgSHA256)
			if err != nil {
				t.Fatal(err)
			}
			for idx := range NumPCRs {
				want, err := legacy.ReadPCR(rw, idx, legacy.AlgSHA256)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got[uint32(idx)], want) {
					t.Errorf("PCR %d: node %x, simulator %x", idx, got[uint32(idx)], want)
				}
			}
		})
	}
}

// A node that sends a log its PCRs do not replay to (the default boot's
// values) is refused by the broker, naming the PCRs: the verification
// above is not vacuous.
func TestEventLogNodeWithoutItsPCRsRefused(t *testing.T) {
	raw := readCorpusLog(t, "ubuntu-2404-amd-sevsnp.bin")
	node, err := New(Opts{EventLog: raw})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = evidence.Verify(attestEvidence(t, node), verify.Opts{Trust: verify.Trust{EKHashes: []string{node.EKHash()}}})
	want := "event log does not replay to the quoted sha256 PCRs [0 1 2 3 4 5 6 7 8 9 14]"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("evidence.Verify = %v, want %q", err, want)
	}
}

func TestEventLogPCRsRefused(t *testing.T) {
	tests := []struct {
		name    string
		raw     []byte
		banks   []tpm2.TPMAlgID
		wantErr string
	}{
		{name: "empty", raw: nil, wantErr: "not a TCG event log: the event log is empty"},
		{name: "text", raw: []byte("this is not an event log\n"), wantErr: "not a TCG event log: event 0: record is truncated"},
		{name: "truncated", raw: readCorpusLog(t, "crypto-agile.bin")[:5000], wantErr: "not a TCG event log: event "},
		{name: "SHA-1 log", raw: readCorpusLog(t, "debian-10.bin"),
			wantErr: "the event log has no sha256 digests (it has sha1), so it cannot replay into the node's sha256 PCRs"},
		{name: "SHA-256-only log, SHA-384 bank", raw: readCorpusLog(t, "gdc-host.bin"), banks: []tpm2.TPMAlgID{tpm2.TPMAlgSHA384},
			wantErr: "the event log has no sha384 digests (it has sha256)"},
		{name: "unknown bank", raw: readCorpusLog(t, "gdc-host.bin"), banks: []tpm2.TPMAlgID{tpm2.TPMAlgSM3256},
			wantErr: "PCR bank 0x0012 is not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := EventLogPCRs(tt.raw, tt.banks...); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("EventLogPCRs = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// Without Opts.EventLog a node sends no event log.
func TestNoEventLog(t *testing.T) {
	node := newNode(t, ECC)
	if req := node.AttestRequest("c", nil); req.GetEventLog() != nil || node.EventLog() != nil {
		t.Errorf("a node without a log sends %d bytes of one", len(req.GetEventLog()))
	}
}
