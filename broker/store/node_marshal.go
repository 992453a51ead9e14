package store

import (
	"fmt"
	"slices"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// marshalNode encodes n as stored: nodeRecordV1, then exactly the bytes
// that proto's deterministic marshal writes for the storev1.NodeRecord of n
// (fields in number order, zero scalars left out, map entries by key,
// strings refused unless UTF-8), written directly with protowire in one
// buffer sized beforehand. proto's own marshal walks the quotes' PCR maps
// by reflection, allocating for every PCR twice (size, then marshal): most
// of the allocations of a decision. TestMarshalNodeIsProto
// (node_marshal_test.go) checks both encodings agree.
func marshalNode(n *NodeRecord) ([]byte, error) {
	w := protoWriter{b: make([]byte, 1, nodeSizeHint(n))}
	w.b[0] = nodeRecordV1
	w.string(1, "ek_hash", n.EKHash)
	w.int64(2, unixNano(n.FirstSeen))
	w.int64(3, unixNano(n.LastSeen))
	w.bytes(4, n.AKName)
	w.uint64(5, n.Clock)
	w.uint64(6, uint64(n.ResetCount))
	w.uint64(7, uint64(n.RestartCount))
	w.string(8, "last_receipt_id", n.LastReceiptID)
	at := w.begin(9)
	w.evidence(n)
	w.end(at)
	for _, s := range n.SVIDs {
		at := w.begin(10)
		w.string(1, "svids.serial", s.Serial)
		w.string(2, "svids.spiffe_id", idString(s.ID))
		w.int64(3, unixNano(s.NotAfter))
		w.end(at)
	}
	for _, e := range n.WorkloadEntries {
		at := w.begin(11)
		w.string(1, "workload_entries.name", e.Name)
		w.string(2, "workload_entries.spiffe_id", idString(e.ID))
		for _, sel := range e.Selectors {
			at := w.begin(3)
			w.string(1, "selectors.type", sel.Type)
			w.string(2, "selectors.value", sel.Value)
			w.end(at)
		}
		w.int64(4, int64(e.TTL))
		w.end(at)
	}
	w.string(12, "kubelet", n.Kubelet)
	if n.Quarantined {
		w.uint64(13, 1)
	}
	w.string(14, "bootstrap_token", n.BootstrapToken)
	w.uint64(15, n.PolicyCounterBound)
	w.uint64(16, n.PolicyEpoch)
	for _, l := range n.EarlierIdentityLogs {
		at := w.begin(17)
		w.string(1, "earlier_identity_logs.receipt_id", l.ReceiptID)
		w.bytes(2, l.Log)
		w.uint64(3, l.Dropped)
		w.bytes(4, l.DroppedSHA256)
		w.end(at)
	}
	w.bytes(19, n.PolicyCounterName)
	if w.err != nil {
		return nil, w.err
	}
	return w.b, nil
}

// evidence writes the fields of storev1.Evidence for n's evidence.
func (w *protoWriter) evidence(n *NodeRecord) {
	ev := &n.Evidence
	w.int64(1, unixNano(ev.Time))
	w.string(2, "evidence.challenge_id", ev.ChallengeID)
	w.bytes(3, ev.EKPublic)
	w.bytes(4, ev.EKCertificate)
	for _, c := range ev.EKIntermediates {
		w.element(5, c)
	}
	w.bytes(6, ev.AKPublic)
	w.bytes(7, ev.SecretHash[:])
	for _, q := range ev.Quotes {
		at := w.begin(8)
		w.bytes(1, q.Attest)
		w.bytes(2, q.Signature)
		w.uint64(3, uint64(q.Bank))
		var buf [32]uint32 // the PCR indices, sorted: 24 in a PC Client TPM
		pcrs := mapKeys(q.PCRs, buf[:0])
		slices.Sort(pcrs)
		for _, i := range pcrs {
			at := w.begin(4)
			w.b = protowire.AppendTag(w.b, 1, protowire.VarintType)
			w.b = protowire.AppendVarint(w.b, uint64(i))
			w.element(2, q.PCRs[i])
			w.end(at)
		}
		w.end(at)
	}
	w.bytes(9, ev.EventLog)
	w.string(10, "evidence.event_log_sha256", ev.EventLogSHA256)
	if p := ev.Previous; p != nil {
		at := w.begin(11)
		w.bytes(1, p.AKName)
		w.uint64(2, p.Clock)
		w.uint64(3, uint64(p.ResetCount))
		w.uint64(4, uint64(p.RestartCount))
		w.end(at)
	}
	for _, k := range ev.ResidentKeys {
		at := w.begin(12)
		w.string(1, "resident_keys.name", k.Name)
		w.bytes(2, k.Public)
		w.bytes(3, k.CertifyInfo)
		w.bytes(4, k.Signature)
		w.end(at)
	}
	w.bytes(13, ev.IdentityLog)
}

// mapKeys appends the keys of m to keys.
func mapKeys(m map[uint32][]byte, keys []uint32) []uint32 {
	for k := range m {
		keys = append(keys, k)
	}
	return keys
}

// nodeSizeHint is at least the encoded size of n in all but odd records:
// its bytes and strings, and room for every tag and length.
func nodeSizeHint(n *NodeRecord) int {
	ev := &n.Evidence
	size := 256 + len(n.EKHash) + len(n.AKName) + len(n.LastReceiptID) + len(n.Kubelet) + len(n.BootstrapToken) +
		len(n.PolicyCounterName) + len(ev.ChallengeID) + len(ev.EKPublic) + len(ev.EKCertificate) + len(ev.AKPublic) +
		len(ev.SecretHash) + len(ev.EventLog) + len(ev.EventLogSHA256) + len(ev.IdentityLog)
	for _, c := range ev.EKIntermediates {
		size += len(c) + 4
	}
	for _, q := range ev.Quotes {
		size += len(q.Attest) + len(q.Signature) + 16
		for _, v := range q.PCRs {
			size += len(v) + 12
		}
	}
	for _, k := range ev.ResidentKeys {
		size += len(k.Name) + len(k.Public) + len(k.CertifyInfo) + len(k.Signature) + 16
	}
	size += 96 * len(n.SVIDs)
	for _, e := range n.WorkloadEntries {
		size += len(e.Name) + 96
		for _, s := range e.Selectors {
			size += len(s.Type) + len(s.Value) + 8
		}
	}
	for _, l := range n.EarlierIdentityLogs {
		size += len(l.ReceiptID) + len(l.Log) + len(l.DroppedSHA256) + 24
	}
	return size
}

// protoWriter appends protobuf fields to b as proto3 encodes them: scalars
// and bytes only when not zero, strings only when UTF-8.
type protoWriter struct {
	b   []byte
	err error // the first string field that is not UTF-8
}

func (w *protoWriter) uint64(num protowire.Number, v uint64) {
	if v != 0 {
		w.b = protowire.AppendTag(w.b, num, protowire.VarintType)
		w.b = protowire.AppendVarint(w.b, v)
	}
}

func (w *protoWriter) int64(num protowire.Number, v int64) { w.uint64(num, uint64(v)) }

func (w *protoWriter) bytes(num protowire.Number, v []byte) {
	if len(v) > 0 {
		w.element(num, v)
	}
}

// element writes v even when empty: an element of a repeated field or a
// map entry's value.
func (w *protoWriter) element(num protowire.Number, v []byte) {
	w.b = protowire.AppendTag(w.b, num, protowire.BytesType)
	w.b = protowire.AppendBytes(w.b, v)
}

func (w *protoWriter) string(num protowire.Number, name, v string) {
	if v == "" {
		return
	}
	if !utf8.ValidString(v) && w.err == nil {
		w.err = fmt.Errorf("string field %s holds invalid UTF-8", name)
	}
	w.b = protowire.AppendTag(w.b, num, protowire.BytesType)
	w.b = protowire.AppendString(w.b, v)
}

// begin starts a message field: its tag and one byte for its length, which
// end writes once the message is.
func (w *protoWriter) begin(num protowire.Number) int {
	w.b = protowire.AppendTag(w.b, num, protowire.BytesType)
	w.b = append(w.b, 0)
	return len(w.b) - 1
}

// end writes the length of the message begun at at, moving the message
// when its length takes more than one byte.
func (w *protoWriter) end(at int) {
	n := len(w.b) - at - 1
	size := protowire.SizeVarint(uint64(n))
	if size > 1 {
		w.b = append(w.b, make([]byte, size-1)...)
		copy(w.b[at+size:], w.b[at+1:at+1+n])
	}
	protowire.AppendVarint(w.b[:at], uint64(n))
}
