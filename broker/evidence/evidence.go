// Package evidence verifies what a node presented — its challenge request
// and its answer, as attestation.Evidence — with verify's steps in the order the
// broker's Attest runs them. The broker, its policy dry runs and the Vault
// auth method all verify through it.
package evidence

import (
	"bytes"
	"crypto/sha256"
	"slices"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/attestation"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/idlog"
)

// Reverify verifies stored evidence again, with the same code as the
// broker's Attest:
// the EK and AK (verify.Node, against opts as they are now), the quotes
// against the challenge's secret hash (verify.Quotes), the event log
// (WithEventLog), the identity log (WithIdentityLog) and the TPM counters against those the attestation was
// compared with (WithHistory), so a policy can be tried on a node's last
// attestation without trusting anything stored. It does not check that the
// challenge was fresh or unused: that was decided when the evidence was
// presented.
func Reverify(ev attestation.Evidence, opts verify.Opts) (*verify.Verified, error) {
	_, v, err := Verify(ev, opts)
	if err != nil {
		return nil, err
	}
	v, _, err = WithHistory(v, ev.Previous)
	return v, err
}

// Verify verifies the node (verify.Node), its quotes against the
// challenge's secret hash (verify.Quotes), its event log (WithEventLog),
// its record of issued identities (WithIdentityLog) and the resident keys it offered (WithResidentKeys). node is returned once the node verified, also when a later step failed.
func Verify(ev attestation.Evidence, opts verify.Opts) (node *verify.NodeIdentity, v *verify.Verified, err error) {
	return verifyEvidence(ev, opts, nil)
}

// VerifyVouched is Verify for evidence whose EK and AK material the
// caller verified under opts when it issued the challenge, concluding
// vouch (challenge.Challenge.Vouch): the node is checked with
// verify.NodeVouched, which does not verify the EK certificate's chain
// again.
func VerifyVouched(ev attestation.Evidence, opts verify.Opts, vouch verify.Vouch) (node *verify.NodeIdentity, v *verify.Verified, err error) {
	return verifyEvidence(ev, opts, &vouch)
}

func verifyEvidence(ev attestation.Evidence, opts verify.Opts, vouch *verify.Vouch) (node *verify.NodeIdentity, v *verify.Verified, err error) {
	if vouch != nil {
		node, err = verify.NodeVouched(ev.EKPublic, ev.EKCertificate, ev.EKIntermediates, ev.AKPublic, opts, *vouch)
	} else {
		node, err = verify.Node(ev.EKPublic, ev.EKCertificate, ev.EKIntermediates, ev.AKPublic, opts)
	}
	if err != nil {
		return nil, nil, err
	}
	quotes := make([]verify.Quote, 0, len(ev.Quotes))
	for _, q := range ev.Quotes {
		quotes = append(quotes, verify.Quote{Attest: q.Attest, Signature: q.Signature, Bank: tpm2.TPMAlgID(q.Bank), PCRs: q.PCRs})
	}
	if v, err = verify.Quotes(node, ev.SecretHash, quotes, opts); err != nil {
		return node, nil, err
	}
	if v, err = v.WithEventLog(ev.EventLog); err != nil {
		return node, nil, err
	}
	if v, err = v.WithIdentityLog(ev.IdentityLog, opts); err != nil {
		return node, nil, err
	}
	keys := make([]verify.ResidentKeyEvidence, 0, len(ev.ResidentKeys))
	for _, k := range ev.ResidentKeys {
		keys = append(keys, verify.ResidentKeyEvidence{Name: k.Name, Public: k.Public, CertifyInfo: k.CertifyInfo, Signature: k.Signature})
	}
	if v, err = v.WithResidentKeys(keys, opts); err != nil {
		return node, nil, err
	}
	return node, v, nil
}

// WithHistory compares v's TPM counters with prev, the node's last verified
// attestation (nil if none), by verify's AK rule (Verified.WithPrevious):
// counters reported with another AK cannot be compared, and the
// attestation then counts as the first one (akChanged tells the caller).
func WithHistory(v *verify.Verified, prev *attestation.Counters) (out *verify.Verified, akChanged bool, err error) {
	var p *verify.Previous
	if prev != nil {
		p = &verify.Previous{AKName: prev.AKName, Clock: verify.ClockInfo{Clock: prev.Clock, ResetCount: prev.ResetCount, RestartCount: prev.RestartCount}}
	}
	if out, err = v.WithPrevious(p); err != nil {
		return nil, false, err
	}
	return out, out.History().AKChanged, nil
}

