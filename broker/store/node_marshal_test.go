package store

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/broker/attestation"
	storev1 "github.com/keybroker/keybroker/proto/keybroker/store/v1"
)

// marshalNodeProto is the stored form of n as proto's deterministic
// marshal of storev1.NodeRecord writes it: the reference marshalNode must
// reproduce byte for byte.
func marshalNodeProto(n *NodeRecord) ([]byte, error) {
	ev := &n.Evidence
	pb := &storev1.NodeRecord{
		EkHash: n.EKHash, FirstSeen: unixNano(n.FirstSeen), LastSeen: unixNano(n.LastSeen), AkName: n.AKName,
		Clock: n.Clock, ResetCount: n.ResetCount, RestartCount: n.RestartCount, LastReceiptId: n.LastReceiptID,
		Kubelet: n.Kubelet, Quarantined: n.Quarantined, BootstrapToken: n.BootstrapToken,
		PolicyCounterBound: n.PolicyCounterBound, PolicyEpoch: n.PolicyEpoch, PolicyCounterName: n.PolicyCounterName,
		Evidence: &storev1.Evidence{
			Time: unixNano(ev.Time), ChallengeId: ev.ChallengeID, EkPublic: ev.EKPublic, EkCertificate: ev.EKCertificate,
			EkIntermediates: ev.EKIntermediates, AkPublic: ev.AKPublic, SecretHash: ev.SecretHash[:], EventLog: ev.EventLog,
			EventLogSha256: ev.EventLogSHA256, IdentityLog: ev.IdentityLog,
		},
	}
	for _, q := range ev.Quotes {
		pb.Evidence.Quotes = append(pb.Evidence.Quotes, &storev1.Quote{Attest: q.Attest, Signature: q.Signature, Bank: uint32(q.Bank), Pcrs: q.PCRs})
	}
	for _, k := range ev.ResidentKeys {
		pb.Evidence.ResidentKeys = append(pb.Evidence.ResidentKeys, &storev1.ResidentKey{Name: k.Name, Public: k.Public, CertifyInfo: k.CertifyInfo, Signature: k.Signature})
	}
	if p := ev.Previous; p != nil {
		pb.Evidence.Previous = &storev1.Counters{AkName: p.AKName, Clock: p.Clock, ResetCount: p.ResetCount, RestartCount: p.RestartCount}
	}
	for _, s := range n.SVIDs {
		pb.Svids = append(pb.Svids, &storev1.NodeSVID{Serial: s.Serial, SpiffeId: idString(s.ID), NotAfter: unixNano(s.NotAfter)})
	}
	for _, l := range n.EarlierIdentityLogs {
		pb.EarlierIdentityLogs = append(pb.EarlierIdentityLogs, &storev1.IdentityLog{ReceiptId: l.ReceiptID, Log: l.Log,
			Dropped: l.Dropped, DroppedSha256: l.DroppedSHA256})
	}
	for _, w := range n.WorkloadEntries {
		e := &storev1.WorkloadEntry{Name: w.Name, SpiffeId: idString(w.ID), TtlNanos: int64(w.TTL)}
		for _, sel := range w.Selectors {
			e.Selectors = append(e.Selectors, &storev1.Selector{Type: sel.Type, Value: sel.Value})
		}
		pb.WorkloadEntries = append(pb.WorkloadEntries, e)
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(pb)
	if err != nil {
		return nil, err
	}
	return append([]byte{nodeRecordV1}, b...), nil
}

// assertSameEncoding fails unless marshalNode writes what proto writes.
func assertSameEncoding(t *testing.T, name string, n NodeRecord) {
	t.Helper()
	want, err := marshalNodeProto(&n)
	if err != nil {
		t.Fatalf("%s: proto: %v", name, err)
	}
	got, err := marshalNode(&n)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: encoded\n%x\nproto encodes\n%x", name, got, want)
	}
	back, err := decodeNode(n.EKHash, got)
	if err != nil {
		t.Fatalf("%s: the encoding does not decode: %v", name, err)
	}
	again, _ := marshalNode(&back)
	if !bytes.Equal(again, got) {
		t.Fatalf("%s: decoding and encoding again changed the bytes", name)
	}
}

// The stored form of a node record is a stored format: the encoder writes
// what proto's deterministic marshal of storev1.NodeRecord does, byte for
// byte, for records with every field set, none, empty and zero elements,
// lengths of one to three varint bytes and negative times, and for random
// ones.
func TestMarshalNodeIsProto(t *testing.T) {
	full := fullNode()
	assertSameEncoding(t, "every field", full)
	assertSameEncoding(t, "only the key", NodeRecord{EKHash: "e"})
	assertSameEncoding(t, "nothing", NodeRecord{})

	edges := fullNode()
	edges.FirstSeen = time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC) // a negative int64
	edges.Evidence.EventLog = bytes.Repeat([]byte{'l'}, 70_000)   // a three-byte length, inside the evidence
	edges.Evidence.EKIntermediates = [][]byte{{}, nil, {1}}
	edges.Evidence.Quotes = append(edges.Evidence.Quotes,
		attestation.Quote{PCRs: map[uint32][]byte{0: nil, 1 << 31: {}, 7: {1}}}, // key 0, empty values
		attestation.Quote{Bank: 0xffff, PCRs: bigPCRMap(40)},                    // more PCRs than the stack buffer holds
		attestation.Quote{})
	edges.Evidence.Previous = &attestation.Counters{} // present but zero
	edges.Evidence.ResidentKeys = append(edges.Evidence.ResidentKeys, attestation.ResidentKey{})
	edges.WorkloadEntries = append(edges.WorkloadEntries, WorkloadEntry{TTL: -time.Second, Selectors: []Selector{{}}})
	edges.EarlierIdentityLogs = append(edges.EarlierIdentityLogs, IdentityLog{Log: bytes.Repeat([]byte{'x'}, 200)})
	edges.Kubelet = "ünïcode ✓"
	assertSameEncoding(t, "edges", edges)

	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 300 {
		assertSameEncoding(t, fmt.Sprintf("random %d", i), randomNode(rng))
	}
}

