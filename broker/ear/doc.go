// Package ear makes and checks the broker's attestation results: EAT
// Attestation Results (EAR, draft-ietf-rats-ear) in the Veraison EAT
// profile "tag:github.com,2023:veraison/ear", signed as JWTs (ES256) by the
// broker's result key.
//
// With the attestation_results block in broker.hcl, an allowed Attest
// returns one, once the decision's receipt is durable, so that the node can
// hand it to a relying party: a service that did not see the evidence but
// trusts the broker's appraisal of it. A refused attestation returns none.
//
// The claims (JSON, as Result encodes them):
//
//	eat_profile                   "tag:github.com,2023:veraison/ear"
//	iat, exp                      issued at, expires (Unix seconds); exp = iat + ttl
//	ear.verifier-id               {"developer": "https://github.com/keybroker/keybroker", "build": "keybroker <version>"}
//	eat_nonce                     the relying party's nonce (AttestRequest.relying_party_nonce,
//	                              8 to 64 bytes), base64url without padding (11 to 86 characters,
//	                              within RFC 9711's 8 to 88); absent without one
//	submods                       {"tpm": appraisal}: one submodule, the node's TPM-attested boot
//	  ear.status                  "affirming": only allowed decisions get a result
//	  ear.trustworthiness-vector  AR4SI claims, see below
//	  ear.appraisal-policy-id     "keybroker:policy-set:<hash>", the hash of the policy set that
//	                              allowed the node (the receipt's policy_hash)
//	keybroker.receipt-id          the decision's receipt ID (keybroker receipts show ID)
//	keybroker.ek-hash             the node's EK identity hash
//
// The trustworthiness vector claims only what the broker appraised (AR4SI
// values; a claim it cannot make is left out, which a relying party treats
// as "no claim", 0):
//
//	instance-identity  2  the EK is trusted (allowlist or certificate chain) and the AK
//	                      proved, by credential activation, that it lives in the EK's TPM
//	hardware           2  the EK certificate chained to a configured EK CA (genuine TPM);
//	                      left out for an EK trusted by hash alone
//	configuration      2  an allowing policy required conditions on the quoted PCR values
//	executables        3  the event log replayed to the quoted PCRs and an allowing policy
//	                      required conditions on its facts (approved boot)
//
// file-system, runtime-opaque, storage-opaque and sourced-data are never
// claimed. ear.raw-evidence is not included.
//
// The result key (ECDSA P-256) is published as a JWKS (kid, alg "ES256",
// use "sig") by the GetAttestationResultKeys RPC and by "keybroker ear
// jwks"; the JWT header names the kid. Verify is what a relying party (or
// a test) runs: signature against the JWKS, profile, expiry, nonce and the
// claims' types.
package ear
