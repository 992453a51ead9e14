package policies_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/policies"
)

// hash64 is a syntactically valid EK hash.
const hash64 = "5f3c3a1e9b0d4f6a8c2e7b1d3f5a7c9e0b2d4f6a8c1e3b5d7f9a0c2e4b6d8f0a"

// withRelease wraps release attributes in a valid policy, so that line 4
// of the document is the first line of body.
func withRelease(body string) string {
	return `policy "web" {
  select { ek_cas = ["swtpm"] }
  release "tls" {
` + body + `
  }
}`
}

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		src     string
		wantErr string // the whole error text; "" for success
	}{
		{
			name: "valid",
			src: `policy "web" {
  select {
    ek_hashes = ["` + hash64 + `"]
    ek_cas    = ["swtpm"]
  }
  require = [
    "pcrs.sha256[7] == \"3d45\"",
    "ek.certified && tpm.reset_count >= 0",
    <<-EOT
      has(pcrs.sha384) ||
      ek.manufacturer.startsWith("id:")
    EOT
  ]
  release "node-tls" {
    type         = "tls_certificate"
    mode         = "pcr_sealed"
    pcr_bank     = "sha384"
    pcrs         = [7, 0]
    ttl          = "8760h"
    common_name  = "node-${ek_hash_short}"
    dns_names    = ["${ek_hash_short}.nodes.example.com", "${ek_ca}-${ek_hash}"]
    ip_addresses = ["192.0.2.1", "2001:db8::1"]
  }
}
policy "db" {
  select { ek_cas = ["swtpm"] }
}`,
		},
		{
			name:    "syntax error",
			src:     `policy "web" {`,
			wantErr: `p.hcl:1:14: unclosed configuration block: there is no closing brace for this block before the end of the file. This may be caused by incorrect brace nesting elsewhere in this file`,
		},
		{
			name:    "no policy",
			src:     "# nothing here\n",
			wantErr: `p.hcl:1:1: document defines no policy, node, signer or trusted_root`,
		},
		{
			name: "unknown attribute and block",
			src: `policy "web" {
  select { ek_cas = ["swtpm"] }
  requires = ["true"]
  labels {}
}`,
			wantErr: `p.hcl:3:3: unsupported argument: an argument named "requires" is not expected here. Did you mean "require"?
p.hcl:4:3: unsupported block type: blocks of type "labels" are not expected here`,
		},
		{
			name:    "missing select",
			src:     `policy "web" {}`,
			wantErr: `p.hcl:1:1: policy "web": a select block is required`,
		},
		{
			name: "empty select",
			src: `policy "web" {
  select {
    ek_hashes = []
  }
}`,
			wantErr: `p.hcl:2:3: policy "web": select lists no ek_hashes, ek_cas or labels; a policy must select something`,
		},
		{
			name: "bad ek_hashes and ek_cas",
			src: `policy "web" {
  select {
    ek_hashes = ["` + strings.ToUpper(hash64) + `", "abc", "` + hash64 + `", 7]
    ek_cas    = [""]
  }
}`,
			wantErr: `p.hcl:3:18: policy "web": ek_hashes[0] "` + strings.ToUpper(hash64) + `" is not 64 lowercase hex characters
p.hcl:3:86: policy "web": ek_hashes[1] "abc" is not 64 lowercase hex characters
p.hcl:3:161: policy "web": ek_hashes[3] must be a string
p.hcl:4:18: policy "web": ek_cas[0] cannot be empty`,
		},
		{
			name: "CEL errors at the position of their string",
			src: `policy "web" {
  select { ek_cas = ["swtpm"] }
  require = [
    "ek.certified",
    "foo == 1",
      "pcrs.sha256[7] == 7",
    "pcrs.sha256[7] ==",
    "ek.hash",
    "tpm.clock",
  ]
}`,
			wantErr: `p.hcl:5:5: policy "web": require[1] at expression 1:1: undeclared reference to 'foo' (in container '')
p.hcl:6:7: policy "web": require[2] at expression 1:16: found no matching overload for '_==_' applied to '(string, int)'
p.hcl:7:5: policy "web": require[3] at expression 1:18: syntax error: mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}
p.hcl:9:5: policy "web": require[5] must be a bool expression, not int`,
		},
		{
			name: "require is not a list of strings",
			src: `policy "web" {
  select { ek_cas = ["swtpm"] }
  require = "ek.certified"
}
policy "db" {
  select { ek_cas = ["swtpm"] }
  require = [true]
}`,
			wantErr: `p.hcl:3:13: policy "web": require must be a list
p.hcl:7:14: policy "db": require[0] must be a string`,
		},
		{
			name:    "missing type",
			src:     withRelease(`    common_name = "a"`),
			wantErr: `p.hcl:3:3: policy "web": release "tls": type is required; use "tls_certificate", "x509_svid", "vault_kv", "vault_pki", "vault_token" or "kubelet"`,
		},
		{
			name: "unknown type, mode and bank",
			src: withRelease(`    type        = "ssh_key"
    mode        = "sealed"
    pcr_bank    = "sha1"
    common_name = "a"`),
			wantErr: `p.hcl:4:19: policy "web": release "tls": type "ssh_key" is not supported; use "tls_certificate", "x509_svid", "vault_kv", "vault_pki", "vault_token" or "kubelet"
p.hcl:5:19: policy "web": release "tls": mode "sealed" is not supported; use "tpm_bound", "pcr_sealed" or "tpm_resident"
p.hcl:6:19: policy "web": release "tls": pcr_bank "sha1" is not supported; use "sha256", "sha384" or "sha512"`,
		},
		{
			name: "tpm_resident on a release that is not a tls_certificate, with PCRs",
			src: withRelease(`    type        = "vault_kv"
    mode        = "tpm_resident"
    pcrs        = [7]
    path        = "secret/data/web"`),
			wantErr: `p.hcl:5:19: policy "web": release "tls": mode "tpm_resident" is only supported for type "tls_certificate" or "x509_svid"
p.hcl:6:5: policy "web": release "tls": pcrs with mode "tpm_resident" is only supported for type "x509_svid" (OpenSSL's tpm2 provider cannot use a PCR-bound key)`,
		},
		{
			name: "PCRs with tpm_bound",
			src: withRelease(`    type        = "tls_certificate"
    pcr_bank    = "sha256"
    pcrs        = [7]
    common_name = "a"`),
			wantErr: `p.hcl:5:5: policy "web": release "tls": pcr_bank is only allowed with mode "pcr_sealed"
p.hcl:6:5: policy "web": release "tls": pcrs is only allowed with mode "pcr_sealed"`,
		},
		{
			name: "pcr_sealed without PCRs",
			src: withRelease(`    type        = "tls_certificate"
    mode        = "pcr_sealed"
    common_name = "a"`),
			wantErr: `p.hcl:3:3: policy "web": release "tls": pcrs is required with mode "pcr_sealed"`,
		},
		{
			name: "pcr_sealed with an empty PCR list",
			src: withRelease(`    type        = "tls_certificate"
    mode        = "pcr_sealed"
    pcrs        = []
    common_name = "a"`),
			wantErr: `p.hcl:6:19: policy "web": release "tls": pcrs cannot be empty with mode "pcr_sealed"`,
		},
		{
			name: "bad PCR indices",
			src: withRelease(`    type        = "tls_certificate"
    mode        = "pcr_sealed"
    pcrs        = [0, 24, -1, 1.5, 0, "7"]
    common_name = "a"`),
			wantErr: `p.hcl:6:23: policy "web": release "tls": pcrs[1] 24 is not a PCR index 0..23
p.hcl:6:27: policy "web": release "tls": pcrs[2] -1 is not a PCR index 0..23
p.hcl:6:31: policy "web": release "tls": pcrs[3] 1.5 is not a PCR index 0..23
p.hcl:6:36: policy "web": release "tls": pcrs[4] 0 is listed twice
p.hcl:6:39: policy "web": release "tls": pcrs[5] must be a number`,
		},
		{
			name: "pcr_sealed to software-resettable PCRs",
			src: withRelease(`    type        = "tls_certificate"
    mode        = "pcr_sealed"
    pcrs        = [7, 16, 23]
    common_name = "a"`),
			wantErr: `p.hcl:6:23: policy "web": release "tls": pcrs[1]: PCR 16 can be reset by software at locality 0 and cannot bind a key or a secret
p.hcl:6:27: policy "web": release "tls": pcrs[2]: PCR 23 can be reset by software at locality 0 and cannot bind a key or a secret`,
		},
		{
			name: "tpm_resident key bound to a software-resettable PCR",
			src: withRelease(`    type      = "x509_svid"
    mode      = "tpm_resident"
    pcrs      = [23]
    spiffe_id = "spiffe://example.org/node"`),
			wantErr: `p.hcl:6:18: policy "web": release "tls": pcrs[0]: PCR 23 can be reset by software at locality 0 and cannot bind a key or a secret`,
		},
		{
			name: "bad ttl",
			src: withRelease(`    type        = "tls_certificate"
    ttl         = "1d"
    common_name = "a"
  }
  release "b" {
    type        = "tls_certificate"
    ttl         = "8761h"
    common_name = "a"
  }
  release "c" {
    type        = "tls_certificate"
    ttl         = "-5m"
    common_name = "a"`),
			wantErr: `p.hcl:5:19: policy "web": release "tls": ttl "1d" is not a duration such as "24h"
p.hcl:10:19: policy "web": release "b": ttl "8761h" exceeds the maximum of 8760h
p.hcl:15:19: policy "web": release "c": ttl "-5m" must be positive`,
		},
		{
			name: "bad templates",
			src: withRelease(`    type         = "tls_certificate"
    common_name  = "node-${ek_hash_shrt}"
    dns_names    = ["${upper(ek_hash)}.example.com", "${ek_hash.x}", 5]
    ip_addresses = ["10.0.0.256", "${ek_ca}"]`),
			wantErr: `p.hcl:5:28: policy "web": release "tls": common_name: unknown template variable "ek_hash_shrt"; use ek_hash, ek_hash_short, ek_ca
p.hcl:6:21: policy "web": release "tls": dns_names[0]: function calls not allowed: functions may not be called here
p.hcl:6:54: policy "web": release "tls": dns_names[1]: unsupported attribute: can't access attributes on a primitive-typed value (string)
p.hcl:6:70: policy "web": release "tls": dns_names[2]: must be a string
p.hcl:7:21: policy "web": release "tls": ip_addresses[0] "10.0.0.256" is not an IP address`,
		},
		{
			name:    "release names nothing",
			src:     withRelease(`    type = "tls_certificate"`),
			wantErr: `p.hcl:3:3: policy "web": release "tls": a tls_certificate needs a common_name, dns_names or ip_addresses`,
		},
		{
			name: "duplicate names",
			src: `policy "web" {
  select { ek_cas = ["swtpm"] }
  release "tls" {
    type        = "tls_certificate"
    common_name = "a"
  }
}
policy "db" {
  select { ek_cas = ["swtpm"] }
  release "tls" {
    type        = "tls_certificate"
    common_name = "b"
  }
}
policy "web" {
  select { ek_cas = ["swtpm"] }
}`,
			wantErr: `p.hcl:10:11: policy "db": release "tls" is already defined at p.hcl:3:11
p.hcl:15:8: policy "web" is already defined at p.hcl:1:8`,
		},
		{
			name: "x509_svid and workload entries",
			src: `policy "web" {
  select { ek_cas = ["swtpm"] }
  release "node-svid" {
    type      = "x509_svid"
    mode      = "pcr_sealed"
    pcrs      = [0, 7]
    ttl       = "168h"
    spiffe_id = "spiffe://example.org/node/${ek_ca}/${ek_hash_short}"
  }
  workload "web" {
    spiffe_id = "spiffe://example.org/web"
    selectors = ["unix:uid:1000", "unix:path:/usr/bin/web", "unix:sha256:` + hash64 + `", "unix:gid:0"]
    ttl       = "1h"
  }
  workload "web-default-ttl" {
    spiffe_id = "spiffe://example.org/web"
    selectors = ["unix:uid:1001"]
  }
}`,
		},
		{
			name: "valid vault releases",
			src: `policy "web" {
  select { ek_cas = ["swtpm"] }
  release "db" {
    type = "vault_kv"
    path = "secret/data/nodes/${ek_hash_short}"
    mode = "pcr_sealed"
    pcrs = [7]
  }
  release "tls" {
    type        = "vault_pki"
    path        = "pki/issue/nodes"
    common_name = "${ek_hash_short}.nodes.example.com"
    ttl         = "1h"
  }
}`,
		},
		{
			name: "bad vault releases",
			src: `policy "web" {
  select { ek_cas = ["swtpm"] }
  release "no-path" {
    type = "vault_kv"
  }
  release "kv-v1" {
    type        = "vault_kv"
    path        = "secret/nodes/a"
    ttl         = "1h"
    common_name = "a"
  }
  release "pki-template" {
    type        = "vault_pki"
    path        = "pki/issue/${ek_hash}"
    common_name = "a"
  }
  release "pki-sign" {
    type = "vault_pki"
    path = "pki/sign/nodes"
  }
  release "tls-path" {
    type        = "tls_certificate"
    path        = "secret/data/a"
    common_name = "a"
  }
  release "bad-var" {
    type = "vault_kv"
    path = "secret/data/${nope}"
  }
}`,
			wantErr: `p.hcl:3:3: policy "web": release "no-path": a vault_kv needs a path
p.hcl:8:19: policy "web": release "kv-v1": path "secret/nodes/a" is not a KV version 2 data path such as "secret/data/<key>"
p.hcl:9:5: policy "web": release "kv-v1": ttl is not allowed with type "vault_kv": the secret has no validity of its own
p.hcl:10:5: policy "web": release "kv-v1": common_name is not allowed with type "vault_kv"
p.hcl:14:19: policy "web": release "pki-template": path: a vault_pki path cannot use template variables
p.hcl:17:3: policy "web": release "pki-sign": a vault_pki needs a common_name, dns_names or ip_addresses
p.hcl:19:12: policy "web": release "pki-sign": path "pki/sign/nodes" is not a PKI issue path such as "pki/issue/<role>"
p.hcl:23:5: policy "web": release "tls-path": path is only allowed with type "vault_kv" or "vault_pki"
p.hcl:28:27: policy "web": release "bad-var": path: unknown template variable "nope"; use ek_hash, ek_hash_short, ek_ca`,
		},
		{
			name: "bad x509_svid releases",
			src: withRelease(`    type        = "x509_svid"
    ttl         = "169h"
    common_name = "a"
    dns_names   = []
  }
  release "no-id" {
    type = "x509_svid"
  }
  release "not-an-id" {
    type      = "x509_svid"
    spiffe_id = "https://example.org/node"
  }
  release "bad-template" {
    type      = "x509_svid"
    spiffe_id = "spiffe://example.org/${ek_hash}/${nope}"
  }
  release "renders-badly" {
    type      = "x509_svid"
    spiffe_id = "spiffe://${ek_ca}.Example.org/node"
  }
  release "tls-with-id" {
    type        = "tls_certificate"
    common_name = "a"
    spiffe_id   = "spiffe://example.org/node"`),
			wantErr: `p.hcl:3:3: policy "web": release "tls": an x509_svid needs a spiffe_id
p.hcl:5:19: policy "web": release "tls": ttl "169h" exceeds the maximum of 168h for an x509_svid
p.hcl:6:5: policy "web": release "tls": common_name is only allowed with type "tls_certificate" or "vault_pki"
p.hcl:7:5: policy "web": release "tls": dns_names is only allowed with type "tls_certificate" or "vault_pki"
p.hcl:9:3: policy "web": release "no-id": an x509_svid needs a spiffe_id
p.hcl:14:17: policy "web": release "not-an-id": spiffe_id "https://example.org/node" is not a SPIFFE ID: scheme is missing or invalid
p.hcl:18:52: policy "web": release "bad-template": spiffe_id: unknown template variable "nope"; use ek_hash, ek_hash_short, ek_ca
p.hcl:22:17: policy "web": release "renders-badly": spiffe_id renders to "spiffe://ca.Example.org/node" for a sample node, which is not a SPIFFE ID: trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores
p.hcl:27:5: policy "web": release "tls-with-id": spiffe_id is only allowed with type "x509_svid"`,
		},
		{
			name: "bad workload entries",
			src: `policy "web" {
  select { ek_cas = ["swtpm"] }
  workload "no-selectors" {
    spiffe_id = "spiffe://example.org/web"
  }
  workload "empty-selectors" {
    spiffe_id = "spiffe://example.org/web"
    selectors = []
  }
  workload "bad-selectors" {
    spiffe_id = "example.org/web"
    selectors = ["unix:uid:1000", "k8s:ns:default", "uid:1000", "unix:uid:-1", "unix:path:relative/bin", "unix:path:/usr/../bin", "unix:sha256:ABCD", "unix:pid:1", "unix:uid:1000", 7]
    ttl       = "169h"
  }
  workload "" {
    selectors = ["unix:gid:0"]
    ttl       = "0s"
  }
  workload "subsecond" {
    spiffe_id = "spiffe://example.org/web"
    selectors = ["unix:gid:0"]
    ttl       = "1500ms"
  }
}`,
			wantErr: `p.hcl:3:3: policy "web": workload "no-selectors": selectors is required: an entry without selectors would match every process
p.hcl:8:17: policy "web": workload "empty-selectors": selectors cannot be empty: an entry without selectors would match every process
p.hcl:11:17: policy "web": workload "bad-selectors": spiffe_id "example.org/web" is not a SPIFFE ID: scheme is missing or invalid
p.hcl:12:35: policy "web": workload "bad-selectors": selectors[1] "k8s:ns:default" has an unknown selector type "k8s"; use "signed" or "unix"
p.hcl:12:53: policy "web": workload "bad-selectors": selectors[2] "uid:1000" has an unknown selector type "uid"; use "signed" or "unix"
p.hcl:12:65: policy "web": workload "bad-selectors": selectors[3] "unix:uid:-1": uid must be a decimal number below 2^32
p.hcl:12:80: policy "web": workload "bad-selectors": selectors[4] "unix:path:relative/bin": path must be absolute and clean
p.hcl:12:106: policy "web": workload "bad-selectors": selectors[5] "unix:path:/usr/../bin": path must be absolute and clean
p.hcl:12:131: policy "web": workload "bad-selectors": selectors[6] "unix:sha256:ABCD": sha256 must be 64 lowercase hex digits
p.hcl:12:151: policy "web": workload "bad-selectors": selectors[7] "unix:pid:1": unknown unix selector "pid"; use uid, gid, path or sha256
p.hcl:12:165: policy "web": workload "bad-selectors": selectors[8] "unix:uid:1000" is listed twice
p.hcl:12:182: policy "web": workload "bad-selectors": selectors[9] must be a string
p.hcl:13:17: policy "web": workload "bad-selectors": ttl "169h" exceeds the maximum of 168h for a workload entry
p.hcl:15:3: policy "web": workload "": spiffe_id is required
p.hcl:15:12: policy "web": workload name cannot be empty
p.hcl:17:17: policy "web": workload "": ttl "0s" must be positive
p.hcl:22:17: policy "web": workload "subsecond": ttl "1.5s" must be a whole number of seconds`,
		},
		{
			name: "duplicate workload names and too many selectors",
			src: `policy "web" {
  select { ek_cas = ["swtpm"] }
  workload "w" {
    spiffe_id = "spiffe://example.org/web"
    selectors = ["unix:uid:1"]
  }
}
policy "db" {
  select { ek_cas = ["swtpm"] }
  workload "w" {
    spiffe_id = "spiffe://example.org/db"
    selectors = ["unix:uid:0", "unix:uid:1", "unix:uid:2", "unix:uid:3", "unix:uid:4", "unix:uid:5", "unix:uid:6", "unix:uid:7", "unix:uid:8", "unix:uid:9", "unix:uid:10", "unix:uid:11", "unix:uid:12", "unix:uid:13", "unix:uid:14", "unix:uid:15", "unix:uid:16"]
  }
}`,
			wantErr: `p.hcl:10:12: policy "db": workload "w" is already defined at p.hcl:3:12
p.hcl:12:17: policy "db": workload "w": 17 selectors, at most 16 allowed`,
		},
		{
			name: "every problem is reported together",
			src: `policy "web" {
  select {}
  require = ["nope"]
  release "tls" {
    type = "tls_certificate"
    mode = "pcr_sealed"
    pcrs = [99]
    ttl  = "forever"
    common_name = "${nope}"
  }
}
policy "" {
  select { ek_hashes = ["x"] }
}`,
			wantErr: `p.hcl:2:3: policy "web": select lists no ek_hashes, ek_cas or labels; a policy must select something
p.hcl:3:14: policy "web": require[0] at expression 1:1: undeclared reference to 'nope' (in container '')
p.hcl:7:13: policy "web": release "tls": pcrs[0] 99 is not a PCR index 0..23
p.hcl:8:12: policy "web": release "tls": ttl "forever" is not a duration such as "24h"
p.hcl:9:22: policy "web": release "tls": common_name: unknown template variable "nope"; use ek_hash, ek_hash_short, ek_ca
p.hcl:12:8: policy name cannot be empty
p.hcl:13:25: policy "": ek_hashes[0] "x" is not 64 lowercase hex characters`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := policies.Parse([]byte(tt.src), "p.hcl")
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("Parse succeeded, want error:\n%s", tt.wantErr)
				}
				if err.Error() != tt.wantErr {
					t.Fatalf("Parse error:\n%s\nwant:\n%s", err, tt.wantErr)
				}
				if s != nil {
					t.Errorf("Parse returned a Set with an error")
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if len(s.Hash()) != 64 {
				t.Errorf("Hash = %q, want 64 hex characters", s.Hash())
			}
		})
	}
}

