package store

import (
	"bytes"
	"context"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	bolt "go.etcd.io/bbolt"

	"github.com/keybroker/keybroker/broker/attestation"
)

// fullNode is a node record with every field set, as a real one with an
// EK certificate, two banks, counters and SPIFFE releases would be.
func fullNode() NodeRecord {
	id := spiffeid.RequireFromString("spiffe://example.org/node/abc")
	w := spiffeid.RequireFromString("spiffe://example.org/web")
	pcrs := func(b byte) map[uint32][]byte {
		m := map[uint32][]byte{}
		for i := range uint32(24) {
			m[i] = bytes.Repeat([]byte{b + byte(i)}, 32)
		}
		return m
	}
	return NodeRecord{
		EKHash:             "ab12",
		FirstSeen:          time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
		LastSeen:           time.Date(2026, 2, 3, 4, 5, 6, 7, time.UTC),
		AKName:             []byte{0, 11, 1, 2, 3},
		Clock:              1234567,
		ResetCount:         3,
		RestartCount:       4,
		LastReceiptID:      "20260203T040506.000000007Z-0011223344556677",
		Kubelet:            "node-0011223344556677",
		Quarantined:        true,
		BootstrapToken:     "abcdef",
		PolicyCounterBound: 41,
		PolicyEpoch:        2,
		PolicyCounterName:  []byte{0, 0x0b, 1, 2, 3},
		Evidence: attestation.Evidence{
			Time:            time.Date(2026, 2, 3, 4, 5, 6, 7, time.UTC),
			ChallengeID:     "clOtTkourgWXIJduzxljyg",
			EKPublic:        bytes.Repeat([]byte{1}, 122),
			EKCertificate:   bytes.Repeat([]byte{2}, 600),
			EKIntermediates: [][]byte{bytes.Repeat([]byte{3}, 500), {4}},
			AKPublic:        bytes.Repeat([]byte{5}, 88),
			SecretHash:      [32]byte{6, 7, 8},
			Quotes: []attestation.Quote{
				{Attest: bytes.Repeat([]byte{9}, 145), Signature: bytes.Repeat([]byte{10}, 72), Bank: 0x000b, PCRs: pcrs(0)},
				{Attest: bytes.Repeat([]byte{11}, 145), Signature: bytes.Repeat([]byte{12}, 72), Bank: 0x000c, PCRs: pcrs(100)},
			},
			EventLog:       []byte("log"),
			EventLogSHA256: "deadbeef",
			IdentityLog:    []byte("{\"type\":\"boot\"}\n"),
			Previous:       &attestation.Counters{AKName: []byte{0, 11, 9}, Clock: 99, ResetCount: 1, RestartCount: 2},
			ResidentKeys:   []attestation.ResidentKey{{Name: "web", Public: []byte{0, 35, 1}, CertifyInfo: []byte{0xff, 0x54, 0x43, 0x47}, Signature: []byte{0, 24, 2}}},
		},
		EarlierIdentityLogs: []IdentityLog{{ReceiptID: "20260101T000000.000000000Z-00", Log: []byte("{}\n"), Dropped: 2, DroppedSHA256: bytes.Repeat([]byte{7}, 32)}},
		SVIDs:               []NodeSVID{{Serial: "1f", ID: id, NotAfter: time.Date(2026, 3, 1, 0, 0, 0, 1, time.UTC)}},
		WorkloadEntries: []WorkloadEntry{{Name: "web", ID: w, TTL: time.Hour,
			Selectors: []Selector{{Type: "unix", Value: "uid:1000"}, {Type: "unix", Value: "path:/bin/web"}}}},
	}
}

