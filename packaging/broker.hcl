# /etc/keybroker/broker.hcl: the configuration systemd/keybroker.service and
# the container image run. Relative paths are relative to this file, so
# "policies" is /etc/keybroker/policies. Every setting is described in the
# README ("Running the broker").

listen       = "0.0.0.0:8443"
# The unit's StateDirectory=keybroker (the container's volume): CA, store,
# admin socket. Agents pin /var/lib/keybroker/ca/ca.pem.
data_dir     = "/var/lib/keybroker"
server_names = ["broker.example.com"]
policies     = ["policies"]

# EK certificate authorities: put the TPM vendors' EK root certificates
# (PEM or DER) in /etc/keybroker/ek-roots.
ek_ca "vendors" {
  roots = ["ek-roots"]
}

# Vault as a source of vault_kv, vault_pki and vault_token releases: under systemd, load
# the token with the unit's LoadCredential= so only the broker reads it.
# vault {
#   address    = "https://vault.example.com:8200"
#   token_file = "/run/credentials/keybroker.service/vault-token"
# }

# Kubernetes: the cluster kubelet releases join (docs/kubernetes.md). The
# client CA is the one kube-apiserver trusts through --client-ca-file;
# token_file (the broker's own identity, get and update on nodes) enables
# quarantine.
# kubernetes {
#   server         = "https://10.0.0.1:6443"
#   ca_cert        = "/etc/keybroker/kubernetes/cluster-ca.pem"
#   client_ca_cert = "/etc/keybroker/kubernetes/kubelet-client-ca.pem"
#   client_ca_key  = "/run/credentials/keybroker.service/kubelet-client-ca.key"
#   token_file     = "/run/credentials/keybroker.service/kube-token"
# }

# Signed attestation results (EAR JWTs) for relying parties, returned with
# each allowed attestation; "keybroker ear jwks" prints the key to verify
# them. The broker makes its key in data_dir/ear on first start.
# attestation_results {
#   ttl = "5m"
# }
