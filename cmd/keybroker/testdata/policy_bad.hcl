policy "web" {
  select {
    ek_cas = ["swtpm"]
  }
  require = [
    "ek.certified &&",
    "history.uptime > 3",
  ]
  release "web-tls" {
    type        = "tls_certificate"
    mode        = "sealed"
    common_name = "web"
  }
}
