# An example policy: nodes whose EK certificate chains to a vendor root in
# ek-roots, booted with UEFI Secure Boot on, get a TLS key and certificate
# that only their TPM can open, and only while PCR 7 (the Secure Boot
# state) holds the attested value.

policy "secure-boot-nodes" {
  select {
    ek_cas = ["vendors"]
  }
  require = [
    "ek.certified",
    "eventlog.secure_boot",
  ]
  release "node-tls" {
    type        = "tls_certificate"
    mode        = "pcr_sealed"
    pcr_bank    = "sha256"
    pcrs        = [7]
    ttl         = "24h"
    common_name = "node-${ek_hash_short}"
    dns_names   = ["${ek_hash_short}.nodes.example.com"]
  }
}
