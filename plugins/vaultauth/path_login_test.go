package vaultauth

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
	"github.com/keybroker/keybroker/broker/store"
)

// setup configures e to trust n by EK hash and adds role "web", which
// allows n in its current boot state (PCR 7) with token settings.
func setup(t *testing.T, e *env, n *node) {
	t.Helper()
	e.configure(map[string]any{"ek_allow": n.ekHash})
	e.write("role/web", map[string]any{
		"policy":         pcrPolicy(n.ekHash, n.pcr(7)),
		"token_policies": "web-secrets",
		"token_ttl":      "10m",
		"token_max_ttl":  "1h",
	})
}

func TestLogin(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	setup(t, e, n)

	resp, err := e.login(n, "web")
	if err != nil || resp.IsError() {
		t.Fatalf("login: %v %v", err, resp.Error())
	}
	auth := resp.Auth
	if auth == nil {
		t.Fatal("no auth")
	}
	if auth.Alias == nil || auth.Alias.Name != n.ekHash {
		t.Errorf("alias = %+v, want the EK hash %s", auth.Alias, n.ekHash)
	}
	wantMeta := map[string]string{
		"role": "web", "ek_hash": n.ekHash, "ek_ca": "", "ek_manufacturer": "", "attestation_policies": "boot",
		"policy_hash": auth.InternalData["policy_hash"].(string),
	}
	if fmt.Sprint(auth.Metadata) != fmt.Sprint(wantMeta) {
		t.Errorf("metadata = %v, want %v", auth.Metadata, wantMeta)
	}
	if !slices.Equal(auth.Policies, []string{"web-secrets"}) || auth.TTL != 10*time.Minute ||
		auth.MaxTTL != time.Hour || !auth.Renewable || auth.DisplayName != n.ekHash[:16] {
		t.Errorf("token settings = policies %v ttl %s max %s renewable %v name %q",
			auth.Policies, auth.TTL, auth.MaxTTL, auth.Renewable, auth.DisplayName)
	}
	if auth.InternalData["role"] != "web" || auth.InternalData["policy_hash"] == "" {
		t.Errorf("internal data = %v", auth.InternalData)
	}
	if resp.WrapInfo != nil {
		t.Errorf("response wrapped without response_wrap_ttl: %+v", resp.WrapInfo)
	}
	if keys, _ := e.storage.List(t.Context(), consumedPrefix); len(keys) != 1 {
		t.Errorf("challenge not used up: markers %v", keys)
	}
	rec, err := e.b.store(e.storage).GetNode(t.Context(), n.ekHash)
	if err != nil || rec.Clock == 0 || len(rec.AKName) == 0 || rec.FirstSeen.IsZero() {
		t.Errorf("node record = %+v, %v", rec, err)
	}

	// PCR banks may be named, and the role chosen case-insensitively.
	data := n.answer(e.challenge(n), "WEB")
	for _, q := range data["quotes"].([]any) {
		pcrs := q.(map[string]any)["pcrs"].(map[string]any)
		pcrs["hash_alg"] = map[int]string{0x0b: "sha256", 0x0c: "SHA384"}[pcrs["hash_alg"].(int)]
	}
	if resp, err := e.request(logical.UpdateOperation, "login", data); err != nil || resp.Auth == nil {
		t.Fatalf("login with bank names: %v %v", err, resp.Error())
	}
}

func TestLoginReplay(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	setup(t, e, n)
	data := n.answer(e.challenge(n), "web")
	if resp, err := e.request(logical.UpdateOperation, "login", data); err != nil || resp.Auth == nil {
		t.Fatalf("first login: %v %v", err, resp.Error())
	}
	resp, err := e.request(logical.UpdateOperation, "login", data)
	wantDenied(t, resp, err, "challenge: challenge is unknown or already used")
	// Also after a restart on the same storage.
	resp, err = e.restart().request(logical.UpdateOperation, "login", data)
	wantDenied(t, resp, err, "challenge: challenge is unknown or already used")
}

func TestLoginAcrossRestart(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	setup(t, e, n)
	// A challenge issued before a restart is answered after it.
	data := n.answer(e.challenge(n), "web")
	if resp, err := e.restart().request(logical.UpdateOperation, "login", data); err != nil || resp.Auth == nil {
		t.Fatalf("login after a restart: %v %v", err, resp.Error())
	}

	// The TPM counters of the last login persist too: a policy that
	// wants a node seen before denies a new one, then allows it.
	other := openNodeAfter(t, n)
	e.configure(map[string]any{"ek_allow": other.ekHash})
	e.write("role/returning", map[string]any{"policy": fmt.Sprintf(`policy "returning" {
  select { ek_hashes = [%q] }
  require = ["!history.first_seen", "!history.rebooted"]
}
`, other.ekHash)})
	resp, err := e.login(other, "returning")
	wantDenied(t, resp, err, msgPolicyDenied)
	e = e.restart()
	if resp, err := e.login(other, "returning"); err != nil || resp.Auth == nil {
		t.Fatalf("second login of a node: %v %v", err, resp.Error())
	}
}

