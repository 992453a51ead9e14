# A broker.hcl with one mistake (or two) on each line that sets something;
# TestLoadConfigReportsEveryMistake expects every one of them in one error.
listne        = "127.0.0.1:8443"
data_dir      = "data"
allow_sha1    = "maybe"
challenge_ttl = "forever"
pcr_banks     = ["sha1", "sha3"]
policies      = ["policies"]
policy_poll_interval = "10ms"
ek_allow      = ["ABC"]

ek_ca "vendor" {
  roots         = ["missing.pem", "not-a-cert.pem"]
  intermediates = [""]
}

spiffe {
  trust_domain = "spiffe://example.org"
}

vault {
  address = "http://vault.example.com:8200"
  ca_cert = "not-a-cert.pem"
}
