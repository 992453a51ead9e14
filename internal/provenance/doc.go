// Package provenance verifies, offline, that an executable carries a
// Sigstore signature the policy trusts: the agent's check behind the
// "signed" workload selectors.
//
//	signed:key:<name>                  a bundle signed by the policy's signer "<name>"
//	signed:identity:<issuer>/<subject> a bundle whose certificate chains to a trusted
//	                                   root that declares <issuer>, for <subject>
//
// A policy names the trust material (policies: signer and trusted_root
// blocks); the broker sends the material the node's workload entries use
// with its entries (AttestResponse.workload_trust); the agent builds a
// Trust from it (NewTrust) and, for a caller of the Workload API, verifies
// the Sigstore bundles found for its executable's SHA-256 (Trust.Verify)
// with sigstore-go (github.com/sigstore/sigstore-go), with no network
// access. Verify returns the selector values that hold; an entry's signed
// selectors match by equality, like unix ones.
//
// Keyless certificates are verified as the trusted root demands: a
// certificate chain to one of its certificate authorities, valid at a
// time an observer vouches for (a signed timestamp of a listed timestamp
// authority, or the integrated time of a listed transparency log), an
// inclusion proof when it lists transparency logs, and a signed
// certificate timestamp when it lists CT logs. Bundles signed by a key need
// no timestamp. Results are cached by (executable digest, bundle digest).
//
// The artifact is a SHA-256 digest, so the same check applies to other
// artifacts: an OCI image manifest digest (cosign sign --new-bundle-format
// bundles) is the planned input for container workloads; see
// docs/workload-provenance.md.
package provenance
