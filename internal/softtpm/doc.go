// Package softtpm is a software TPM node for load generation and tests:
// its endorsement key (EK) and attestation key (AK) live in memory, and it
// answers the broker's protocol (docs/protocol.md) byte for byte as a real
// TPM 2.0 would, with the TPM's side of each command done in Go:
//
//   - ChallengeRequest: the EK (TCG default EK template, ECC P-256 or
//     RSA-2048) and a restricted signing AK as TPMT_PUBLIC, the AK being a
//     primary key of the owner hierarchy as go-tpm-tools makes it, and
//     with Opts.EKCA an EK certificate issued by a vendor-shaped EK CA
//     (root and intermediate, EKCA) with its intermediate;
//   - Activate: TPM2_ActivateCredential (seed recovered with the EK, outer
//     HMAC checked over the AK's name, credential decrypted);
//   - Quote: TPM2_Quote of all 24 PCRs of a bank, with the activated secret
//     as qualifying data, a TPM-like clock and the node's PCR values;
//   - Open: TPM2_Import of the credential's import blob under the EK, then
//     TPM2_Unseal (under PolicyPCR when the blob is PCR-sealed: refused
//     unless the node's PCRs hold the sealed values), then the JWE.
//
// With Opts.EventLog a node sends a TCG event log with its attestation
// (event_log): a real machine's log, with Opts.PCRs from EventLogPCRs, makes
// a node whose PCRs are what the log replays to, as that machine's TPM's.
//
// A node holds no TPM and no file: making 10,000 ECC nodes costs their key
// generation only. Its tests check every command against the embedded TPM
// simulator and the broker's own code (MakeCredential, verify.Quotes,
// sealing.SealCredential).
//
// The TPM structures of every release — the quote's TPMS_ATTEST and
// TPMT_SIGNATURE, an ECC EK's encrypted seed, the sealed object's
// TPMT_PUBLIC and TPMT_SENSITIVE — are encoded and decoded by hand, in
// tpm2.Marshal's bytes and with the strictness of decoding with
// tpm2.Unmarshal and refusing what does not encode back unchanged: Activate,
// Quote and Open of a credential without PCRs run no go-tpm reflection
// (Open of a PCR-sealed one runs go-tpm's policy calculator).
//
// Usage, against a broker client c that trusts node.EKHash():
//
//	node, err := softtpm.New(softtpm.Opts{Key: softtpm.ECC})
//	ch, err := c.Challenge(ctx, node.ChallengeRequest())
//	secret, err := node.Activate(ch)
//	quotes, err := node.Quote(secret)
//	req := node.AttestRequest(ch.GetChallengeId(), quotes)
//	resp, err := c.Attest(ctx, req)
//	for _, cred := range resp.GetCredentials() {
//		payload, err := node.Open(cred) // the payload message for cred.Type
//	}
//
// The keys never leave the process, but they are ordinary Go keys: a node
// is a stand-in for a TPM in tests and load generation, never a TPM.
package softtpm
