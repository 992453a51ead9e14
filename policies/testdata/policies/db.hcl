# Database hosts are listed one by one.
policy "db" {
  select {
    ek_hashes = ["5f3c3a1e9b0d4f6a8c2e7b1d3f5a7c9e0b2d4f6a8c1e3b5d7f9a0c2e4b6d8f0a"]
  }
  require = ["tpm.reset_count < 1000"]
  release "db-tls" {
    type         = "tls_certificate"
    common_name  = "db-${ek_hash_short}"
    ip_addresses = ["10.0.0.5"]
  }
}
