package agent_test

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/internal/brokertest"
	"github.com/keybroker/keybroker/internal/fakevault"
	"github.com/keybroker/keybroker/internal/tpmtest"
)

// vaultEnv is a node on the simulator, a broker Server that allows it, and
// a fake Vault in front of that server.
type vaultEnv struct {
	*brokertest.Env
	vault  *fakevault.Server
	client *vaultapi.Client
}

func newVaultEnv(t *testing.T, opts fakevault.Opts) *vaultEnv {
	t.Helper()
	env := brokertest.New(t, brokertest.Opts{})
	opts.Backend = env.Server
	fv := fakevault.Start(t, opts)
	c, err := agent.NewVaultClient(fv.URL, agent.VaultClientOpts{CAPEM: fv.CAPEM})
	if err != nil {
		t.Fatal(err)
	}
	return &vaultEnv{Env: env, vault: fv, client: c}
}

func (e *vaultEnv) login(opts agent.VaultLoginOpts) (*agent.VaultLoginResult, []agent.Step, error) {
	var steps []agent.Step
	opts.Progress = func(s agent.Step, _ time.Duration, detail string) {
		if strings.Contains(detail, "hvs.") {
			panic("progress detail holds a token: " + detail)
		}
		steps = append(steps, s)
	}
	if opts.Role == "" {
		opts.Role = "web"
	}
	res, err := agent.VaultLogin(context.Background(), e.client, e.Node, opts)
	return res, steps, err
}

func TestVaultLogin(t *testing.T) {
	t.Setenv("VAULT_TOKEN", "hvs.must-not-be-sent")
	env := newVaultEnv(t, fakevault.Opts{})
	res, steps, err := env.login(agent.VaultLoginOpts{})
	if err != nil {
		t.Fatalf("VaultLogin: %v", err)
	}
	if res.Auth.ClientToken != "hvs.fake-token-1" || res.Unwrapped || !slices.Equal(res.Auth.Policies, []string{"default", "web"}) || res.Auth.LeaseDuration != 3600 {
		t.Errorf("result = %+v, auth %+v", res, res.Auth)
	}
	if want := []agent.Step{agent.StepChallenge, agent.StepActivate, agent.StepQuote, agent.StepLogin}; !slices.Equal(steps, want) {
		t.Errorf("steps = %v, want %v", steps, want)
	}
	if env.vault.SawToken() {
		t.Error("the client sent VAULT_TOKEN to the unauthenticated paths")
	}

	reqs := env.vault.Requests()
	if len(reqs) != 2 || reqs[0].Path != "auth/tpm/challenge" || reqs[1].Path != "auth/tpm/login" {
		t.Fatalf("requests = %+v", reqs)
	}
	ch := reqs[0].Body
	for _, k := range []string{"ek_public", "ak_public"} {
		if s, _ := ch[k].(string); s == "" {
			t.Errorf("challenge request has no %s: %v", k, ch)
		}
	}
	if _, ok := ch["ek_certificate"]; ok {
		t.Error("challenge request sends an ek_certificate the simulator does not have")
	}
	login := reqs[1].Body
	if login["role"] != "web" || login["challenge_id"] == "" {
		t.Errorf("login request = %v", login)
	}
	// The login presents the challenge request's EK and AK material again.
	for _, k := range []string{"ek_public", "ak_public"} {
		if login[k] != ch[k] {
			t.Errorf("login %s = %v, want the challenge request's %v", k, login[k], ch[k])
		}
	}
	if _, ok := login["ek_certificate"]; ok {
		t.Error("login request sends an ek_certificate the challenge request did not")
	}
	if _, ok := login["event_log"]; ok {
		t.Error("login request sends an event_log the node does not have")
	}
	quotes, _ := login["quotes"].([]any)
	if len(quotes) != 2 { // the simulator's SHA-256 and SHA-384 banks
		t.Fatalf("%d quotes, want 2", len(quotes))
	}
	q := quotes[0].(map[string]any)
	pcrs := q["pcrs"].(map[string]any)
	if pcrs["hash_alg"] != float64(0x000b) || len(pcrs["values"].(map[string]any)) != 24 || q["attest"] == "" || q["signature"] == "" {
		t.Errorf("quote = %v", q)
	}

	// A second login takes a fresh challenge: each is single use.
	if _, _, err := env.login(agent.VaultLoginOpts{}); err != nil {
		t.Fatalf("second VaultLogin: %v", err)
	}
	if reqs := env.vault.Requests(); reqs[2].Body["ek_public"] != ch["ek_public"] || reqs[3].Body["challenge_id"] == login["challenge_id"] {
		t.Error("second login reused the first challenge")
	}
}