// openNodeAfter closes n's simulator and opens another: one simulator runs
// at a time.
func openNodeAfter(t *testing.T, n *node) *node {
	t.Helper()
	n.close()
	return openNode(t, 0)
}

func TestLoginPCRMismatch(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	setup(t, e, n)
	pcr7 := n.pcr(7)
	n.extend(7)
	resp, err := e.login(n, "web")
	wantDenied(t, resp, err, msgPolicyDenied)
	if msg := resp.Error().Error(); strings.Contains(msg, pcr7) || strings.Contains(msg, "boot") || strings.Contains(msg, "require") {
		t.Errorf("the refusal reveals the policy: %q", msg)
	}
	if keys, _ := e.storage.List(t.Context(), consumedPrefix); len(keys) != 1 {
		t.Errorf("a refused login did not use its challenge up: markers %v", keys)
	}
}

func TestLoginConcurrentAnswersOneWins(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	setup(t, e, n)
	data := n.answer(e.challenge(n), "web")
	const tries = 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed, denied := 0, 0
	for range tries {
		wg.Go(func() {
			resp, err := e.request(logical.UpdateOperation, "login", data)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && resp.Auth != nil:
				allowed++
			case err == logical.ErrPermissionDenied && resp.Auth == nil:
				denied++
			default:
				t.Errorf("unexpected outcome: %v %v", resp, err)
			}
		})
	}
	wg.Wait()
	if allowed != 1 || denied != tries-1 {
		t.Errorf("%d allowed, %d denied; want 1 and %d", allowed, denied, tries-1)
	}
}

func TestLoginEKCertificate(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	root := newTestCA(t, "vendor root", nil)
	inter := newTestCA(t, "vendor intermediate", root)
	n.certificate = inter.issueEK(t, n.n.EK().PublicKey())
	e.configure(map[string]any{"ek_ca": map[string]any{"vendor": map[string]any{"roots": root.pem}}})
	e.write("role/fleet", map[string]any{"policy": `policy "fleet" {
  select { ek_cas = ["vendor"] }
  require = ["ek.certified", "ek.manufacturer == '` + testManufacturer + `'"]
}
`})
	// Without the intermediate the certificate does not chain.
	resp, err := e.request(logical.UpdateOperation, "challenge", n.challengeData())
	wantDenied(t, resp, err, "ek_trust: ek_certificate does not chain to a trusted EK CA")

	n.intermediates = [][]byte{inter.cert.Raw}
	resp, err = e.login(n, "fleet")
	if err != nil || resp.Auth == nil {
		t.Fatalf("login: %v %v", err, resp.Error())
	}
	if m := resp.Auth.Metadata; m["ek_ca"] != "vendor" || m["ek_manufacturer"] != testManufacturer || m["attestation_policies"] != "fleet" {
		t.Errorf("metadata = %v", m)
	}
	if m := resp.Auth.Alias.Metadata; m["ek_ca"] != "vendor" || m["ek_manufacturer"] != testManufacturer {
		t.Errorf("alias metadata = %v", m)
	}
}

func TestLoginResponseWrap(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	setup(t, e, n)
	e.write("role/web", map[string]any{"response_wrap_ttl": "30s"})
	resp, err := e.login(n, "web")
	if err != nil || resp.Auth == nil {
		t.Fatalf("login: %v %v", err, resp.Error())
	}
	// Vault core creates the token from Auth, then puts the whole
	// response in a cubbyhole and returns only the wrapping token.
	if resp.WrapInfo == nil || resp.WrapInfo.TTL != 30*time.Second {
		t.Errorf("wrap info = %+v, want a 30s TTL", resp.WrapInfo)
	}
}

