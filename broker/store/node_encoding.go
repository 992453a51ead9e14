package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/broker/attestation"
	storev1 "github.com/keybroker/keybroker/proto/keybroker/store/v1"
)

// A node record is stored as nodeRecordV1 followed by the protobuf
// storev1.NodeRecord: its TPM artifacts and PCR values as bytes rather
// than base64 text (a third smaller than its JSON, or more), and no
// reflection to encode (marshalNode, node_marshal.go, writes what proto's
// deterministic marshal would). Records stored as JSON (a value starting
// with '{') still read, and are written in the new form when the node next
// attests.
const nodeRecordV1 = 0x01

// unmarshalNode decodes a stored node record, in either form.
func unmarshalNode(v []byte) (NodeRecord, error) {
	return unmarshalNodeFields(v, true)
}

// unmarshalNodeHead decodes a stored node record without its evidence
// (Evidence is zero but for its IdentityLog, which a decision compares with
// the new one): what a decision needs of the previous record, at a
// fraction of the cost — the evidence is most of a record.
func unmarshalNodeHead(v []byte) (NodeRecord, error) {
	return unmarshalNodeFields(v, false)
}

// nodeEvidenceField is storev1.NodeRecord's evidence field number,
// evidenceIdentityLogField storev1.Evidence's identity_log.
const (
	nodeEvidenceField        = 9
	evidenceIdentityLogField = 13
)

func unmarshalNodeFields(v []byte, withEvidence bool) (NodeRecord, error) {
	switch {
	case len(v) > 0 && v[0] == '{':
		var n NodeRecord
		err := json.Unmarshal(v, &n)
		if !withEvidence {
			n.Evidence = attestation.Evidence{IdentityLog: n.Evidence.IdentityLog}
		}
		return n, err
	case len(v) == 0 || v[0] != nodeRecordV1:
		return NodeRecord{}, errors.New("unknown encoding")
	}
	body := v[1:]
	var identityLog []byte
	if !withEvidence {
		ev, err := fieldBytes(body, nodeEvidenceField)
		if err == nil {
			identityLog, err = fieldBytes(ev, evidenceIdentityLogField)
		}
		if err != nil {
			return NodeRecord{}, err
		}
		if body, err = withoutField(body, nodeEvidenceField); err != nil {
			return NodeRecord{}, err
		}
	}
	var pb storev1.NodeRecord
	if err := proto.Unmarshal(body, &pb); err != nil {
		return NodeRecord{}, err
	}
	n := NodeRecord{
		EKHash:             pb.GetEkHash(),
		FirstSeen:          fromUnixNano(pb.GetFirstSeen()),
		LastSeen:           fromUnixNano(pb.GetLastSeen()),
		AKName:             pb.GetAkName(),
		Clock:              pb.GetClock(),
		ResetCount:         pb.GetResetCount(),
		RestartCount:       pb.GetRestartCount(),
		LastReceiptID:      pb.GetLastReceiptId(),
		Kubelet:            pb.GetKubelet(),
		Quarantined:        pb.GetQuarantined(),
		BootstrapToken:     pb.GetBootstrapToken(),
		PolicyCounterBound: pb.GetPolicyCounterBound(),
		PolicyEpoch:        pb.GetPolicyEpoch(),
		PolicyCounterName:  pb.GetPolicyCounterName(),
	}
	if withEvidence {
		if err := evidenceFromProto(&n, pb.GetEvidence()); err != nil {
			return NodeRecord{}, err
		}
	} else {
		n.Evidence.IdentityLog = identityLog
	}
	for _, l := range pb.GetEarlierIdentityLogs() {
		n.EarlierIdentityLogs = append(n.EarlierIdentityLogs, IdentityLog{ReceiptID: l.GetReceiptId(), Log: l.GetLog(),
			Dropped: l.GetDropped(), DroppedSHA256: l.GetDroppedSha256()})
	}
	for _, s := range pb.GetSvids() {
		id, err := parseID(s.GetSpiffeId())
		if err != nil {
			return NodeRecord{}, err
		}
		n.SVIDs = append(n.SVIDs, NodeSVID{Serial: s.GetSerial(), ID: id, NotAfter: fromUnixNano(s.GetNotAfter())})
	}
	for _, w := range pb.GetWorkloadEntries() {
		id, err := parseID(w.GetSpiffeId())
		if err != nil {
			return NodeRecord{}, err
		}
		e := WorkloadEntry{Name: w.GetName(), ID: id, TTL: time.Duration(w.GetTtlNanos())}
		for _, sel := range w.GetSelectors() {
			e.Selectors = append(e.Selectors, Selector{Type: sel.GetType(), Value: sel.GetValue()})
		}
		n.WorkloadEntries = append(n.WorkloadEntries, e)
	}
	return n, nil
}