func bigPCRMap(n int) map[uint32][]byte {
	m := map[uint32][]byte{}
	for i := range n {
		m[uint32(i*7919)] = bytes.Repeat([]byte{byte(i)}, i)
	}
	return m
}

// randomNode is fullNode with each field kept, emptied or resized at random.
func randomNode(rng *rand.Rand) NodeRecord {
	n := fullNode()
	blob := func(b []byte) []byte {
		switch rng.IntN(4) {
		case 0:
			return nil
		case 1:
			return bytes.Repeat([]byte{byte(rng.IntN(256))}, rng.IntN(300))
		}
		return b
	}
	str := func(s string) string {
		if rng.IntN(3) == 0 {
			return ""
		}
		return s
	}
	n.EKHash, n.LastReceiptID, n.Kubelet, n.BootstrapToken = str(n.EKHash), str(n.LastReceiptID), str(n.Kubelet), str(n.BootstrapToken)
	n.AKName, n.PolicyCounterName = blob(n.AKName), blob(n.PolicyCounterName)
	n.Clock, n.ResetCount, n.RestartCount = rng.Uint64()>>rng.IntN(64), rng.Uint32()>>rng.IntN(32), uint32(rng.IntN(2))
	n.Quarantined = rng.IntN(2) == 0
	n.PolicyCounterBound, n.PolicyEpoch = uint64(rng.IntN(3)), rng.Uint64()
	if rng.IntN(3) == 0 {
		n.FirstSeen, n.LastSeen = time.Time{}, time.Unix(0, rng.Int64()-rng.Int64()).UTC()
	}
	ev := &n.Evidence
	ev.ChallengeID, ev.EventLogSHA256 = str(ev.ChallengeID), str(ev.EventLogSHA256)
	ev.EKPublic, ev.EKCertificate, ev.AKPublic = blob(ev.EKPublic), blob(ev.EKCertificate), blob(ev.AKPublic)
	ev.EventLog, ev.IdentityLog = blob(ev.EventLog), blob(ev.IdentityLog)
	ev.EKIntermediates = ev.EKIntermediates[:rng.IntN(len(ev.EKIntermediates)+1)]
	ev.Quotes = ev.Quotes[:rng.IntN(len(ev.Quotes)+1)]
	for i := range ev.Quotes {
		q := &ev.Quotes[i]
		q.Attest, q.Signature, q.Bank = blob(q.Attest), blob(q.Signature), uint16(rng.IntN(3))
		if rng.IntN(3) == 0 {
			q.PCRs = bigPCRMap(rng.IntN(30))
		}
	}
	if rng.IntN(2) == 0 {
		ev.Previous = nil
	}
	if rng.IntN(2) == 0 {
		ev.Time = time.Time{}
	}
	ev.ResidentKeys = ev.ResidentKeys[:rng.IntN(2)]
	n.SVIDs = n.SVIDs[:rng.IntN(2)]
	n.WorkloadEntries = n.WorkloadEntries[:rng.IntN(2)]
	n.EarlierIdentityLogs = n.EarlierIdentityLogs[:rng.IntN(2)]
	return n
}

// A string field that is not UTF-8 is refused, as proto refuses it, and
// the decision writing it fails alone.
func TestMarshalNodeRefusesInvalidUTF8(t *testing.T) {
	for _, tt := range []struct {
		name string
		set  func(n *NodeRecord)
		want string
	}{
		{"kubelet", func(n *NodeRecord) { n.Kubelet = "node\xff" }, "kubelet"},
		{"challenge id", func(n *NodeRecord) { n.Evidence.ChallengeID = "\xc3" }, "evidence.challenge_id"},
		{"selector", func(n *NodeRecord) { n.WorkloadEntries[0].Selectors[1].Value = "uid:\x80" }, "selectors.value"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n := fullNode()
			tt.set(&n)
			if _, err := marshalNodeProto(&n); err == nil {
				t.Fatal("proto encoded it")
			}
			_, err := encodeNode(n)
			if err == nil || !strings.Contains(err.Error(), tt.want+" holds invalid UTF-8") {
				t.Fatalf("encodeNode() error = %v, want one naming %s", err, tt.want)
			}
		})
	}
}

// Encoding a node record allocates once, its buffer: the PCR maps are not
// walked by reflection.
func TestMarshalNodeAllocations(t *testing.T) {
	n := fullNode()
	if a := testing.AllocsPerRun(100, func() { _, _ = marshalNode(&n) }); a > 1 {
		t.Errorf("marshalNode allocates %v times, want 1", a)
	}
}