func TestParseNamesAndHash(t *testing.T) {
	src := `policy "web" {
  select { ek_cas = ["swtpm"] }
}
policy "api" {
  select { ek_cas = ["swtpm"] }
}`
	a := mustParse(t, src)
	if got, want := a.Names(), []string{"api", "web"}; !slices.Equal(got, want) {
		t.Errorf("Names = %q, want %q", got, want)
	}
	if b := mustParse(t, src); b.Hash() != a.Hash() {
		t.Errorf("Hash is not stable: %s, then %s", a.Hash(), b.Hash())
	}
	if c := mustParse(t, src+"\n"); c.Hash() == a.Hash() {
		t.Errorf("Hash did not change with the source")
	}
}

func TestLoad(t *testing.T) {
	dir := filepath.Join("testdata", "policies")
	web, db, mesh := filepath.Join(dir, "web.hcl"), filepath.Join(dir, "db.hcl"), filepath.Join(dir, "mesh.hcl")

	s, err := policies.Load(dir)
	if err != nil {
		t.Fatalf("Load(%s): %v", dir, err)
	}
	if got, want := s.Names(), []string{"db", "mesh", "web"}; !slices.Equal(got, want) {
		t.Errorf("Names = %q, want %q", got, want)
	}
	files, err := policies.Load(web, mesh, db)
	if err != nil {
		t.Fatalf("Load(files): %v", err)
	}
	if files.Hash() != s.Hash() {
		t.Errorf("Load(web, mesh, db).Hash() = %s, want Load(dir).Hash() = %s", files.Hash(), s.Hash())
	}
	one, err := policies.Load(web)
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(web)
	if err != nil {
		t.Fatal(err)
	}
	if parsed := mustParse(t, string(src)); parsed.Hash() != one.Hash() {
		t.Errorf("Parse and Load hash the same document differently")
	}
	if one.Hash() == s.Hash() {
		t.Errorf("Hash does not depend on every document")
	}

	tmp := t.TempDir()
	write := func(name, content string) string {
		t.Helper()
		p := filepath.Join(tmp, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	dup := write("dup.hcl", "\n"+`policy "web" {
  select { ek_cas = ["x"] }
}`)
	bad := write("bad.hcl", `policy "bad" {
  select { ek_cas = ["x"] }
  require = ["nope"]
}`)
	emptyDir := filepath.Join(tmp, "empty")
	if err := os.Mkdir(emptyDir, 0o700); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		paths   []string
		wantErr []string // lines of the error
	}{
		{
			name:    "no paths",
			wantErr: []string{"no policy paths given"},
		},
		{
			name:    "missing file",
			paths:   []string{filepath.Join(tmp, "missing.hcl")},
			wantErr: []string{"unable to read policies: stat " + filepath.Join(tmp, "missing.hcl") + ": no such file or directory"},
		},
		{
			name:    "directory without policies",
			paths:   []string{emptyDir},
			wantErr: []string{"no *.hcl policy files in " + emptyDir},
		},
		{
			name:  "duplicate across files and errors in another, together",
			paths: []string{web, bad, dup},
			wantErr: []string{
				bad + `:3:14: policy "bad": require[0] at expression 1:1: undeclared reference to 'nope' (in container '')`,
				dup + `:2:8: policy "web" is already defined at ` + web + `:3:8`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := policies.Load(tt.paths...)
			if err == nil {
				t.Fatalf("Load succeeded with %q", s.Names())
			}
			if got := strings.Split(err.Error(), "\n"); !slices.Equal(got, tt.wantErr) {
				t.Errorf("Load error:\n%s\nwant:\n%s", err, strings.Join(tt.wantErr, "\n"))
			}
		})
	}
}

func TestFactNames(t *testing.T) {
	names := policies.FactNames()
	for _, want := range []string{"ek.hash", "ek.ca", "ek.certified", "pcrs.sha256", "tpm.reset_count", "tpm.firmware_version"} {
		if !slices.Contains(names, want) {
			t.Errorf("FactNames lacks %s", want)
		}
	}
	names[0] = "changed"
	if policies.FactNames()[0] == "changed" {
		t.Errorf("FactNames returns shared state")
	}
}

func TestParseTooManyWorkloadEntries(t *testing.T) {
	var b strings.Builder
	for i := range policies.MaxWorkloadEntries + 1 {
		fmt.Fprintf(&b, "policy \"p%d\" {\n  select { ek_cas = [\"swtpm\"] }\n  workload \"w%d\" {\n    spiffe_id = \"spiffe://example.org/w\"\n    selectors = [\"unix:uid:%d\"]\n  }\n}\n", i, i, i)
	}
	_, err := policies.Parse([]byte(b.String()), "p.hcl")
	want := fmt.Sprintf("p.hcl:%d:12: more than 256 workload entries; a policy set may define at most 256", 7*policies.MaxWorkloadEntries+3)
	if err == nil || err.Error() != want {
		t.Fatalf("Parse error = %v; want %q", err, want)
	}
}
