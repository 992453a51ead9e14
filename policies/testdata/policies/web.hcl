# Web servers: any EK certified by the swtpm CA, booted with secure boot in
# its expected state, gets a TLS certificate sealed to PCRs 0 and 7.
policy "web" {
  select {
    ek_cas = ["swtpm"]
  }
  require = [
    "ek.certified",
    "pcrs.sha256[7] == \"65caf8dd1e0ea7a6347b635d2b379c93b9a1351edc2afc3ecda700e534eb3068\"",
  ]
  release "web-tls" {
    type        = "tls_certificate"
    mode        = "pcr_sealed"
    pcrs        = [0, 7]
    ttl         = "24h"
    common_name = "web-${ek_hash_short}"
    dns_names   = ["${ek_hash_short}.web.example.com"]
  }
}
