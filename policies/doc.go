// Package policies loads and evaluates keybroker policy documents: which
// nodes may receive secrets, under which conditions over their verified
// facts, and what is released to them.
//
// A document is HCL and may hold several policy blocks:
//
//	policy "web" {
//	  select {
//	    ek_hashes = ["<64 lowercase hex>"] # EK identity hashes (verify.EKHash)
//	    ek_cas    = ["swtpm"]              # EK CAs configured in the broker
//	    labels    = { role = "web" }       # nodes whose node block has all of these
//	  }
//	  require = [                          # CEL, each must evaluate to true
//	    "pcrs.sha256[7] == \"3d45...\"",
//	    "ek.certified",
//	  ]
//	  release "node-tls" {
//	    type         = "tls_certificate"   # required: tls_certificate, x509_svid, vault_kv, vault_pki, vault_token or kubelet
//	    mode         = "pcr_sealed"        # or "tpm_bound" (default), or "tpm_resident" (below)
//	    pcr_bank     = "sha256"            # pcr_sealed only; sha256 (default), sha384, sha512
//	    pcrs         = [0, 7]              # required for pcr_sealed, forbidden for tpm_bound
//	    ttl          = "24h"               # default 24h, at most 8760h
//	    common_name  = "node-${ek_hash_short}"
//	    dns_names    = ["${ek_hash_short}.nodes.example.com"]
//	    ip_addresses = []
//	  }
//	  release "node-svid" {
//	    type         = "x509_svid"         # the node's X.509-SVID
//	    mode         = "pcr_sealed"        # mode, pcr_bank, pcrs as above
//	    pcrs         = [0, 7]
//	    ttl          = "24h"               # default 24h, at most 168h (MaxSVIDTTL)
//	    spiffe_id    = "spiffe://example.org/node/${ek_hash_short}"
//	  }
//	  release "db-password" {
//	    type         = "vault_kv"          # a Vault KV version 2 secret (broker.hcl needs a vault block)
//	    path         = "secret/data/nodes/${ek_hash_short}"  # <mount>/data/<key>, a template
//	    mode         = "tpm_bound"         # mode, pcr_bank, pcrs as above; no ttl
//	  }
//	  release "vault-tls" {
//	    type         = "vault_pki"         # a certificate issued by a Vault PKI role
//	    path         = "pki/issue/nodes"   # <mount>/issue/<role>, static
//	    common_name  = "${ek_hash_short}.nodes.example.com"  # names and ttl as tls_certificate
//	    ttl          = "24h"
//	  }
//	  release "vault" {
//	    type         = "vault_token"       # a token a Vault token role creates for the node
//	    token_role   = "nodes"             # required: auth/token/create/<token_role>, static
//	    policies     = ["node-kv"]         # optional: static names, never "root"
//	    ttl          = "1h"                # default 24h, at most 768h (MaxTokenTTL): the explicit max TTL
//	    period       = "15m"               # optional, at most ttl: TTL, renewable up to ttl
//	    display_name = "node-${ek_hash_short}"  # optional; a template
//	    mode         = "pcr_sealed"        # mode, pcr_bank, pcrs as above
//	    pcrs         = [7]
//	  }
//	  release "kubelet" {
//	    type         = "kubelet"           # a kubelet client certificate (broker.hcl needs a kubernetes block)
//	    node_name    = "node-${ek_hash_short}"  # must contain ${ek_hash_short}
//	    kubelet_auth = "client_certificate"     # default; or "bootstrap_token" (the kubelet's TLS bootstrap)
//	    quarantine   = true                # taint the Node when the node is later refused (needs token_file)
//	    mode         = "pcr_sealed"        # mode, pcr_bank, pcrs as above
//	    pcrs         = [0, 7]
//	    ttl          = "24h"               # default 24h, at most 168h
//	  }
//	  workload "web" {                     # an SVID the node's agent may hand out
//	    spiffe_id    = "spiffe://example.org/web"
//	    selectors    = ["unix:uid:1000", "unix:path:/usr/bin/web"]  # all must match
//	    ttl          = "1h"                # default 1h, at most 168h
//	  }
//	}
//
// Signed workload selectors (see below) use trust material declared in
// signer and trusted_root blocks, in any document of the Set, names unique
// across it:
//
//	signer "release" {
//	  public_key = file("keys/release.pub")   # PEM PUBLIC KEY or DER
//	}
//	trusted_root "sigstore" {
//	  json    = file("trusted_root.json")     # a Sigstore trusted root
//	  issuers = ["https://oauth2.sigstore.dev/auth"]
//	}
//
// Operators label nodes in node blocks, in any document of the Set (one
// block per EK hash across the Set):
//
//	node "<64 lowercase hex>" {
//	  labels = { role = "web", site = "fra1" }
//	}
//
// A node is selected by a policy if its EK hash is listed in ek_hashes, or
// its EK certificate chained to a CA named in ek_cas, or its labels include
// every label of select's labels; a policy must select something. Require
// expressions see the facts listed by FactNames (ek, pcrs, tpm, history,
// eventlog, identities, node.labels) and are compiled once, when the document is parsed; each must
// evaluate to a bool. A tls_certificate release's common_name, dns_names
// and ip_addresses are HCL templates over ek_hash, ek_hash_short (its first
// 16 hex characters) and ek_ca, rendered for each node; it needs at least
// one of them. An x509_svid release has instead a spiffe_id, a template over
// the same variables that must render to a SPIFFE ID (checked on a sample
// node when parsed, and for each node when evaluated); the broker refuses
// to release it unless the ID is in its configured trust domain.
//
// The vault_kv, vault_pki and vault_token releases take their material
// from the Vault of the broker's vault block. A vault_kv release reads the latest version
// of the KV version 2 secret at path (a template over the same variables,
// rendered per node) and releases its data; a vault_pki release has Vault's
// PKI role at path (static) issue a certificate for its common_name,
// dns_names and ip_addresses, valid for ttl, and releases it as a TLS
// credential. A vault_token release has the token role token_role create a
// service token with policies (the role's allowed_policies bound them),
// whose explicit maximum TTL is ttl, so that the token cannot outlive the
// release however it is renewed: without period its TTL is ttl and it is
// not renewable; with period (at most ttl) its TTL is period and it is
// renewable, and the broker checks that the role's token_explicit_max_ttl
// (which, not the token's, bounds Vault's renewals) is set and at most
// ttl. Its metadata names the node's EK hash and the decision's
// receipt, and the receipt records its accessor, never the token. When
// Vault is unreachable or refuses, the broker releases nothing to the
// node, not even the decision's other releases, and revokes the
// certificates and tokens it had Vault issue for the decision.
//
// A tls_certificate or x509_svid release with mode = "tpm_resident"
// releases only a certificate (for x509_svid: the node SVID), for a key the
// node created inside its TPM for that release and certified with its AK
// for this attestation (AttestRequest resident_keys; keybroker-agent
// bootstrap or run --tpm-resident <release>). The broker refuses the
// release when the node offered no key for it, and the attestation when a
// certify does not verify (broker/verify.Verified.WithResidentKeys). Other
// types refuse the mode. An x509_svid release may bind the key to PCRs:
//
//	release "node-svid" {
//	  type      = "x509_svid"
//	  mode      = "tpm_resident"
//	  pcrs      = [0, 7]   # pcr_bank = "sha256" by default
//	  spiffe_id = "spiffe://example.org/node/${ek_hash_short}"
//	}
//
// The key's certified authPolicy must then be TPM2_PolicyPCR over the
// values of those PCRs in the verified quote, without userWithAuth, so that
// the TPM signs with it only in the attested boot state
// (Verified.CheckResidentPCRPolicy; the agent: --tpm-resident
// node-svid=sha256:0,7); otherwise the release is refused. A
// tls_certificate release refuses pcrs with tpm_resident: OpenSSL's tpm2
// provider cannot satisfy a PolicyPCR key, so PCR-bound keys are for the
// agent's own use (its mutual TLS with the broker).
//
// A kubelet release is a node's Kubernetes identity: a key and a client
// certificate for user system:node:<node_name> in group system:nodes,
// signed by the client CA of the broker's kubernetes block (which
// kube-apiserver trusts through --client-ca-file), released with the API
// server's address and CA; the agent writes the kubeconfig. node_name is a
// template whose value must contain the node's ek_hash_short, so that each node's name
// is bound to its EK: with the Node authorizer and the NodeRestriction
// admission plugin, a kubelet can then act only on its own Node object and
// what is bound to it. Kubernetes checks no revocation of client
// certificates, so ttl is short (at most MaxKubeletTTL): a node that stops
// attesting falls out of the cluster when its certificate expires.
// With kubelet_auth = "bootstrap_token" the broker creates a bootstrap
// token (valid for ttl: default DefaultBootstrapTokenTTL, at most
// MaxBootstrapTokenTTL) and releases it with the API server's address; the
// kubelet does the standard TLS bootstrap with it, naming itself in its
// certificate request, so node_name is optional and not enforced by
// Kubernetes in this mode.
//
// With quarantine = true, a node that was released a kubelet credential and
// is later refused after its TPM proved itself (a policy refusal such as a
// changed PCR, its TPM counters, its event log) has its Node object tainted
// by the broker (the kubernetes block's quarantine_taint), and untainted
// when it attests again and is allowed; the receipts record both.
//
// A workload block is an entry the node's agent serves on its Workload
// API: processes that match every one of its selectors get an SVID for its
// spiffe_id (static, not a template), valid for at most its ttl. Selectors
// are "type:value" strings of type "unix" (see SelectorTypeUnix): uid:<n>,
// gid:<n>, path:<absolute path> and sha256:<64 lowercase hex>; or "signed"
// (see SelectorTypeSigned): key:<signer name> and
// identity:<issuer>/<subject>, which hold when the agent verifies a
// Sigstore bundle of the executable by that signer, or a keyless
// certificate for subject from issuer under the trusted_root that declares
// issuer (package internal/provenance). file() reads a path relative to
// the document; the Set's Hash covers what it read. Issuers must not be
// prefixes of one another, so that <issuer>/<subject> splits one way. A
// Decision carries the signers and roots its entries use (WorkloadTrust). An entry needs 1 to MaxSelectors selectors, no
// duplicates. Policy, release and workload names are unique across a Set,
// and a Set holds at most MaxWorkloadEntries workload entries.
//
// # Combination rule
//
// Evaluation is default deny. Every policy whose select matches the node is
// evaluated in full: all its require expressions, the rendering of its
// release templates, and, for pcr_sealed releases, that every sealed PCR
// was quoted in the release's bank. A policy allows the node when none of
// these fails, and then contributes all of its releases. The node is
// allowed if and only if at least one policy allowed it; the Decision then
// releases the union of the allowing policies' releases and lists the union
// of their workload entries. Policies that
// selected the node but failed contribute nothing, and every one of their
// failed conditions is listed in Decision.Failures, also when another policy
// allowed the node. If no policy selects the node, it is denied with the
// single failure "no policy selects this node".
//
// Failures are for operators (logs, receipts): they quote the policy, the
// expression and the PCR values it expected, so they must not be returned to
// the node.
//
// # Errors
//
// Parse and Load report every problem they find at once, one line per
// problem, each prefixed with file:line:column. For a require expression
// the position is that of its string in the file, and the message adds the
// line and column within the expression as CEL counts them.
//
// Evaluate takes only a *verify.Verified, so unverified data cannot reach a
// decision; it performs no I/O, never panics, and may be called
// concurrently on the same Set.
package policies
