// Package e2e tests keybroker across process boundaries, on swtpm (the
// libtpms software TPM QEMU uses, provisioned by swtpm_setup with an EK
// certificate from swtpm's local CA) and tpm2-tools as an independent TPM
// client. It holds tests only; run them with `make e2e` (they are skipped
// with -short, and fail instead of skipping when CI is set and swtpm or
// tpm2-tools are missing).
//
// The cross-process suite (e2e_test.go) builds keybroker and keybroker-agent
// (go build ./cmd/...) once per test binary into a temporary directory, runs
// `keybroker serve` as its own process on a free loopback port and
// `keybroker-agent` against it and a swtpm, with PCR 0 and 7 extended from
// the test so that policies check real values:
//
//   - TestBootstrapOnSWTPM: an EK trusted through swtpm's CA chain (ek_ca,
//     ek.certified) gets a TLS credential sealed to sha256 PCR 0 and 7; the
//     agent prints every step, writes key.pem (0600), cert.pem and chain.pem
//     (cert chains to the broker CA and matches the key), runs --on-change
//     with KEYBROKER_SERIAL and KEYBROKER_OUT; a second bootstrap gets a new
//     serial; `keybroker receipts list` shows the allowed receipts through
//     the admin socket while the broker runs and from the store once stopped.
//   - TestRefusedAfterPCRChange: after PCR 7 changes the broker refuses at
//     attest with only "policy: no policy allows this node" for the node,
//     the previous credential files stay byte for byte, --on-change does not
//     run, and the receipt records "denied: policy" with the failed
//     pcrs.sha256[7] condition.
//   - TestUntrustedEK: an EK certificate that does not chain to the only
//     configured ek_ca is refused at challenge (ek_trust); nothing is written
//     and no receipt is made.
//   - TestPolicyReloadOnSIGHUP: SIGHUP swaps a denying policy for an
//     allowing one; a broken policy on SIGHUP is refused and logged, and the
//     previous policy (same policy hash in the receipts) keeps serving.
//   - TestAgentErrors: an unreachable broker, a silent one (--timeout), a
//     broker whose certificate is not from the pinned CA, a CA file without
//     PEM, an unreachable TPM and missing flags fail with the documented exit
//     codes and stage names; `keybroker-agent ek-hash` prints the hash the
//     broker records, and that hash alone (ek_allow, tpm_bound) is enough to
//     be trusted.
//   - TestIdentityRecordOnSWTPM (idlog_test.go): keybroker-agent run
//     --identity-log-dir records the three X.509-SVIDs and the JWT-SVID a
//     go-spiffe client fetches, each once however often fetched, in PCR 15;
//     the re-attestation carries the record, the broker replays it against
//     the quote, `keybroker audit show` lists it, and a policy over
//     identities.issued denies the node for an entry without an executable
//     digest; PCR 15 extended out of band refuses it as identity_log.
//   - TestEventLogPolicy (eventlog_test.go): two swtpm nodes boot with
//     realistic event logs (internal/evidencetest); a policy over Secure
//     Boot, the kernel digest and the command line allows the one that
//     booted that way and refuses the other, naming each failed condition in
//     the receipt only; without a log the policy refuses.
//   - TestEventLogTampered: an edited, dropped, reordered or wrong-bank log
//     is refused at attest with the mismatching PCR named (event_log).
//   - TestPolicyReloadOnFileChange (reload_test.go): rewriting the policy
//     file, without a signal, switches the broker from deny to allow; a
//     broken rewrite is refused and the previous policy keeps serving.
//   - TestAgentSendsEKIntermediates (ekchain_test.go): with only swtpm's root
//     configured, the node is refused until the agent sends the intermediate
//     with --ek-intermediates.
//   - TestReopenAfterRebootOnSWTPM (reopen_test.go): bootstrap --cache
//     keeps the credential sealed (0600, no plaintext key); after a swtpm
//     reset with the broker stopped, reopen refuses ("sealed to PCR values
//     this TPM no longer holds") and writes nothing, and once the same boot
//     is measured again it writes the bootstrapped files byte for byte,
//     running --on-change then and not when a reopen changes nothing.
//   - TestAuthorizedUpdateOnSWTPM (pcrpolicy_test.go): pcr_policy
//     "authorized" with a policy counter: an update's state approved through
//     the admin socket reaches the node at its next attestation, and reopen
//     opens the cached credentials in that state with the broker gone, not
//     in a state nobody approved.
//   - TestAuthorizedRevocationOnSWTPM (pcrpolicy_test.go): a state approved,
//     brought to the node and then revoked: the node booted into it is
//     refused, the refusal still advances its counter and deletes its cached
//     approvals, and reopen fails there, also with the old approvals put back.
//   - TestAttestationResultOnSWTPM (ear_test.go): with attestation_results,
//     `keybroker-agent bootstrap --ear-out --ear-nonce` writes the broker's
//     EAR (0600), which verifies with `keybroker ear jwks` for that nonce,
//     names the receipt and claims genuine hardware (swtpm's EK chain) and
//     an approved configuration; without the block the agent fails at
//     attest and writes nothing.
//   - TestKubernetesKubeletJoin (kubernetes_test.go; run by make
//     e2e-kubernetes, which builds kube-apiserver and names it in
//     KEYBROKER_KUBE_APISERVER): a real kube-apiserver (Node authorizer,
//     NodeRestriction) on etcd; the kubelet credential the agent writes
//     authenticates as system:node:<name> in system:nodes, creates its own
//     Node and is refused another's; after a PCR change nothing changes.
//   - TestKubernetesQuarantine: a node refused after its boot changed has
//     its Node tainted by the broker (other taints kept), and untainted when
//     it attests again in an approved state; both receipts say so.
//   - TestPolicyDryRun (dryrun_test.go): `keybroker policy eval` re-verifies
//     a node's stored evidence and shows what a stricter policy would refuse
//     and why, from the running broker and from a stopped one, and from
//     evidence exported with `keybroker evidence show`.
//   - TestSPIFFEOnSWTPM (spiffe_test.go): a broker with a trust domain
//     releases a node X.509-SVID sealed to PCR 0 and 7 (ttl 8s) and one
//     workload entry selecting the test process; a CSR for an ID outside
//     the entries, sent directly with the node SVID, is refused; `keybroker-agent
//     run` serves go-spiffe the workload X.509- and JWT-SVIDs (verified
//     against GetBundle's bundle); after PCR 7 changes the re-attestation at
//     half-life is refused, the agent issues nothing new, and at the node
//     SVID's expiry an open FetchX509SVID stream and new calls get
//     PermissionDenied "identity expired"; SIGTERM stops the agent with exit
//     0 and removes the socket.
//   - TestSignedSelectorsOnSWTPM (provenance_test.go): a policy with a
//     signer key and a trusted root (a test Sigstore: CA and timestamp
//     authority) lists workload entries selecting signed:key and
//     signed:identity; a plain go-spiffe workload (testdata/fetchsvid) gets
//     its SVID from `keybroker-agent run` when its executable is signed by
//     the key (sigstore-go's signing API, and the cosign CLI when
//     $KEYBROKER_COSIGN names it) or keylessly under the root, and
//     PermissionDenied with one byte of the executable changed, signed by
//     another key, or unsigned; the agent log names each reason.
//   - TestTPMResidentOpenSSL (resident_test.go): a tpm_resident TLS release
//     is refused to an agent without --tpm-resident (FailedPrecondition,
//     nothing written); with it the agent writes a TSS2 key file (0600)
//     whose key is in swtpm; OpenSSL's tpm2 provider (Debian tpm2-openssl,
//     behind tpm2-abrmd on a private D-Bus session bus) reads the
//     certificate's public key from it, openssl s_server serves TLS 1.3 with
//     it to a Go client that verifies the chain to the broker's CA (the
//     released serial), and on another swtpm the key file does not load.
//   - TestResidentNodeSVIDOnSWTPM (resident_svid_test.go): keybroker-agent
//     run --tpm-resident node-svid=sha256:0,7 with a tpm_resident x509_svid
//     release bound to PCRs 0 and 7 serves go-spiffe workload SVIDs it got
//     over mutual TLS whose handshakes swtpm signed, writes svid.pem and a
//     TSS2 svid_key.pem (0600), and after PCR 7 changes the TPM refuses to
//     sign (a policy check failed): no new JWT-SVID.
//
// The interop tests (interop_test.go) check that quotes, AKs and EK
// certificates produced by tpm2-tools verify with broker/verify, and that
// tampering with them fails with the check that caught it.
//
// TestTPM2ToolsNode (tpm2tools_node_test.go) is a node made only of
// tpm2-tools commands (createek, createak, activatecredential, quote,
// import, load, unseal under a PolicyPCR session) that drives a running
// broker with grpcurl over server reflection and opens a pcr_sealed TLS
// credential (key matches certificate, certificate chains to the broker CA);
// after PCR 7 changes, tpm2_unseal fails its policy check. grpcurl comes
// from $KEYBROKER_GRPCURL or the build .ci/run caches in
// $HOME/.cache/keybroker/grpcurl-<version>; docs/protocol.md shows the same
// session.
//
// The manifests of deploy/kubernetes (kubernetes_deploy_test.go,
// kubernetes_dryrun_test.go, rendered by kustomize_test.go):
// TestKubernetesManifestsBroker loads each shape's broker.hcl from a tree
// laid out as the broker pod mounts it and checks the Deployment against it
// (mounts, ports, Services, server_names, hardening, no service-account
// token); TestKubernetesManifestsAgent checks the DaemonSet's host access
// (only /dev/tpmrm0 from /dev, the event log read-only, no hostNetwork) and
// that its flags exist and name its mounts; TestKubernetesManifestsDryRun
// sends every object to kube-apiserver (KEYBROKER_KUBE_APISERVER, as the
// Kubernetes suite) with dryRun=All and fieldValidation=Strict, with broken
// copies refused and Pod Security findings only where documented, and has
// it apply each variant's patches; TestKubernetesManifestsVariants
// (kubernetes_variants_test.go) checks the variants' brokers (bolt: one
// replica on a claim; kubelet: the quarantine RBAC, a projected token).
package e2e
