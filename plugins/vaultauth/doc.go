// Package vaultauth is keybroker's Vault auth method: it issues Vault tokens
// to machines that prove with their TPM 2.0 what they booted. It is a thin
// adapter: every step is keybroker's own code, the same the broker runs.
//
//	challenge  verify.Node (EK trust, AK attributes), per-EK rate limit,
//	           challenge.Issuer.Issue (MakeCredential; the challenge ID is a
//	           token sealed under a challenge key that vaultStore, a
//	           store.ChallengeKeys, keeps in Vault storage; nothing else is
//	           written)
//	login      challenge.Issuer.Open with the ek_public, ek_certificate,
//	           ek_intermediates and ak_public the node sends again,
//	           evidence.Verify (verify.Node, verify.Quotes, WithEventLog),
//	           evidence.WithHistory against the node's last counters,
//	           policies.Set.Evaluate with the role's policy document,
//	           store.Decisions.Record (the challenge's marker and the node's
//	           counters; once, whatever the outcome), then a logical.Auth
//	           with the role's token settings
//	           (or, with token_envelope, a ticket login through Vault's
//	           API and the token sealed by sealing.SealCredential)
//
// Paths: config (EK trust, challenges), role/<name> (a policy document and
// tokenutil's token fields), challenge and login (both unauthenticated).
//
// # Tokens sealed to the TPM
//
// Vault core creates a token after the backend returns its logical.Auth
// (Auth.ClientToken is filled in by core) and returns it to the HTTP caller
// in the clear; the backend never sees it. A role with token_envelope
// therefore does not answer the node's login with an Auth: it stores a
// single-use ticket naming the node and the role, logs in with that ticket
// at its own mount over Vault's API (config vault_addr), so that core
// creates the token as for any login of this mount, and answers the node
// with Vault's auth object sealed to the EK by sealing.SealCredential, the
// envelope of the broker's releases (path_login_sealed.go). The node opens
// it in its TPM; a copied answer is useless elsewhere, and a pcr_sealed one
// also after the PCRs changed. A role's response_wrap_ttl is the
// Vault-native alternative: a single-use wrapping token (interception shows
// but is not prevented).
//
// # Clusters
//
// The challenge keys (seal-wrapped), the markers of used challenges and the
// TPM counters of each node's last login are in storage local to each
// cluster (Paths.LocalStorage): a node answers a challenge to the cluster
// that issued it, and a challenge survives a restart or a leader change.
// challenge and login are forwarded from performance standbys to the active
// node (ForwardPerformanceStandby), where a challenge is used up by a
// check-and-put of its marker under a per-key lock (Vault storage has no
// transactions) and the rate limit is counted in memory. Replication to
// standbys is eventual; only the active node decides. The auth method
// keeps what the broker keeps (storage.go): a receipt per decision, written
// before the login answers and chained by hash (chain.go) with checkpoints
// signed by a key of its own (checkpoints.go), each node's record with its
// evidence, and the deny list.
package vaultauth