func TestRenew(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	setup(t, e, n)
	resp, err := e.login(n, "web")
	if err != nil || resp.Auth == nil {
		t.Fatalf("login: %v %v", err, resp.Error())
	}
	auth := resp.Auth
	auth.TokenPolicies = auth.Policies // as Vault core stores them
	renew := func() (*logical.Response, error) {
		return e.b.HandleRequest(t.Context(), &logical.Request{
			Operation: logical.RenewOperation, Path: "login", Auth: auth, Storage: e.storage,
		})
	}
	e.write("role/web", map[string]any{"token_ttl": "20m", "token_max_ttl": "2h"})
	resp, err = renew()
	if err != nil || resp.Auth.TTL != 20*time.Minute || resp.Auth.MaxTTL != 2*time.Hour {
		t.Fatalf("renew = %v, %v; want the role's current TTLs", resp, err)
	}

	e.write("role/web", map[string]any{"token_policies": "other"})
	if _, err := renew(); err == nil || !strings.Contains(err.Error(), `token_policies of role "web" changed`) {
		t.Errorf("renew after token_policies changed: %v", err)
	}
	e.write("role/web", map[string]any{"token_policies": "web-secrets", "policy": pcrPolicy(n.ekHash, strings.Repeat("1", 64))})
	if _, err := renew(); err == nil || !strings.Contains(err.Error(), `the policy of role "web" changed`) {
		t.Errorf("renew after the policy changed: %v", err)
	}
	if _, err := e.request(logical.DeleteOperation, "role/web", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := renew(); err == nil || !strings.Contains(err.Error(), `role "web" no longer exists`) {
		t.Errorf("renew after the role was deleted: %v", err)
	}
}

func TestResolveRole(t *testing.T) {
	e := newEnv(t)
	e.write("role/web", map[string]any{"policy": rolePolicy})
	resp, err := e.request(logical.ResolveRoleOperation, "login", map[string]any{"role": "web"})
	if err != nil || resp.Data["role"] != "web" {
		t.Fatalf("resolve role = %v, %v", resp, err)
	}
	if resp, _ := e.request(logical.ResolveRoleOperation, "login", map[string]any{"role": "db"}); !resp.IsError() {
		t.Errorf("unknown role resolved: %v", resp)
	}
}

// TestPeriodicPurgesMarkers: the marker of a used challenge is kept until
// the challenge expires, and then deleted: an answer replayed after that
// is refused as expired.
func TestPeriodicPurgesMarkers(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	setup(t, e, n)
	first := n.answer(e.challenge(n), "web")
	if resp, err := e.request(logical.UpdateOperation, "login", first); err != nil || resp.Auth == nil {
		t.Fatalf("first login: %v %v", err, resp.Error())
	}
	e.clock.add(30 * time.Second)
	second := n.answer(e.challenge(n), "web")
	if resp, err := e.request(logical.UpdateOperation, "login", second); err != nil || resp.Auth == nil {
		t.Fatalf("second login: %v %v", err, resp.Error())
	}
	e.clock.add(29 * time.Second) // both challenges still valid: both markers stay
	if err := e.b.periodic(t.Context(), &logical.Request{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	if keys, _ := e.storage.List(t.Context(), consumedPrefix); len(keys) != 2 {
		t.Errorf("markers before expiry: %v, want 2", keys)
	}
	e.clock.add(2 * time.Second) // the first expired, the second has 29s left
	if err := e.b.periodic(t.Context(), &logical.Request{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	if keys, _ := e.storage.List(t.Context(), consumedPrefix); len(keys) != 2 {
		t.Errorf("markers just after the first expired: %v, want 2 (kept store.MarkerGrace past expiry)", keys)
	}
	resp, err := e.request(logical.UpdateOperation, "login", second)
	wantDenied(t, resp, err, "challenge: challenge is unknown or already used")
	e.clock.add(store.MarkerGrace) // the first expired MarkerGrace ago, the second not yet
	if err := e.b.periodic(t.Context(), &logical.Request{Storage: e.storage}); err != nil {
		t.Fatal(err)
	}
	if keys, _ := e.storage.List(t.Context(), consumedPrefix); len(keys) != 1 {
		t.Errorf("markers after purge: %v, want 1", keys)
	}
	resp, err = e.request(logical.UpdateOperation, "login", first)
	wantDenied(t, resp, err, "challenge: challenge has expired")
}

func TestLoginPCRBanks(t *testing.T) {
	e := newEnv(t)
	n := openNode(t, 0)
	setup(t, e, n)
	// The node quotes SHA-256 and SHA-384; only SHA-512 counts: refused.
	e.configure(map[string]any{"pcr_banks": "sha512"})
	resp, err := e.login(n, "web")
	wantDenied(t, resp, err, "pcr_bank: no quote of an allowed bank (sha512)")
	// SHA-256 counts: the role's sha256 PCR 7 requirement is met.
	e.configure(map[string]any{"pcr_banks": "sha256"})
	if resp, err := e.login(n, "web"); err != nil || resp.Auth == nil {
		t.Fatalf("login with pcr_banks=sha256: %v %v", err, resp.Error())
	}
	// Only SHA-384 counts: the policy sees no sha256 bank and denies.
	e.configure(map[string]any{"pcr_banks": "sha384"})
	resp, err = e.login(n, "web")
	wantDenied(t, resp, err, msgPolicyDenied)

	resp, err = e.request(logical.UpdateOperation, "config", map[string]any{"pcr_banks": "sha1,sha3"})
	if err != nil || !resp.IsError() || !strings.Contains(resp.Error().Error(), "pcr_banks: sha1 needs allow_sha1") ||
		!strings.Contains(resp.Error().Error(), `"sha3" is not sha1, sha256, sha384 or sha512`) {
		t.Errorf("config pcr_banks=sha1,sha3: %v %v", resp, err)
	}
	e.configure(map[string]any{"pcr_banks": ""})
	if resp, _ := e.request(logical.ReadOperation, "config", nil); len(resp.Data["pcr_banks"].([]string)) != 0 {
		t.Errorf("pcr_banks after reset = %v", resp.Data["pcr_banks"])
	}
}
