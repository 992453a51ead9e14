// Package vaultauth is keybroker's Vault auth method: it issues Vault tokens
// to machines that prove with their TPM 2.0 what they booted. It is a thin
// adapter: every step is keybroker's own code, the same the broker runs.
//
//	challenge  verify.Node (EK trust, AK attributes), per-EK rate limit,
//	           challenge.Issuer.Issue (MakeCredential; the secret's hash is
//	           stored in Vault storage through vaultStore, a store.Store)
//	login      challenge.Issuer.Lookup, broker.Reverify (verify.Node,
//	           verify.Quotes, WithEventLog, WithHistory against the node's
//	           last counters), policies.Set.Evaluate with the role's policy
//	           document, challenge.Issuer.Consume (once, whatever the
//	           outcome), then a logical.Auth with the role's token settings
//
// Paths: config (EK trust, challenges), role/<name> (a policy document and
// tokenutil's token fields), challenge and login (both unauthenticated).
//
// # Tokens cannot be sealed to the TPM
//
// The broker releases secrets that only the node's TPM can open. A Vault
// auth method cannot do that with its token: Vault core creates the token
// after the backend returns its logical.Auth (Auth.ClientToken is "filled
// in by Vault core"; setting it has no effect), and returns it to the HTTP
// caller as auth.client_token, or, when the response is wrapped, returns a
// wrapping token that unwraps to it. The backend never sees the token, so
// it cannot encrypt it. A role's response_wrap_ttl makes Vault wrap every
// login response (logical.Response.WrapInfo): the login answer then carries
// a single-use wrapping token, not the client token, whose creation_path a
// node can check before unwrapping. wrap_token_to_tpm is refused rather than
// silently ignored. The login caller has already proven that it holds the
// TPM (it activated the credential and signed the quote with the AK), so
// the token goes to that TPM's holder over Vault's TLS; a node that must
// keep the token at rest can seal it to its own EK with sealing.Wrap.
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
