package vaultsource_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
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
