// Package store holds the broker's state: the markers of used challenges,
// the receipts that record every attestation decision, node records (each
// node's last TPM counters and last verified evidence, and the node
// X.509-SVIDs and workload entries its last attestation gave it, indexed by
// SVID serial), the deny list (nodes whose last decision was a refusal the
// broker holds against them; see Receipt.DenyListed) and the challenge keys
// that seal challenge tokens.
//
// The state is behind small interfaces, each in a file named after it:
// Decisions (record a decision: marker, receipt, node record and deny-list
// change in one transaction), Receipts, Checkpoints (the receipt chain's
// head and its signed checkpoints), Nodes and ChallengeKeys; Backend is all
// of them, as an opener returns it. Every receipt is chained (chain.go):
// the transaction that writes it gives it the store's next sequence number
// and the hash of the receipt before (docs/receipts.md). Bolt is the embedded default, one
// bbolt file owned by one broker process; Etcd is shared by broker replicas
// through an etcd cluster. Both pass the same contract tests
// (broker/store/storetest). Business rules (what is trusted, what is
// released, who is deny-listed) live in the caller: the store only
// guarantees that a challenge is used at most once and that a decision is
// durable before Record returns.
//
//	st, err := store.OpenBolt("/var/lib/keybroker/store.db", store.BoltOpts{})
//	// or: st, err := store.OpenEtcd(ctx, store.EtcdOpts{Endpoints: eps, ...})
//	if err != nil {
//		return err
//	}
//	defer st.Close()
//	... // open the challenge token, verify the answer, decide, fill in r
//	err = st.Record(ctx, &store.Decision{
//		ChallengeID: id, ChallengeExpiry: exp, Receipt: r, Node: node, Deny: deny,
//	})
//	switch {
//	case errors.Is(err, store.ErrConsumed):
//		// a concurrent answer used the challenge first: release nothing
//	case err != nil:
//		// the store failed or is unreachable: release nothing
//	}
//
// In etcd every key is under EtcdOpts.Prefix: consumed/<challenge id>
// (leased to the challenge's expiry), receipts/<id>,
// receipts_by_ek/<path-escaped ek hash>/<id>, receipts_by_seq/<seq>,
// chain_head, checkpoints/<seq> (seq as 20 decimal digits),
// nodes/<ek hash>, node_svids/<serial>, denied/<ek hash>,
// event_logs/<sha-256> and challenge_keys/<id>. Values stay small: an event log is stored once, by
// content hash, apart from the node records that name it. etcd refuses
// requests above its --max-request-bytes (1.5 MiB by default); a node
// record without its log is far below that.
package store