// TestVaultLoginSendsEventLog checks the event_log field (a log the broker
// would refuse to parse: this fake accepts any quotes).
func TestVaultLoginSendsEventLog(t *testing.T) {
	rw := tpmtest.Open(t)
	node, err := agent.NewNode(rw, agent.NodeOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	fv := fakevault.Start(t, fakevault.Opts{Backend: fakevault.AnyEKInsecure(), Mount: "tpm-eu"})
	c, err := agent.NewVaultClient(fv.URL, agent.VaultClientOpts{CAPEM: fv.CAPEM})
	if err != nil {
		t.Fatal(err)
	}
	log := []byte("a TCG event log")
	if _, err := agent.VaultLogin(context.Background(), c, node, agent.VaultLoginOpts{Role: "web", Mount: "/tpm-eu/", EventLog: log}); err != nil {
		t.Fatalf("VaultLogin: %v", err)
	}
	reqs := fv.Requests()
	if len(reqs) != 2 || reqs[1].Path != "auth/tpm-eu/login" {
		t.Fatalf("requests = %+v", reqs)
	}
	if got, _ := reqs[1].Body["event_log"].(string); got != base64.StdEncoding.EncodeToString(log) {
		t.Errorf("event_log = %q", got)
	}
}

func TestVaultLoginResponseWrapped(t *testing.T) {
	t.Run("unwrapped once", func(t *testing.T) {
		env := newVaultEnv(t, fakevault.Opts{WrapTTL: time.Minute})
		res, steps, err := env.login(agent.VaultLoginOpts{})
		if err != nil {
			t.Fatalf("VaultLogin: %v", err)
		}
		if !res.Unwrapped || res.Auth.ClientToken != "hvs.fake-token-1" {
			t.Errorf("result = %+v, auth %+v", res, res.Auth)
		}
		if want := []agent.Step{agent.StepChallenge, agent.StepActivate, agent.StepQuote, agent.StepLogin, agent.StepUnwrap}; !slices.Equal(steps, want) {
			t.Errorf("steps = %v, want %v", steps, want)
		}
		if env.client.Token() != "" {
			t.Error("the spent wrapping token is left on the client")
		}
		if _, ok := env.vault.Unwrap("hvs.fake-wrap-1"); ok {
			t.Error("the wrapping token can still be unwrapped")
		}
	})
	t.Run("wrapping token used by someone else", func(t *testing.T) {
		env := newVaultEnv(t, fakevault.Opts{WrapTTL: time.Minute})
		env.vault.Override("sys/wrapping/unwrap", func(map[string]any) (int, any) {
			// Someone who saw the login response unwrapped it first.
			env.vault.Unwrap("hvs.fake-wrap-1")
			return http.StatusBadRequest, map[string]any{"errors": []string{"wrapping token is not valid or does not exist"}}
		})
		_, _, err := env.login(agent.VaultLoginOpts{})
		wantStepError(t, err, agent.StepUnwrap, "unable to unwrap the login (was the wrapping token used by someone else?): vault refused (400): wrapping token is not valid or does not exist")
	})
	t.Run("wrapping token from another path", func(t *testing.T) {
		env := newVaultEnv(t, fakevault.Opts{WrapTTL: time.Minute, WrapCreationPath: "secret/data/trap"})
		_, _, err := env.login(agent.VaultLoginOpts{})
		wantStepError(t, err, agent.StepUnwrap, `the wrapping token was created by "secret/data/trap", not "auth/tpm/login": refusing to unwrap it`)
		if _, ok := env.vault.Unwrap("hvs.fake-wrap-1"); !ok {
			t.Error("the agent unwrapped a wrapping token it refused")
		}
	})
}

func wantStepError(t *testing.T, err error, step agent.Step, msg string) {
	t.Helper()
	var se *agent.StepError
	if !errors.As(err, &se) {
		t.Fatalf("err = %v; want a *StepError at %s", err, step)
	}
	if se.Step != step || !strings.Contains(se.Err.Error(), msg) {
		t.Errorf("err = %s: %v; want %s: …%s…", se.Step, se.Err, step, msg)
	}
}

func TestVaultLoginRefusals(t *testing.T) {
	canned := func(code int, body any) func(map[string]any) (int, any) {
		return func(map[string]any) (int, any) { return code, body }
	}
	b64 := base64.StdEncoding.EncodeToString
	tests := []struct {
		name       string
		setup      func(t *testing.T, env *vaultEnv)
		role       string
		wantStep   agent.Step
		wantErr    string
		wantStatus int // of the wrapped *vaultapi.ResponseError; 0: none
	}{
		{
			name: "policy denies a changed boot",
			setup: func(t *testing.T, env *vaultEnv) {
				brokertest.Extend(t, env.RW, 7, "secure boot off")
			},
			wantStep: agent.StepLogin, wantErr: "vault refused (403): policy: no policy allows this node", wantStatus: 403,
		},
		{
			name: "unknown role", role: "db",
			wantStep: agent.StepLogin, wantErr: `vault refused (400): role "db" not found`, wantStatus: 400,
		},
		{
			name: "EK refused at challenge",
			setup: func(t *testing.T, env *vaultEnv) {
				env.vault.Override("auth/tpm/challenge", canned(403, map[string]any{"errors": []string{"ek_trust: ek_certificate does not chain to a trusted EK CA"}}))
			},
			wantStep: agent.StepChallenge, wantErr: "vault refused (403): ek_trust: ek_certificate does not chain to a trusted EK CA", wantStatus: 403,
		},
		{
			name: "auth method not enabled",
			setup: func(t *testing.T, env *vaultEnv) {
				env.vault.Override("auth/tpm/challenge", canned(404, map[string]any{"errors": []string{}}))
			},
			wantStep: agent.StepChallenge, wantErr: "vault refused (404): Not Found", wantStatus: 404,
		},
		{
			name: "challenge without data",
			setup: func(t *testing.T, env *vaultEnv) {
				env.vault.Override("auth/tpm/challenge", canned(200, map[string]any{}))
			},
			wantStep: agent.StepChallenge, wantErr: "vault answered the challenge with no data",
		},
		{
			name: "challenge missing and malformed fields",
			setup: func(t *testing.T, env *vaultEnv) {
				env.vault.Override("auth/tpm/challenge", canned(200, map[string]any{"data": map[string]any{
					"credential_blob": "not base64!", "encrypted_secret": b64([]byte{0, 1, 7}), "expires": "tomorrow",
				}}))
			},
			wantStep: agent.StepChallenge,
			wantErr: "the challenge response has no challenge_id\n" +
				"the challenge response's credential_blob is not base64: illegal base64 data at input byte 3\n" +
				"the challenge response's expires is not RFC 3339",
		},
		{
			name: "credential not a TPM2B",
			setup: func(t *testing.T, env *vaultEnv) {
				env.vault.Override("auth/tpm/challenge", canned(200, map[string]any{"data": map[string]any{
					"challenge_id": "c1", "credential_blob": b64([]byte{0, 9, 1}), "encrypted_secret": b64([]byte{0, 1, 7}),
				}}))
			},
			wantStep: agent.StepActivate, wantErr: "credential_blob: malformed TPM2B",
		},
		{
			name: "login answered without a token",
			setup: func(t *testing.T, env *vaultEnv) {
				env.vault.Override("auth/tpm/login", canned(200, map[string]any{"data": map[string]any{"x": 1}}))
			},
			wantStep: agent.StepLogin, wantErr: "vault answered with no token",
		},
		{
			name: "server error is not retried",
			setup: func(t *testing.T, env *vaultEnv) {
				env.vault.Override("auth/tpm/login", canned(500, map[string]any{"errors": []string{"internal error"}}))
			},
			wantStep: agent.StepLogin, wantErr: "vault refused (500): internal error", wantStatus: 500,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := newVaultEnv(t, fakevault.Opts{})
			if tc.setup != nil {
				tc.setup(t, env)
			}
			res, _, err := env.login(agent.VaultLoginOpts{Role: tc.role})
			if res != nil {
				t.Errorf("result = %+v; want none", res)
			}
			wantStepError(t, err, tc.wantStep, tc.wantErr)
			var re *vaultapi.ResponseError
			if got := errors.As(err, &re); got != (tc.wantStatus != 0) || (got && re.StatusCode != tc.wantStatus) {
				t.Errorf("ResponseError = %v; want status %d", re, tc.wantStatus)
			}
			if n := env.vault.TokensIssued(); n != 0 {
				t.Errorf("%d token(s) issued", n)
			}
			logins := 0
			for _, r := range env.vault.Requests() {
				if r.Path == "auth/tpm/login" {
					logins++
				}
			}
			if logins > 1 {
				t.Errorf("%d login requests; a challenge is single use, a retry can only fail", logins)
			}
		})
	}
}