// NodeRecord is the record of a node whose attestation, evidence, was just
// verified as v; prev is its previous record, if any.
func NodeRecord(v *verify.Verified, prev *store.NodeRecord, ev attestation.Evidence) *store.NodeRecord {
	c := v.Clock()
	n := &store.NodeRecord{
		EKHash:       v.EKHash(),
		LastSeen:     ev.Time,
		AKName:       v.AKName(),
		Clock:        c.Clock,
		ResetCount:   c.ResetCount,
		RestartCount: c.RestartCount,
		Evidence:     ev,
	}
	n.FirstSeen = ev.Time
	if prev != nil && !prev.FirstSeen.IsZero() {
		n.FirstSeen = prev.FirstSeen
	}
	if prev != nil {
		// The quarantine state outlives the decision unless the decision
		// changes it (the broker's quarantine step).
		n.Kubelet, n.Quarantined, n.BootstrapToken = prev.Kubelet, prev.Quarantined, prev.BootstrapToken
		// So are the version its PCR-policy approvals are signed at and
		// its pinned counter, which only the policy-counter step changes.
		n.PolicyCounterBound, n.PolicyEpoch, n.PolicyCounterName = prev.PolicyCounterBound, prev.PolicyEpoch, prev.PolicyCounterName
		n.EarlierIdentityLogs = earlierIdentityLogs(prev, v, ev.IdentityLog)
	}
	return n
}

// earlierIdentityLogs returns the identity logs of the node's earlier
// boots, given its previous record and the verified record v of the
// attestation that carries current. The log just verified continues the
// previous one only when the TPM did not reset in between (same AK, same
// reset count) and the whole previous log is a byte prefix of it; otherwise
// the previous one, bound to its receipt, becomes the newest earlier log —
// a node cannot drop its last verified log by resending its boot record
// after a reboot. Whole logs are kept, newest first, while they hold at most
// idlog.MaxSize bytes in all; older ones are not silently lost: their
// number and a digest chain over them stay on the oldest entry kept
// (store.IdentityLog.DroppedSHA256).
func earlierIdentityLogs(prev *store.NodeRecord, v *verify.Verified, current []byte) []store.IdentityLog {
	earlier := slices.Clone(prev.EarlierIdentityLogs)
	if last := prev.Evidence.IdentityLog; len(last) > 0 && !continues(prev, v, last, current) {
		earlier = append([]store.IdentityLog{{ReceiptID: prev.LastReceiptID, Log: last}}, earlier...)
	}
	return capIdentityLogs(earlier)
}

// continues reports whether current continues last, the identity log of
// the node's previous record prev, within the same boot.
func continues(prev *store.NodeRecord, v *verify.Verified, last, current []byte) bool {
	sameBoot := bytes.Equal(prev.AKName, v.AKName()) && prev.ResetCount == v.Clock().ResetCount
	return sameBoot && bytes.HasPrefix(current, last)
}

// capIdentityLogs keeps the newest whole logs that fit idlog.MaxSize and
// folds the others into the dropped count and digest chain of the oldest
// entry kept.
func capIdentityLogs(logs []store.IdentityLog) []store.IdentityLog {
	if len(logs) == 0 {
		return nil
	}
	keep, size := 0, 0
	for keep < len(logs) && size+len(logs[keep].Log) <= idlog.MaxSize {
		size += len(logs[keep].Log)
		keep++
	}
	if keep == len(logs) {
		return logs
	}
	if keep == 0 {
		keep = 1 // the newest is at most idlog.MaxSize: it always fits
	}
	// Fold from the oldest: the oldest entry's own chain first, then each
	// log that drops, oldest first.
	oldest := logs[len(logs)-1]
	dropped, chain := oldest.Dropped, oldest.DroppedSHA256
	if len(chain) == 0 {
		chain = make([]byte, sha256.Size)
	}
	for i := len(logs) - 1; i >= keep; i-- {
		if i != len(logs)-1 {
			dropped += logs[i].Dropped // set on the oldest only
		}
		sum := sha256.Sum256(logs[i].Log)
		next := sha256.Sum256(append(slices.Clone(chain), sum[:]...))
		chain = next[:]
		dropped++
	}
	out := slices.Clone(logs[:keep])
	out[keep-1].Dropped, out[keep-1].DroppedSHA256 = dropped, chain
	return out
}
