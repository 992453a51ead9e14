policy "web" {
  select {
    ek_cas = ["swtpm"]
  }
  require = [
    "ek.certified",
    "!history.rebooted",
  ]
  release "web-tls" {
    type        = "tls_certificate"
    common_name = "web-${ek_hash_short}"
  }
}

policy "db" {
  select {
    ek_cas = ["swtpm"]
  }
  require = ["eventlog.secure_boot"]
  release "db-tls" {
    type        = "tls_certificate"
    mode        = "pcr_sealed"
    pcrs        = [0, 7]
    common_name = "db-${ek_hash_short}"
  }
}
