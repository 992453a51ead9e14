package vaultsource_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/vaultsource"
	"github.com/keybroker/keybroker/internal/fakevaultsource"
)

func TestLogin(t *testing.T) {
	fake := fakevaultsource.New(t)
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name    string
		opts    vaultsource.Opts
		wantErr string
	}{
		{name: "token file", opts: vaultsource.Opts{TokenFile: write("token", fakevaultsource.Token+"\n")}},
		{name: "approle", opts: vaultsource.Opts{RoleID: fakevaultsource.RoleID, SecretIDFile: write("secret-id", fakevaultsource.SecretID+"\n")}},
		{name: "wrong token", opts: vaultsource.Opts{Token: "hvs.other"}, wantErr: "vault token lookup: permission denied (403)"},
		{name: "wrong secret ID", opts: vaultsource.Opts{RoleID: fakevaultsource.RoleID, SecretIDFile: write("other", "x")}, wantErr: "vault approle login: refused (400)"},
		{name: "unreachable", opts: vaultsource.Opts{Address: "https://127.0.0.1:1", Token: "t"}, wantErr: "vault token lookup: unreachable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.CACert = fake.CAFile
			if tc.opts.Address == "" {
				tc.opts.Address = fake.URL
			}
			tc.opts.Timeout = 5 * time.Second
			c, err := vaultsource.New(context.Background(), tc.opts)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				defer c.Close()
				if _, err := c.ReadKV(context.Background(), "secret/data/a"); err != nil {
					t.Errorf("ReadKV after login: %v", err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
				t.Fatalf("New = %v; want %q", err, tc.wantErr)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		status      int
		unavailable bool
		reason      string
	}{
		{http.StatusServiceUnavailable, true, "sealed or not active (503)"},
		{http.StatusBadGateway, true, "server error (502)"},
		{http.StatusForbidden, false, "permission denied (403)"},
		{http.StatusNotFound, false, "not found (404)"},
		{http.StatusBadRequest, false, "refused (400)"},
	}
	for _, tc := range tests {
		t.Run(http.StatusText(tc.status), func(t *testing.T) {
			fake := fakevaultsource.New(t)
			c := fake.Client(t)
			fake.Fail(tc.status)
			_, err := c.ReadKV(context.Background(), "secret/data/a")
			var ve *vaultsource.Error
			if !errors.As(err, &ve) || ve.Unavailable != tc.unavailable || ve.Reason != tc.reason {
				t.Errorf("ReadKV = %v; want reason %q, unavailable %v", err, tc.reason, tc.unavailable)
			}
			_, err = c.IssueCertificate(context.Background(), "pki/issue/r", vaultsource.CertRequest{CommonName: "a"})
			if !errors.As(err, &ve) || ve.Reason != tc.reason {
				t.Errorf("IssueCertificate = %v; want reason %q", err, tc.reason)
			}
		})
	}
}

func TestReadKVAndIssue(t *testing.T) {
	fake := fakevaultsource.New(t)
	c := fake.Client(t)
	kv, err := c.ReadKV(context.Background(), "secret/data/a")
	if err != nil {
		t.Fatal(err)
	}
	if kv.Version != 3 || kv.Data["password"] != "s3cret" || kv.Data["port"] != "5432" {
		t.Errorf("ReadKV = %+v", kv)
	}
	cert, err := c.IssueCertificate(context.Background(), "pki/issue/r", vaultsource.CertRequest{DNSNames: []string{"a.example.com"}, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if cert.Serial != "1234" || len(cert.ChainPEM) == 0 || !strings.Contains(string(cert.KeyPEM), "BEGIN PRIVATE KEY") || time.Until(cert.NotAfter) <= 0 {
		t.Errorf("IssueCertificate = serial %q chain %d bytes, not after %v", cert.Serial, len(cert.ChainPEM), cert.NotAfter)
	}
	fake.Stop()
	_, err = c.ReadKV(context.Background(), "secret/data/a")
	var ve *vaultsource.Error
	if !errors.As(err, &ve) || !ve.Unavailable || ve.Reason != "unreachable" {
		t.Errorf("ReadKV with Vault stopped = %v", err)
	}
}

// call is one call that Opts.Observe was told of.
type call struct{ op, outcome string }

// recorder collects what Opts.Observe is told.
type recorder struct {
	mu    sync.Mutex
	calls []call
}

func (r *recorder) observe(op, outcome string, took time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if took < 0 {
		op += " (untimed)"
	}
	r.calls = append(r.calls, call{op, outcome})
}

// take returns the calls observed since the last take.
func (r *recorder) take() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.calls
	r.calls = nil
	return out
}

// TestObserve: every call to Vault is reported with its op and outcome
// (ok, refused when Vault answers an error, unavailable when it cannot
// answer), and a failure before Vault is asked is not a call.
func TestObserve(t *testing.T) {
	fake := fakevaultsource.New(t)
	rec := &recorder{}
	opts := func(o vaultsource.Opts) vaultsource.Opts {
		if o.Address == "" {
			o.Address = fake.URL
		}
		o.CACert, o.Timeout, o.Observe = fake.CAFile, 5*time.Second, rec.observe
		return o
	}
	ctx := context.Background()
	logins := []struct {
		name string
		opts vaultsource.Opts
		want []call
	}{
		{"token", vaultsource.Opts{Token: fakevaultsource.Token}, []call{{vaultsource.OpLogin, vaultsource.OutcomeOK}}},
		{"wrong token", vaultsource.Opts{Token: "hvs.other"}, []call{{vaultsource.OpLogin, vaultsource.OutcomeRefused}}},
		{"unreachable", vaultsource.Opts{Address: "https://127.0.0.1:1", Token: "t"}, []call{{vaultsource.OpLogin, vaultsource.OutcomeUnavailable}}},
		{"unreadable secret ID", vaultsource.Opts{RoleID: fakevaultsource.RoleID, SecretIDFile: filepath.Join(t.TempDir(), "none")}, nil},
	}
	for _, tc := range logins {
		t.Run("login/"+tc.name, func(t *testing.T) {
			if c, err := vaultsource.New(ctx, opts(tc.opts)); err == nil {
				c.Close()
			}
			if got := rec.take(); !slices.Equal(got, tc.want) {
				t.Errorf("observed %v; want %v", got, tc.want)
			}
		})
	}

	c, err := vaultsource.New(ctx, opts(vaultsource.Opts{Token: fakevaultsource.Token}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rec.take()
	calls := func() {
		c.ReadKV(ctx, "secret/data/a")
		c.IssueCertificate(ctx, "pki/issue/r", vaultsource.CertRequest{CommonName: "a"})
		c.RevokeCertificate(ctx, "pki/issue/r", "1234")
		c.RevokeCertificate(ctx, "not-a-pki-path", "1234") // refused before Vault is asked
		c.CreateToken(ctx, vaultsource.TokenRequest{Role: "nodes", TTL: time.Hour})
		c.CreateToken(ctx, vaultsource.TokenRequest{Role: "nodes"}) // no ttl: refused before Vault is asked
		c.RevokeToken(ctx, "accessor")
	}
	each := func(outcome string) []call {
		return []call{{vaultsource.OpKVRead, outcome}, {vaultsource.OpPKIIssue, outcome}, {vaultsource.OpPKIRevoke, outcome},
			{vaultsource.OpTokenCreate, outcome}, {vaultsource.OpTokenRevoke, outcome}}
	}
	calls()
	if got, want := rec.take(), each(vaultsource.OutcomeOK); !slices.Equal(got, want) {
		t.Errorf("answered: observed %v; want %v", got, want)
	}
	fake.Fail(http.StatusForbidden)
	calls()
	if got, want := rec.take(), each(vaultsource.OutcomeRefused); !slices.Equal(got, want) {
		t.Errorf("403: observed %v; want %v", got, want)
	}
	fake.Fail(http.StatusServiceUnavailable)
	calls()
	if got, want := rec.take(), each(vaultsource.OutcomeUnavailable); !slices.Equal(got, want) {
		t.Errorf("503: observed %v; want %v", got, want)
	}
	fake.Stop()
	calls()
	if got, want := rec.take(), each(vaultsource.OutcomeUnavailable); !slices.Equal(got, want) {
		t.Errorf("stopped: observed %v; want %v", got, want)
	}
}

// TestObserveRenewal: a token renewal, which the Vault client's lifetime
// watcher makes in the background, is reported untimed. The stand-in
// Vault hands out a renewable token of an hour: the watcher renews it at
// once, then not for 40 minutes.
func TestObserveRenewal(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/v1/auth/token/lookup-self":
			fmt.Fprint(w, `{"data": {"ttl": 3600, "renewable": true}}`)
		case "/v1/auth/token/renew-self":
			fmt.Fprint(w, `{"auth": {"client_token": "t", "lease_duration": 3600, "renewable": true}}`)
		default:
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"errors": []}`)
		}
	}))
	defer srv.Close()
	rec := &recorder{}
	c, err := vaultsource.New(context.Background(), vaultsource.Opts{Address: srv.URL, Token: "t", Timeout: 5 * time.Second, Observe: rec.observe})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := []call{{vaultsource.OpLogin, vaultsource.OutcomeOK}, {vaultsource.OpRenew + " (untimed)", vaultsource.OutcomeOK}}
	var got []call
	for deadline := time.Now().Add(10 * time.Second); len(got) < len(want) && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		got = append(got, rec.take()...)
	}
	if !slices.Equal(got, want) {
		t.Errorf("observed %v; want %v", got, want)
	}
}
