package broker_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/brokertest"
	"github.com/keybroker/keybroker/internal/fakevaultsource"
	"github.com/keybroker/keybroker/policies"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// vaultPolicy allows the node (%s: its EK hash) a vault_kv and a vault_pki
// release, next to brokertest's tls_certificate.
const vaultPolicy = `
policy "vault" {
  select { ek_hashes = ["%s"] }
  release "db" {
    type = "vault_kv"
    path = "secret/data/nodes/${ek_hash_short}"
  }
  release "vault-tls" {
    type        = "vault_pki"
    path        = "pki/issue/nodes"
    common_name = "node.example.com"
    ttl         = "1h"
  }
}
`

// vaultFixture is a broker whose policies release from fake (nil: the
// broker has no vault block).
func vaultFixture(t *testing.T, fake *fakevaultsource.Fake) *fixture {
	t.Helper()
	f := newFixture(t, brokertest.Opts{Mode: "tpm_bound", Server: func(o *broker.ServerOpts) {
		if fake != nil {
			o.Vault = fake.Client(t)
		}
	}})
	pol, err := policies.Parse([]byte(f.PolicySource+fmt.Sprintf(vaultPolicy, f.EKHash)), "test.hcl")
	if err != nil {
		t.Fatal(err)
	}
	f.Server.SetPolicies(pol)
	return f
}

func TestAttestReleasesFromVault(t *testing.T) {
	fake := fakevaultsource.New(t)
	f := vaultFixture(t, fake)
	resp, err := attestOnce(t, f.Env)
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	byName := map[string]*pb.Credential{}
	for _, c := range resp.GetCredentials() {
		byName[c.GetName()] = c
	}
	if len(byName) != 3 || byName["db"].GetType() != pb.CredentialType_SECRET || byName["vault-tls"].GetType() != pb.CredentialType_TLS_CERTIFICATE {
		t.Fatalf("credentials = %v", resp.GetCredentials())
	}
	payload, err := f.Node.Open(byName["db"])
	if err != nil {
		t.Fatal(err)
	}
	var sc pb.SecretCredential
	if err := proto.Unmarshal(payload, &sc); err != nil {
		t.Fatal(err)
	}
	wantPath := "secret/data/nodes/" + f.EKHash[:16]
	if sc.GetData()["password"] != "s3cret" || sc.GetData()["port"] != "5432" || sc.GetVersion() != 3 || sc.GetPath() != wantPath {
		t.Errorf("secret = %v", &sc)
	}
	payload, err = f.Node.Open(byName["vault-tls"])
	if err != nil {
		t.Fatal(err)
	}
	var tc pb.TLSCredential
	if err := proto.Unmarshal(payload, &tc); err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(tc.GetCertificatePem(), tc.GetKeyPem())
	if err != nil || pair.Leaf.Subject.CommonName != "node.example.com" || len(tc.GetChainPem()) == 0 {
		t.Errorf("vault TLS credential: %v %v", err, pair.Leaf)
	}
	r := f.Receipts(t)[0]
	serials := map[string]string{}
	for _, it := range r.Released {
		serials[it.Name] = it.Serial
	}
	if !r.Allowed || serials["vault-tls"] != "1234" || serials["db"] != "v3" {
		t.Errorf("receipt = allowed %v released %+v", r.Allowed, r.Released)
	}
}

// TestAttestRevokesUnreleasedVaultCertificate: when a release after a
// vault_pki one fails, the decision releases nothing and the certificate
// Vault issued for it is revoked, as the receipt says; a revocation Vault
// refuses is recorded too.
func TestAttestRevokesUnreleasedVaultCertificate(t *testing.T) {
	fake := fakevaultsource.New(t)
	f := newFixture(t, brokertest.Opts{Mode: "tpm_bound", Server: func(o *broker.ServerOpts) { o.Vault = fake.Client(t) }})
	// vault_pki first, then a vault_kv at a path the fake does not have.
	pol, err := policies.Parse([]byte(f.PolicySource+fmt.Sprintf(`
policy "vault" {
  select { ek_hashes = ["%s"] }
  release "a-tls" {
    type        = "vault_pki"
    path        = "pki/issue/nodes"
    common_name = "node.example.com"
  }
  release "b-db" {
    type = "vault_kv"
    path = "other/data/missing"
  }
}
`, f.EKHash)), "test.hcl")
	if err != nil {
		t.Fatal(err)
	}
	f.Server.SetPolicies(pol)
	resp, err := attestOnce(t, f.Env)
	f.wantRefused(t, resp, err, codes.FailedPrecondition, "release: vault refused the broker (not found (404))", "release")
	if got := fake.Revoked(); len(got) != 1 || got[0] != "12:34" {
		t.Errorf("revoked = %v; want the issued certificate 12:34", got)
	}
	failures := strings.Join(f.Receipts(t)[0].Failures, "\n")
	if !strings.Contains(failures, `release "a-tls": certificate 1234 was issued but not released; revoked`) {
		t.Errorf("receipt failures = %q", failures)
	}

	fake.FailPath("pki/revoke", http.StatusForbidden)
	resp, err = attestOnce(t, f.Env)
	f.wantRefused(t, resp, err, codes.FailedPrecondition, "release: vault refused the broker (not found (404))", "release")
	failures = ""
	for _, r := range f.Receipts(t) {
		failures += strings.Join(r.Failures, "\n") + "\n"
	}
	if !strings.Contains(failures, `release "a-tls": certificate 1234 was issued but not released, and not revoked: pki revoke: permission denied (403)`) {
		t.Errorf("receipt failures = %q", failures)
	}
}

