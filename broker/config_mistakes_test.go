package broker_test

import (
	"strings"
	"testing"

	"github.com/keybroker/keybroker/broker"
)

// TestLoadConfigReportsEveryMistake loads testdata/mistakes/broker.hcl,
// which has a dozen mistakes, and expects each of them in one error, one
// line each at its file:line:column: HCL's own (an unknown attribute, a
// value of the wrong type) and the configuration's (durations, PCR banks,
// EK hashes, EK CA files, the spiffe and vault blocks).
func TestLoadConfigReportsEveryMistake(t *testing.T) {
	const file = "testdata/mistakes/broker.hcl"
	want := []string{
		file + `:3:1: unsupported argument: an argument named "listne" is not expected here. Did you mean "listen"?`,
		file + `:5:18: allow_sha1: unsuitable value type: unsuitable value: a bool is required`,
		file + `:6:17: challenge_ttl "forever" is not a duration such as "60s"`,
		file + `:7:18: pcr_banks: sha1 needs allow_sha1`,
		file + `:7:26: pcr_banks: "sha3" is not sha1, sha256, sha384 or sha512`,
		file + `:9:24: policy_poll_interval must be 0 (disabled) or at least 100ms`,
		file + `:10:18: ek_allow entry "ABC" is not a lowercase hex SHA-256 EK hash`,
		file + `:13:20: ek_ca "vendor" roots: unable to read missing.pem: stat testdata/mistakes/missing.pem: no such file or directory`,
		file + `:13:35: ek_ca "vendor" roots: not-a-cert.pem: holds no PEM certificate`,
		file + `:14:20: ek_ca "vendor" intermediates: an entry cannot be empty`,
		file + `:18:18: spiffe: trust_domain must be a name such as "example.org", not "spiffe://example.org"`,
		file + `:21:1: vault: set token_file or an approle block`,
		file + `:22:13: vault: address "http://vault.example.com:8200" must use https: the broker sends its token and receives secrets`,
		file + `:23:13: vault: ca_cert not-a-cert.pem: holds no PEM certificate`,
	}
	cfg, err := broker.LoadConfig(file)
	if err == nil {
		t.Fatalf("LoadConfig accepted a configuration full of mistakes: %+v", cfg)
	}
	got := strings.Split(err.Error(), "\n")
	for i := 0; i < max(len(got), len(want)); i++ {
		switch {
		case i >= len(got):
			t.Errorf("missing line %d: %s", i+1, want[i])
		case i >= len(want):
			t.Errorf("unexpected line %d: %s", i+1, got[i])
		case got[i] != want[i]:
			t.Errorf("line %d:\n got: %s\nwant: %s", i+1, got[i], want[i])
		}
	}
}

// TestLoadConfigReportsHCLDiagnostics: every HCL diagnostic is listed, none
// summarized as "and N other diagnostic(s)", each at its position.
func TestLoadConfigReportsHCLDiagnostics(t *testing.T) {
	src := `data_dir = "d"
policies = ["p"]
ek_allow = "` + strings.Repeat("ab", 32) + `"
lisen = "127.0.0.1:1"
server_names = "localhost"
allow_sha1 = "no"
ek_ca {
  roots = ["r.pem"]
}
spiffe {
  domain = "example.org"
}
`
	_, err := broker.ParseConfig([]byte(src), "broker.hcl")
	if err == nil {
		t.Fatal("ParseConfig succeeded")
	}
	want := []string{
		`broker.hcl:3:13: ek_allow: unsuitable value type: unsuitable value: list of string required, but have string`,
		`broker.hcl:4:1: unsupported argument: an argument named "lisen" is not expected here. Did you mean "listen"?`,
		`broker.hcl:5:17: server_names: unsuitable value type: unsuitable value: list of string required, but have string`,
		`broker.hcl:6:15: allow_sha1: unsuitable value type: unsuitable value: a bool is required`,
		`broker.hcl:7:7: missing name for ek_ca: all ek_ca blocks must have 1 labels (name)`,
		`broker.hcl:10:8: missing required argument: the argument "trust_domain" is required, but no definition was found`,
		`broker.hcl:11:3: unsupported argument: an argument named "domain" is not expected here`,
	}
	if got := err.Error(); got != strings.Join(want, "\n") {
		t.Errorf("ParseConfig:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
	if strings.Contains(err.Error(), "other diagnostic") {
		t.Error("diagnostics were summarized")
	}
}