// assertAllSet fails if any field of v, at any depth, is its zero value:
// a field added to NodeRecord must be added to the stored form too.
func assertAllSet(t *testing.T, v reflect.Value, path string) {
	t.Helper()
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			t.Errorf("%s is nil", path)
			return
		}
		assertAllSet(t, v.Elem(), path)
	case reflect.Struct:
		if v.Type() == reflect.TypeOf(time.Time{}) || v.Type() == reflect.TypeOf(spiffeid.ID{}) {
			if v.IsZero() {
				t.Errorf("%s is zero", path)
			}
			return
		}
		for i := range v.NumField() {
			assertAllSet(t, v.Field(i), path+"."+v.Type().Field(i).Name)
		}
	case reflect.Slice, reflect.Map:
		if v.Len() == 0 {
			t.Errorf("%s is empty", path)
		}
		if v.Kind() == reflect.Slice && v.Type().Elem().Kind() != reflect.Uint8 {
			for i := range v.Len() {
				assertAllSet(t, v.Index(i), path)
			}
		}
	default:
		if v.IsZero() {
			t.Errorf("%s is zero", path)
		}
	}
}

// Every field of a node record survives the stored form, which is at
// most three quarters of the JSON one (TPM artifacts as bytes, not base64).
func TestNodeRecordEncoding(t *testing.T) {
	n := fullNode()
	assertAllSet(t, reflect.ValueOf(n), "NodeRecord")
	b, err := encodeNode(n)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeNode(n.EKHash, b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, n) {
		t.Fatalf("decoded\n%+v\nwant\n%+v", got, n)
	}
	js, err := json.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	if 4*len(b) > 3*len(js) {
		t.Errorf("stored form %d bytes, JSON %d: want at most three quarters", len(b), len(js))
	}
	t.Logf("stored form %d bytes, JSON %d", len(b), len(js))

	// Without its evidence but for the identity log, every other field, in
	// both forms.
	head := n
	head.Evidence = attestation.Evidence{IdentityLog: n.Evidence.IdentityLog} // compared by the next decision
	for form, enc := range map[string][]byte{"compact": b, "JSON": js} {
		got, err := decodeNodeHead(n.EKHash, enc)
		if err != nil || !reflect.DeepEqual(got, head) {
			t.Errorf("%s record without evidence decoded as\n%+v, %v\nwant\n%+v", form, got, err, head)
		}
	}
	if _, err := decodeNodeHead("e", append(bytes.Clone(b), 0x4a)); err == nil {
		t.Error("decodeNodeHead read a record with a truncated trailing field")
	}

	var zero NodeRecord
	zero.EKHash = "e"
	b, err = encodeNode(zero)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := decodeNode("e", b); err != nil || !reflect.DeepEqual(got, zero) {
		t.Fatalf("a record with only its key: %+v, %v", got, err)
	}
	for _, bad := range [][]byte{nil, {0x02, 1}, {nodeRecordV1, 0xff}, []byte("{not json")} {
		if _, err := decodeNode("e", bad); err == nil {
			t.Errorf("decoded %x", bad)
		}
	}
}

// A node record stored as JSON, as brokers before the compact form wrote
// them, still reads, and the node's next decision rewrites it compact.
func TestNodeRecordStoredAsJSON(t *testing.T) {
	b, _ := openTemp(t)
	n := fullNode()
	n.Evidence.EventLog, n.Evidence.EventLogSHA256 = nil, ""
	js, err := json.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketNodes).Put([]byte(n.EKHash), js) }); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	got, err := b.GetNode(ctx, n.EKHash)
	if err != nil || !reflect.DeepEqual(got, n) {
		t.Fatalf("JSON record read as %+v, %v", got, err)
	}
	d := decide("c1", n.EKHash, time.Now().Add(time.Minute))
	next := n
	next.SVIDs = nil
	d.Node = &next
	if err := b.Record(ctx, d); err != nil {
		t.Fatal(err)
	}
	err = b.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketNodes).Get([]byte(n.EKHash)); len(v) == 0 || v[0] != nodeRecordV1 {
			t.Errorf("the record was not rewritten compact: %.20q", v)
		}
		if v := tx.Bucket(bucketNodeSVIDs).Get([]byte("1f")); v != nil {
			t.Errorf("the JSON record's SVID index entry survived its replacement: %q", v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
