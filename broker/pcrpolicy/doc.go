// Package pcrpolicy is the broker's side of pcr_policy = "authorized"
// releases: its PCR-policy signing keys, which PCR states a node's
// approvals cover, and the version they are signed at.
//
// A release sealed with pcr_policy "authorized" is an import blob whose
// object opens only under TPM2_PolicyAuthorize by the broker's signing key
// (sealing.Authorization). The broker approves states by signing
// PolicyPCR(state) ∧ PolicyNV(counter ≤ version) (sealing.SignApproval):
// the state the node attested, the release's expected_states and the
// states the operator approved with `keybroker pcr-policy approve`
// (store.PCRApprovals), each only for the releases its scope names (every
// authorized release when it names none). The node receives the approvals at each
// attestation and keeps them with its cached credentials, so a credential
// re-opens after an approved update without a new release, and never in a
// state nobody approved.
//
// # Revocation: a policy version counter
//
// A signature cannot be taken back, so every approval also binds the
// node's policy-version counter: a TPM_NT_COUNTER NV index the agent
// defines (sealing.EnsureCounter) and reports in Attest. An approval holds
// only while the counter is at most its version. Revoking a state
// (`keybroker pcr-policy revoke`) stores the revocation and, in the same
// store transaction, bumps the store's revocation epoch (a counter of its
// own that only grows; store.PCRApprovals). At the node's next verified
// attestation, allowed or refused, the broker raises the node's version
// above every version it signed before (Bound, which also bounds the
// unverified reported value), tells the agent to advance its counter to it
// (AttestResponse.policy_counter_min, a status detail with a refusal) and
// re-signs the states still approved at the new version. The counter's
// name is pinned in the node record: a node reporting another is refused. From then on no approval signed before the
// revocation opens anything on that TPM, and the revoked state is never
// signed again. A counter only grows, and a counter deleted and defined
// again starts at the highest value the TPM ever counted, so neither can
// roll it back. (PolicyAuthorizeNV would put the approved policy itself in
// NV: one state at a time per index and an NV write per approval, where
// the counter needs one increment per revocation and lets a node hold
// approvals of several states at once, as an update in progress needs.)
// A node that has not attested since the revocation still opens with its
// old approvals: revocation takes effect at each node's next attestation.
// A leaked signing key defeats revocation for blobs naming it: the remedy
// is a new key and new releases.
//
// # Rotation: the next key
//
// A blob names every signing key the broker has when it is sealed — the
// current key and, when pcr_policy.next_key_file is set, the next one —
// under a PolicyOR of one PolicyAuthorize per key. Promoting the next key
// to current (key_file = the old next_key_file) keeps every such blob
// opening with approvals by the new key; blobs sealed before a next key
// was published need a new release.
package pcrpolicy
