package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// AttestFunc attests the node once more (a fresh challenge and quote), as
// Attest does.
type AttestFunc func(ctx context.Context) (*Attestation, error)

// Run keeps the identities current until ctx is done, after a first
// Update:
//
//   - at half the node SVID's life it re-attests with attest; on success
//     the new node SVID and entries replace the old ones (Update) and every
//     workload X.509-SVID is issued again; on failure it logs, suspends
//     issuing (no new X.509- or JWT-SVID) and retries with backoff, and the
//     identities lapse when the node SVID expires plus the grace;
//   - at half each workload X.509-SVID's life it gets a new key and SVID
//     (and a missing one as soon as possible), retrying failures with
//     backoff.
func (m *SVIDManager) Run(ctx context.Context, attest AttestFunc) error {
	m.mu.Lock()
	ready := m.node != nil
	m.mu.Unlock()
	if !ready {
		return fmt.Errorf("no node SVID: call Update with a first attestation before Run")
	}
	nodeRetry := backoff{min: m.retryMin, max: m.retryMax}
	svidRetry := backoff{min: m.retryMin, max: m.retryMax}
	var nodeRetryAt, svidRetryAt time.Time
	for {
		nodeDue, rotating, svidDue, lapse := m.schedule()
		if !nodeRetryAt.IsZero() {
			nodeDue = nodeRetryAt
		}
		if rotating && svidDue.Before(svidRetryAt) {
			svidDue = svidRetryAt
		}
		next := nodeDue
		if rotating && svidDue.Before(next) {
			next = svidDue
		}
		if !lapse.IsZero() && lapse.Before(next) {
			next = lapse
		}
		if err := sleepUntil(ctx, next); err != nil {
			return nil
		}
		now := time.Now()

		if !lapse.IsZero() && !now.Before(lapse) {
			m.lapse()
		}

		if !now.Before(nodeDue) {
			att, err := attest(ctx)
			if ctx.Err() != nil {
				return nil
			}
			m.metrics.Renewal(err)
			if err != nil {
				d := nodeRetry.next()
				nodeRetryAt = time.Now().Add(d)
				m.suspend()
				m.log.Error("re-attestation failed: no new SVIDs until the node attests again", "error", err,
					"retry_in", d.String(), "identity_lapses", m.lapseTime().UTC().Format(time.RFC3339))
				continue
			}
			nodeRetry.reset()
			nodeRetryAt = time.Time{}
			m.log.Info("re-attested", "receipt", att.ReceiptID, "node_spiffe_id", att.NodeSVID.SVID.ID.String(),
				"expires", att.NodeSVID.SVID.Certificates[0].NotAfter.UTC().Format(time.RFC3339), "entries", len(att.Entries))
			if err := m.Update(ctx, att); err != nil {
				d := svidRetry.next()
				svidRetryAt = time.Now().Add(d)
				m.log.Error("unable to issue workload SVIDs", "error", err, "retry_in", d.String())
			} else {
				svidRetry.reset()
				svidRetryAt = time.Time{}
			}
			continue
		}

		if rotating && !now.Before(svidDue) {
			if err := m.rotate(ctx, m.dueIDs(now)); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				d := svidRetry.next()
				svidRetryAt = time.Now().Add(d)
				m.log.Error("unable to rotate workload SVIDs", "error", err, "retry_in", d.String())
			} else {
				svidRetry.reset()
				svidRetryAt = time.Time{}
			}
		}
	}
}

// schedule returns when the node SVID is due for renewal, whether a
// workload SVID is due for rotation and when the first is (a missing one
// is due at once; none while suspended or lapsed), and when the identities
// lapse (zero once they have).
func (m *SVIDManager) schedule() (node time.Time, svidDue bool, svid, lapse time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	node = m.renewBy
	if !m.lapsed {
		lapse = m.lapseLocked()
	}
	if m.suspended || m.lapsed {
		return node, false, time.Time{}, lapse
	}
	for _, id := range m.entryIDsLocked() {
		var t time.Time // missing: due at once
		if s, ok := m.svids[id]; ok {
			t = renewAt(s.at, s.svid.Certificates[0].NotAfter)
		}
		if !svidDue || t.Before(svid) {
			svid, svidDue = t, true
		}
	}
	return node, svidDue, svid, lapse
}

// dueIDs lists the entry IDs whose SVID is missing or past half its life.
func (m *SVIDManager) dueIDs(now time.Time) []spiffeid.ID {
	m.mu.Lock()
	defer m.mu.Unlock()
	var due []spiffeid.ID
	for _, id := range m.entryIDsLocked() {
		s, ok := m.svids[id]
		if !ok || !now.Before(renewAt(s.at, s.svid.Certificates[0].NotAfter)) {
			due = append(due, id)
		}
	}
	return due
}

// suspend stops issuing after a failed re-attestation.
func (m *SVIDManager) suspend() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.suspended = true
}

func (m *SVIDManager) lapseTime() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lapseLocked()
}

// lapse drops the workload keys and SVIDs once the node's identity ended,
// and wakes the Workload API streams, which then end with "identity
// expired".
func (m *SVIDManager) lapse() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lapsed {
		return
	}
	m.lapsed = true
	clear(m.svids)
	clear(m.jwts)
	m.publishLocked()
	m.log.Error("node identity lapsed: the Workload API serves no SVID until the node attests again",
		"node_spiffe_id", m.node.SVID.ID.String(), "expired", m.node.SVID.Certificates[0].NotAfter.UTC().Format(time.RFC3339))
}

// backoff doubles from min to max.
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) next() time.Duration {
	switch {
	case b.cur == 0:
		b.cur = b.min
	case b.cur < b.max:
		b.cur = min(2*b.cur, b.max)
	}
	return b.cur
}

func (b *backoff) reset() { b.cur = 0 }

// sleepUntil waits until t or ctx is done (then returns its error).
func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// errNothingToRenew: an attestation released nothing with a validity.
var errNothingToRenew = errors.New("the broker released nothing that needs renewing (a bootstrap token is used once: use keybroker-agent bootstrap for it)")

// KeepFiles keeps the file credentials of a node that has no node SVID
// current: it re-attests with attest (which writes the files) at half the
// life of what the last attestation released (first, to begin with),
// until ctx ends. A failed re-attestation is retried after retryMin,
// doubling up to retryMax; the files stay as they are meanwhile, until
// they expire.
func KeepFiles(ctx context.Context, first *Attestation, attest AttestFunc, log *slog.Logger, retryMin, retryMax time.Duration) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	att, at := first, time.Now()
	next := att.renewBy(at)
	if next.IsZero() {
		return errNothingToRenew
	}
	retry := backoff{min: retryMin, max: retryMax}
	if !next.After(at) {
		next = at.Add(retry.next()) // expired already (clock skew): not at once
	}
	for {
		if err := sleepUntil(ctx, next); err != nil {
			return nil
		}
		a, err := attest(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			d := retry.next()
			next = time.Now().Add(d)
			log.Error("re-attestation failed: the files stay as they are until they expire", "error", err,
				"retry_in", d.String(), "expires", att.Result.NotAfter.UTC().Format(time.RFC3339))
			continue
		}
		retry.reset()
		att, at = a, time.Now()
		if next = att.renewBy(at); next.IsZero() {
			return errNothingToRenew
		}
		if !next.After(at) {
			next = at.Add(retry.next())
		}
		log.Info("re-attested", "receipt", a.ReceiptID, "files", len(a.Files), "valid_until", a.Result.NotAfter.UTC().Format(time.RFC3339),
			"next", next.UTC().Format(time.RFC3339))
	}
}
