// Package store holds the broker's state: single-use challenges, the
// receipts that record every attestation decision, node records (each
// node's last TPM counters and last verified evidence, and the node
// X.509-SVIDs and workload entries its last attestation gave it, indexed by
// SVID serial), and the deny list (nodes whose last decision was a refusal
// the broker holds against them; it follows the receipts, see
// Receipt.DenyListed).
//
// Store is the interface the broker and its tests program against; Bolt is
// the embedded default, a single bbolt file owned by one broker process.
// Business rules (what is trusted, what is released) live elsewhere: the store
// only guarantees that a challenge is consumed at most once and that a receipt
// (and the node record written with it) is on disk before PutReceipt or
// ConsumeChallenge returns.
//
//	st, err := store.OpenBolt("/var/lib/keybroker/state.db", store.BoltOpts{})
//	if err != nil {
//		return err
//	}
//	defer st.Close()
//	if err := st.PutChallenge(ctx, c); err != nil {
//		return err
//	}
//	...
//	c, err := st.GetChallenge(ctx, id, time.Now())
//	switch {
//	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrExpired):
//		// unknown, already used or too late: refuse
//	case err != nil:
//		// internal fault
//	}
//	... // verify the answer against c, decide, fill in the receipt r
//	err = st.ConsumeChallenge(ctx, id, r, node) // one commit: challenge gone, r and node on disk
//	switch {
//	case errors.Is(err, store.ErrNotFound):
//		// a concurrent answer consumed it first: release nothing
//	case err != nil:
//		// internal fault: release nothing
//	}
package store