// unixNano is t in Unix nanoseconds, 0 for the zero time.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// fromUnixNano is unixNano's inverse, in UTC.
func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func idString(id spiffeid.ID) string {
	if id.IsZero() {
		return ""
	}
	return id.String()
}

func parseID(s string) (spiffeid.ID, error) {
	if s == "" {
		return spiffeid.ID{}, nil
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("spiffe id %q: %w", s, err)
	}
	return id, nil
}

// evidenceFromProto sets n.Evidence from its stored form.
func evidenceFromProto(n *NodeRecord, pe *storev1.Evidence) error {
	if len(pe.GetSecretHash()) != len(n.Evidence.SecretHash) {
		return fmt.Errorf("evidence secret hash has %d bytes, want %d", len(pe.GetSecretHash()), len(n.Evidence.SecretHash))
	}
	n.Evidence = attestation.Evidence{
		Time:            fromUnixNano(pe.GetTime()),
		ChallengeID:     pe.GetChallengeId(),
		EKPublic:        pe.GetEkPublic(),
		EKCertificate:   pe.GetEkCertificate(),
		EKIntermediates: pe.GetEkIntermediates(),
		AKPublic:        pe.GetAkPublic(),
		EventLog:        pe.GetEventLog(),
		EventLogSHA256:  pe.GetEventLogSha256(),
		IdentityLog:     pe.GetIdentityLog(),
	}
	copy(n.Evidence.SecretHash[:], pe.GetSecretHash())
	for _, q := range pe.GetQuotes() {
		if q.GetBank() > 0xffff {
			return fmt.Errorf("quote bank 0x%x is not a TPM_ALG_ID", q.GetBank())
		}
		n.Evidence.Quotes = append(n.Evidence.Quotes, attestation.Quote{Attest: q.GetAttest(), Signature: q.GetSignature(), Bank: uint16(q.GetBank()), PCRs: q.GetPcrs()})
	}
	for _, k := range pe.GetResidentKeys() {
		n.Evidence.ResidentKeys = append(n.Evidence.ResidentKeys, attestation.ResidentKey{Name: k.GetName(), Public: k.GetPublic(), CertifyInfo: k.GetCertifyInfo(), Signature: k.GetSignature()})
	}
	if p := pe.GetPrevious(); p != nil {
		n.Evidence.Previous = &attestation.Counters{AKName: p.GetAkName(), Clock: p.GetClock(), ResetCount: p.GetResetCount(), RestartCount: p.GetRestartCount()}
	}
	return nil
}

// eachField calls fn with each top-level field of the protobuf message b:
// its number and type, where it starts and ends in b, and the length of its
// tag.
func eachField(b []byte, fn func(num protowire.Number, typ protowire.Type, start, end, tagLen int)) error {
	for i := 0; i < len(b); {
		n, typ, tagLen := protowire.ConsumeTag(b[i:])
		if tagLen < 0 {
			return protowire.ParseError(tagLen)
		}
		valLen := protowire.ConsumeFieldValue(n, typ, b[i+tagLen:])
		if valLen < 0 {
			return protowire.ParseError(valLen)
		}
		fn(n, typ, i, i+tagLen+valLen, tagLen)
		i += tagLen + valLen
	}
	return nil
}

// fieldBytes returns the value of the last top-level length-delimited field
// numbered num of the protobuf message b (as proto does for a scalar
// field), nil when it has none.
func fieldBytes(b []byte, num protowire.Number) ([]byte, error) {
	var out []byte
	err := eachField(b, func(n protowire.Number, typ protowire.Type, start, _, tagLen int) {
		if n == num && typ == protowire.BytesType {
			out, _ = protowire.ConsumeBytes(b[start+tagLen:])
		}
	})
	return out, err
}

// withoutField returns the protobuf message b without its top-level fields
// numbered num, or b itself when it has none.
func withoutField(b []byte, num protowire.Number) ([]byte, error) {
	var out []byte
	err := eachField(b, func(n protowire.Number, _ protowire.Type, start, end, _ int) {
		switch {
		case n == num && out == nil:
			out = append(make([]byte, 0, len(b)), b[:start]...)
		case n != num && out != nil:
			out = append(out, b[start:end]...)
		}
	})
	if err != nil {
		return nil, err
	}
	if out == nil {
		return b, nil
	}
	return out, nil
}
