package release_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/broker/release"
	"github.com/keybroker/keybroker/internal/fakevaultsource"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// tokenPolicy releases to the node of ekHash a vault_token "a-token"
// (with the extra lines given) and then what more holds.
func tokenPolicy(ekHash, extra, more string) string {
	return fmt.Sprintf(`policy "vault" {
  select {
    ek_hashes = [%q]
  }
  release "a-token" {
    type       = "vault_token"
    token_role = "nodes"
    policies   = ["node-read"]
    ttl        = "1h"%s
  }
%s}
`, ekHash, extra, more)
}

// A vault_token release has the token role create a token bounded by the
// release's ttl (explicit_max_ttl), its metadata naming the EK hash and
// the receipt; the node opens the token in its TPM, and the receipt's item
// holds the accessor, never the token.
func TestReleaseVaultToken(t *testing.T) {
	n := newSimNode(t)
	fake := fakevaultsource.New(t)
	fake.RoleMaxTTL = time.Hour // bounds renewals
	r := newReleaser(t, release.Opts{Vault: fake.Client(t)})
	for _, tt := range []struct {
		name, extra     string
		ttl, explicit   string // asked of Vault
		renewable       bool
		wantDisplayName string
	}{
		{name: "fixed ttl", ttl: "3600s", explicit: "3600s"},
		{name: "period", extra: "\n    period = \"10m\"\n    display_name = \"node-${ek_hash_short}\"", ttl: "600s", explicit: "3600s", renewable: true,
			wantDisplayName: "node-" + n.verified.EKHash()[:16]},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := len(fake.Tokens())
			start := time.Now()
			out, err := r.Release(context.Background(), n.verified, n.decision(t, tokenPolicy(n.verified.EKHash(), tt.extra, "")), "20261205T120000.000000000Z-0123456789abcdef")
			if err != nil {
				t.Fatal(err)
			}
			created := fake.Tokens()[before:]
			if len(created) != 1 || created[0].Role != "nodes" {
				t.Fatalf("Vault created %+v; want one token of role nodes", created)
			}
			req := created[0].Request
			meta, _ := req["meta"].(map[string]any)
			wantMeta := map[string]any{release.TokenMetaEKHash: n.verified.EKHash(), release.TokenMetaReceiptID: "20261205T120000.000000000Z-0123456789abcdef", release.TokenMetaRelease: "a-token"}
			if fmt.Sprint(meta) != fmt.Sprint(wantMeta) {
				t.Errorf("token metadata %v, want %v", meta, wantMeta)
			}
			if req["ttl"] != tt.ttl || req["explicit_max_ttl"] != tt.explicit || req["renewable"] != tt.renewable ||
				fmt.Sprint(req["policies"]) != "[node-read]" || fmt.Sprint(req["display_name"]) != fmt.Sprint(orNil(tt.wantDisplayName)) {
				t.Errorf("token request %v", req)
			}
			if len(out.Credentials) != 1 || out.Credentials[0].GetType() != pb.CredentialType_VAULT_TOKEN {
				t.Fatalf("released %v", out.Credentials)
			}
			cred := out.Credentials[0]
			if na := time.Unix(cred.GetNotAfterUnix(), 0); na.Before(start.Add(time.Hour-2*time.Second)) || na.After(time.Now().Add(time.Hour)) {
				t.Errorf("credential not_after %v, want the ttl's end (1h)", na)
			}
			payload, err := n.node.Open(cred)
			if err != nil {
				t.Fatalf("the node cannot open its token: %v", err)
			}
			var tc pb.VaultTokenCredential
			if err := proto.Unmarshal(payload, &tc); err != nil {
				t.Fatal(err)
			}
			if tc.GetToken() != created[0].Token || tc.GetAccessor() != created[0].Accessor || tc.GetRenewable() != tt.renewable {
				t.Errorf("opened %v, want token and accessor of %+v", &tc, created[0])
			}
			item := out.Items[0]
			rec, _ := json.Marshal(out.Items)
			if item.Serial != created[0].Accessor || item.Type != "vault_token" || strings.Contains(string(rec), created[0].Token) {
				t.Errorf("receipt item %s; want the accessor %s and never the token", rec, created[0].Accessor)
			}
		})
	}
	if got := fake.RevokedAccessors(); len(got) != 0 {
		t.Errorf("revoked %v", got)
	}
}