func TestNewVaultClient(t *testing.T) {
	fv := fakevault.Start(t, fakevault.Opts{Backend: fakevault.AnyEKInsecure()})
	other, err := issue.LoadOrCreateCA(t.TempDir(), issue.CAOpts{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		addr    string
		opts    agent.VaultClientOpts
		wantErr string // from NewVaultClient, or else from a request
	}{
		{name: "pinned CA", addr: fv.URL, opts: agent.VaultClientOpts{CAPEM: fv.CAPEM}},
		{name: "another CA", addr: fv.URL, opts: agent.VaultClientOpts{CAPEM: other.BundlePEM()}, wantErr: "certificate signed by unknown authority"},
		{name: "system roots", addr: fv.URL, wantErr: "certificate signed by unknown authority"},
		{name: "CA file without PEM", addr: fv.URL, opts: agent.VaultClientOpts{CAPEM: []byte("nope")}, wantErr: "the Vault CA bundle holds no PEM certificate"},
		{name: "no address", wantErr: "no Vault address"},
	}
	t.Setenv("VAULT_SKIP_VERIFY", "true") // ignored: TLS is always verified
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := agent.NewVaultClient(tc.addr, tc.opts)
			if err == nil {
				_, err = c.Logical().Write("auth/tpm/challenge", map[string]any{"ek_public": ""})
				var re *vaultapi.ResponseError
				if errors.As(err, &re) {
					err = nil // the request reached the server
				}
			}
			if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("err = %v; want %q", err, tc.wantErr)
			}
		})
	}
}