func TestAttestVaultFailuresReleaseNothing(t *testing.T) {
	tests := []struct {
		name   string
		break_ func(*fakevaultsource.Fake)
		code   codes.Code
		msg    string
	}{
		{"sealed", func(f *fakevaultsource.Fake) { f.Fail(http.StatusServiceUnavailable) }, codes.Unavailable, "release: vault unavailable (sealed or not active (503))"},
		{"permission denied", func(f *fakevaultsource.Fake) { f.Fail(http.StatusForbidden) }, codes.FailedPrecondition, "release: vault refused the broker (permission denied (403))"},
		{"server error", func(f *fakevaultsource.Fake) { f.Fail(http.StatusInternalServerError) }, codes.Unavailable, "release: vault unavailable (server error (500))"},
		{"unreachable", (*fakevaultsource.Fake).Stop, codes.Unavailable, "release: vault unavailable (unreachable)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fake := fakevaultsource.New(t)
			f := vaultFixture(t, fake)
			tc.break_(fake)
			resp, err := attestOnce(t, f.Env)
			f.wantRefused(t, resp, err, tc.code, tc.msg, "release")
			r := f.Receipts(t)[0]
			if r.DenyListed {
				t.Error("a Vault failure put the node on the deny list")
			}
			if len(r.Failures) == 0 || !strings.Contains(strings.Join(r.Failures, "\n"), `release "db"`) {
				t.Errorf("receipt failures = %q; want the failed release", r.Failures)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("refusal leaks the secret: %v", err)
			}
			// Once Vault answers again, the same node gets everything.
			if tc.name != "unreachable" {
				fake.Fail(0)
				if _, err := attestOnce(t, f.Env); err != nil {
					t.Errorf("Attest once Vault is back: %v", err)
				}
			}
		})
	}
	t.Run("no vault block", func(t *testing.T) {
		f := vaultFixture(t, nil)
		resp, err := attestOnce(t, f.Env)
		f.wantRefused(t, resp, err, codes.FailedPrecondition, "release: vault unavailable (not configured)", "release")
	})
}

// failingRecord is a store whose decisions cannot be recorded.
type failingRecord struct{ store.Backend }

func (failingRecord) Record(context.Context, *store.Decision) error {
	return errors.New("store unavailable")
}

// attestUnrecorded attests once to a broker whose store cannot record
// decisions and whose Vault is fake, under its policy and policy (%s: the
// node's EK hash), and requires the attestation refused as Unavailable
// with nothing released.
func attestUnrecorded(t *testing.T, fake *fakevaultsource.Fake, policy string) {
	t.Helper()
	f := newFixture(t, brokertest.Opts{Mode: "tpm_bound", Server: func(o *broker.ServerOpts) {
		o.Vault = fake.Client(t)
		o.Store = failingRecord{o.Store}
	}})
	pol, err := policies.Parse([]byte(f.PolicySource+fmt.Sprintf(policy, f.EKHash)), "test.hcl")
	if err != nil {
		t.Fatal(err)
	}
	f.Server.SetPolicies(pol)
	resp, err := attestOnce(t, f.Env)
	if resp != nil || status.Code(err) != codes.Unavailable {
		t.Fatalf("Attest with a store that cannot record = %v, %v; want Unavailable and nothing released", resp, err)
	}
}

// When the decision cannot be recorded, nothing is released, and the
// certificate Vault issued for it is revoked.
func TestAttestRevokesVaultCertificateWhenNotRecorded(t *testing.T) {
	fake := fakevaultsource.New(t)
	attestUnrecorded(t, fake, vaultPolicy)
	if got := fake.Revoked(); len(got) != 1 {
		t.Errorf("revoked = %v; want the certificate Vault issued for the unrecorded decision", got)
	}
}

// When the decision cannot be recorded, the token a vault_token release
// had Vault create is revoked by its accessor: no token exists for a
// decision that released nothing.
func TestAttestRevokesVaultTokenWhenNotRecorded(t *testing.T) {
	fake := fakevaultsource.New(t)
	attestUnrecorded(t, fake, `
policy "vault" {
  select { ek_hashes = ["%s"] }
  release "vault" {
    type       = "vault_token"
    token_role = "nodes"
    ttl        = "1h"
  }
}
`)
	created, revoked := fake.Tokens(), fake.RevokedAccessors()
	if len(created) != 1 || len(revoked) != 1 || revoked[0] != created[0].Accessor {
		t.Errorf("created %+v, revoked %v; want the one token revoked", created, revoked)
	}
}