func orNil(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// A decision whose token was created but that is not released whole — a
// later release fails, or the decision is not recorded (Unrelease) — has
// the token revoked by its accessor, and the receipt's notes say so
// without the token.
func TestVaultTokenRevokedUnreleased(t *testing.T) {
	n := newSimNode(t)
	fake := fakevaultsource.New(t)
	r := newReleaser(t, release.Opts{Vault: fake.Client(t)})
	failing := tokenPolicy(n.verified.EKHash(), "", `  release "b-db" {
    type = "vault_kv"
    path = "secret/data/db"
  }
`)

	t.Run("a later release fails", func(t *testing.T) {
		fake.FailPath("secret/", 404)
		defer fake.FailPath("", 0)
		before := len(fake.Tokens())
		out, err := r.Release(context.Background(), n.verified, n.decision(t, failing), "r1")
		var f *release.Failure
		if out != nil || !errors.As(err, &f) || f.Kind != release.KindVaultRefused {
			t.Fatalf("Release = %v, %v; want a vault refusal", out, err)
		}
		created := fake.Tokens()[before:]
		if len(created) != 1 {
			t.Fatalf("created %d tokens", len(created))
		}
		acc := created[0].Accessor
		if got := fake.RevokedAccessors(); !slices.Equal(got, []string{acc}) {
			t.Errorf("revoked %v, want [%s]", got, acc)
		}
		want := fmt.Sprintf(`release "a-token": token (accessor %s) was issued but not released; revoked`, acc)
		if !slices.Contains(f.Notes, want) || strings.Contains(strings.Join(f.Notes, "\n")+err.Error(), created[0].Token) {
			t.Errorf("notes %q; want %q and never the token", f.Notes, want)
		}
	})

	t.Run("not recorded", func(t *testing.T) {
		before, revoked := len(fake.Tokens()), len(fake.RevokedAccessors())
		out, err := r.Release(context.Background(), n.verified, n.decision(t, tokenPolicy(n.verified.EKHash(), "", "")), "r2")
		if err != nil {
			t.Fatal(err)
		}
		acc := fake.Tokens()[before].Accessor
		notes := r.Unrelease(context.Background(), out)
		if got := fake.RevokedAccessors()[revoked:]; !slices.Equal(got, []string{acc}) {
			t.Errorf("Unrelease revoked %v, want [%s]", got, acc)
		}
		if len(notes) != 1 || !strings.Contains(notes[0], acc) {
			t.Errorf("Unrelease notes %q", notes)
		}
	})
}

// A token whose lifetime Vault did not bound as asked (a TTL longer than
// the release's) is revoked at once and not released; a renewable token
// is not created from a role that does not bound its renewals; nothing is
// created when the broker has no vault block.
func TestVaultTokenUnbounded(t *testing.T) {
	n := newSimNode(t)
	fake := fakevaultsource.New(t)
	fake.TokenLease = 2 * time.Hour
	r := newReleaser(t, release.Opts{Vault: fake.Client(t)})
	d := n.decision(t, tokenPolicy(n.verified.EKHash(), "", ""))
	out, err := r.Release(context.Background(), n.verified, d, "r1")
	var f *release.Failure
	if out != nil || !errors.As(err, &f) || f.Kind != release.KindVaultRefused ||
		f.Msg != "release: vault refused the broker (the token's TTL 2h0m0s exceeds the 1h0m0s asked for; revoked)" {
		t.Fatalf("Release = %v, %v; want the unbounded token refused", out, err)
	}
	if created, revoked := fake.Tokens(), fake.RevokedAccessors(); len(created) != 1 || !slices.Equal(revoked, []string{created[0].Accessor}) {
		t.Errorf("created %+v, revoked %v; want the one token revoked", created, revoked)
	}

	// A renewable token (period) from a role that does not bound renewals
	// within the ttl: Vault would renew the token past it, so none is
	// created.
	fake.TokenLease = 0
	for _, roleMax := range []time.Duration{0, 2 * time.Hour} {
		fake.RoleMaxTTL = roleMax
		before := len(fake.Tokens())
		out, err = r.Release(context.Background(), n.verified, n.decision(t, tokenPolicy(n.verified.EKHash(), "\n    period = \"10m\"", "")), "r3")
		want := `release: vault refused the broker (token role "nodes" must set token_explicit_max_ttl, at most 1h0m0s, for renewable tokens: Vault bounds their renewals by the role's maximum)`
		if out != nil || !errors.As(err, &f) || f.Msg != want || len(fake.Tokens()) != before {
			t.Errorf("role max %v: Release = %v, %v, %d tokens created; want %q and none", roleMax, out, err, len(fake.Tokens())-before, want)
		}
	}

	noVault := newReleaser(t, release.Opts{})
	out, err = noVault.Release(context.Background(), n.verified, d, "r2")
	if out != nil || !errors.As(err, &f) || f.Kind != release.KindNoVault {
		t.Fatalf("Release without a vault = %v, %v; want KindNoVault", out, err)
	}
}
