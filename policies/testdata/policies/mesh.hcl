# Service mesh: nodes certified by the swtpm CA get their node X.509-SVID,
# sealed to PCR 7, and may hand out SVIDs to the web and metrics workloads.
policy "mesh" {
  select {
    ek_cas = ["swtpm"]
  }
  require = ["ek.certified"]
  release "node-svid" {
    type      = "x509_svid"
    mode      = "pcr_sealed"
    pcrs      = [7]
    ttl       = "24h"
    spiffe_id = "spiffe://example.org/node/${ek_hash_short}"
  }
  workload "mesh-web" {
    spiffe_id = "spiffe://example.org/web"
    selectors = ["unix:uid:1000", "unix:path:/usr/bin/web"]
    ttl       = "1h"
  }
  workload "mesh-metrics" {
    spiffe_id = "spiffe://example.org/metrics"
    selectors = ["unix:uid:65534"]
  }
}
