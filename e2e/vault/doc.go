// Package vaulte2e tests keybroker's Vault integrations end to end: the
// auth method, and Vault as the source of the broker's vault_kv, vault_pki
// and vault_token releases. A real
// Vault (github.com/hashicorp/vault's in-process test cluster, its core and
// HTTP API over TLS on loopback), the plugin built from plugins/vaultauth
// and run by Vault as its own process, registered and enabled the way an
// operator does (catalog entry with the binary's SHA-256, auth enable), and
// the real keybroker-agent binary on swtpm. It holds tests only.
//
// It is its own Go module because Vault builds only at the versions it was
// released with: github.com/hashicorp/vault v1.19.5 with
// github.com/hashicorp/vault/sdk v0.17.0, importing only vault/vault and
// vault/http (Vault's command package does not build from the module
// proxy). It imports nothing from the main module, so that module's newer
// dependencies cannot change Vault's build; the binaries under test are
// built from their own modules with `go build`.
//
// Run it with `make e2e-vault` (cd e2e/vault && go test -count=1 -timeout
// 20m ./...). Every test skips with -short; without swtpm or tpm2-tools it
// skips, or fails when CI is set. The first build of the test binary takes
// about 5 minutes on 2 cores (Vault is large); later ones come from the
// build cache.
//
//   - TestLoginEndToEnd: config trusts swtpm's local CA, role "web" admits
//     nodes of that CA whose sha256 PCR 7 measured "secure boot on", with
//     Vault policy node-read. `keybroker-agent vault-login -format=json
//     --token-file F` logs in: F is 0600 and holds the printed token; the
//     token's lookup-self shows node-read and path auth/tpm/login; its
//     entity has one alias, the EK hash that `keybroker-agent ek-hash`
//     prints, on the tpm mount; the text format writes ~/.vault-token (0600)
//     and prints the steps but not the token.
//   - TestReplayedChallengeRefused: a login request captured by a proxy and
//     sent again is refused (403, challenge) and creates no token, also
//     after the core is sealed and unsealed, after which a fresh login works.
//     The login carried the challenge request's ek_public, ek_certificate
//     and ak_public again; sent with another AK it is refused as a mismatch
//     ("challenge was issued for another EK or AK").
//   - TestPCRMismatchDenied: after PCR 7 changes the login is refused with
//     only "policy: no policy allows this node", no token is created, no
//     file written, and Vault's log records check=policy for the operator.
//   - TestUntrustedEKCA: an EK certified by another swtpm CA is refused at
//     challenge (ek_trust).
//   - TestKeybrokerReadsVaultRecords: after a node logs in through the
//     auth method, `keybroker receipts list --vault-mount auth/tpm` (VAULT_ADDR,
//     VAULT_TOKEN with read/list on receipts/, nodes/, config) lists the
//     login's receipt, `keybroker nodes list` and `nodes show --evidence`
//     (by an EK hash prefix) the node's record with its evidence, and
//     `keybroker policy eval --vault-mount auth/tpm`
//     verifies the node's stored evidence again with the mount's trust and
//     allows it under a role policy matching its PCR 7, denies it under one
//     that does not; `keybroker receipts export --vault-mount auth/tpm`
//     exports the receipt chain with a checkpoint signed by the auth
//     method's key (`receipts checkpoint-key --vault-mount`), which
//     `receipts verify --key` accepts offline and refuses, naming the
//     receipt, once a byte of it changed; a token without those
//     capabilities is refused ("Vault refused: token lacks list on
//     auth/tpm/receipts/").
//   - TestChallengeAcrossClusterNodes: a cluster of three cores (sys/leader
//     names one active core; the two standbys forward to it). A proxy sends
//     the agent's challenge to one standby and its login to the other: the
//     login works (lookup-self on the active core), and the same login
//     request sent again to each of the three cores is refused (403,
//     "challenge: challenge is unknown or already used") and creates no
//     token. Then the active core steps down between challenge and login,
//     and the login goes through it, now a standby, to the new active core,
//     whose plugin process did not issue the challenge: it is accepted,
//     once.
//   - TestChallengeBoundToTPM: a second trusted swtpm handed the first one's
//     challenge cannot activate it and never reaches login.
//   - TestSealedTokenLogin: role token_envelope=tpm_bound. Without the
//     config's vault_addr, or with it unreachable, the login fails with a
//     clear error and no token exists; with vault_addr pointing at the
//     cluster the plugin completes the login through Vault's own API (one
//     token, made by auth/tpm/login: role policy, EK-hash entity alias,
//     renewable) and answers with the token sealed to the EK: the answer on
//     the wire holds no token and no auth, the agent opens it in its TPM
//     (sealed "tpm_bound" in -format=json). A's answer handed to a second
//     trusted swtpm fails at open ("the TPM refused to open the envelope")
//     and writes nothing; handed to A again it opens.
//   - TestPCRSealedTokenLogin: token_envelope=pcr_sealed on PCR 7: a saved
//     answer no longer opens once PCR 7 changed.
//   - TestResponseWrappedLogin: token_envelope and response_wrap_ttl
//     together are refused; with response_wrap_ttl the login answer
//     holds only a wrapping token (creation_path auth/tpm/login), which the
//     agent unwraps; it cannot be unwrapped again; when someone unwraps it
//     first the agent fails at unwrap and writes nothing.
//   - TestBrokerReleasesFromVault: KV version 2 at kv/ and PKI at pki/
//     (root CA, role "nodes") in the cluster; `keybroker serve` with a vault
//     block (the cluster's address and CA, a renewable token in token_file)
//     logs in and renews its token; `keybroker-agent bootstrap` on swtpm gets
//     the vault_kv secret (written as db.json, 0600) and a certificate that
//     the PKI role issued for the policy's name (key.pem, cert.pem,
//     chain.pem; Vault has its serial); with the cluster sealed the
//     attestation is refused (Unavailable, "release: vault unavailable
//     (sealed or not active (503))"), no file changes and the broker logs
//     check=release; after unseal both are released again; with the
//     cluster's HTTP server closed (Vault stopped) the attestation is
//     refused with "release: vault unavailable (unreachable)" and no file
//     changes.
//   - TestBrokerRevokesUnreleasedCertificate: a decision with a vault_pki
//     release and then a vault_kv release Vault answers 404 is refused
//     ("release: vault refused the broker (not found (404))"), nothing is
//     written, and the one certificate Vault issued for it is revoked.
//   - TestBrokerAppRoleRelogin: `keybroker serve` with an approle block
//     logs in, renews its token (TTL 5s), logs in again at the token's
//     maximum TTL (15s) and keeps releasing vault_kv after Vault dropped
//     the first token; a broker whose secret_id file was destroyed refuses
//     attestations once its token expired ("release: vault refused the broker
//     (permission denied (403))", nothing written) and recovers when a new
//     secret_id is in the file; a wrong secret_id stops the broker from
//     starting (exit 1 naming the refused AppRole login).
//   - TestBrokerAppRoleBatchToken: with batch (non-renewable, 6s) tokens
//     the broker logs in again after two thirds of each token's life, not
//     in a loop: 2 to 4 AppRole logins in 10s, counted both in its log and
//     by Vault's secret_id use count; a bootstrap after the first token
//     expired still gets the vault_kv secret.
//   - TestBrokerReleasesVaultToken: one attestation under one policy
//     releases a TLS certificate, the node's X.509-SVID and a vault_token
//     (pcr_sealed, ttl 30m, period 10m) created by the token role "nodes"
//     (orphan, allowed_policies node-kv, token_explicit_max_ttl 30m); the
//     agent writes key.pem,
//     cert.pem, chain.pem and vault.token (0600, the token alone). In Vault
//     the token's lookup-self shows policies default and node-kv, path
//     auth/token/create/nodes, the display name, metadata naming the EK
//     hash, the receipt (as `keybroker receipts list` shows it) and the
//     release, a TTL of at most 10m and explicit_max_ttl 1800s, which a
//     renewal asking 2h does not pass; it reads the node's KV secret and
//     gets 403 on another. The receipt holds the token's accessor; the
//     token shows in no log, receipt or output. A broker whose decision's
//     later vault_kv release Vault answers 404 leaves Vault's accessors as
//     they were (the token it created is revoked, and the receipt says so);
//     after PCR 7 changes the attestation is refused, no token is created
//     and no file changes.
package vaulte2e
