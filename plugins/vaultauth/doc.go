// Package vaultauth is keybroker's Vault auth method: it issues Vault tokens
// to machines that prove with their TPM 2.0 what they booted. It is a thin
// adapter: every step is keybroker's own code, the same the broker runs.
//
//	challenge  verify.Node (EK trust, AK attributes), per-EK rate limit,
//	           challenge.Issuer.Issue (MakeCredential; the secret's hash is
//	           stored in Vault storage through vaultStore, a store.Store)
//	login      challenge.Issuer.Lookup, evidence.Verify (verify.Node,
//	           verify.Quotes, WithEventLog), evidence.WithHistory against the
//	           node's last counters, policies.Set.Evaluate with the role's policy
//	           document, challenge.Issuer.Consume (once, whatever the
//	           outcome), then a logical.Auth with the role's token settings
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
// Challenges and the TPM counters of each node's last login are in storage
// local to each cluster (Paths.LocalStorage): a node answers a challenge to
// the cluster that issued it. challenge and login are forwarded from
// performance standbys to the active node (ForwardPerformanceStandby), where
// a challenge is consumed by a check-and-delete under a per-key lock (Vault
// storage has no transactions) and the rate limit is counted in memory.
// Replication to standbys is eventual; only the active node decides.
package vaultauth
