package vaultauth

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

const (
	hashA = "3d458cfe55cc03ea1f443f1562beec8df51c75e14a9fcf9a7234a13f198e7969"
	hashB = "0000000000000000000000000000000000000000000000000000000000000001"
)

func TestConfigValidation(t *testing.T) {
	ca := newTestCA(t, "vendor root", nil)
	tests := []struct {
		name    string
		data    map[string]any
		wantErr []string // all in one response
	}{
		{
			name:    "nothing trusted",
			data:    map[string]any{"challenge_ttl": "30s"},
			wantErr: []string{"no EK is trusted: set ek_allow or ek_ca"},
		},
		{
			name: "every problem at once",
			data: map[string]any{
				"ek_allow":              []string{hashB, strings.ToUpper(hashA), "abc"},
				"challenge_ttl":         "11m",
				"challenges_per_minute": 0,
				"ek_ca": map[string]any{
					"garbage":     map[string]any{"roots": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
					"no-roots":    map[string]any{"intermediates": ca.pem},
					"not-pem":     map[string]any{"roots": "hello"},
					"string":      "a PEM",
					"typo":        map[string]any{"root": ca.pem},
					"bad-inter":   map[string]any{"roots": ca.pem, "intermediates": "nope"},
					" padded":     map[string]any{"roots": ca.pem},
					"number":      map[string]any{"roots": 7},
					"fine-vendor": map[string]any{"roots": ca.pem},
				},
			},
			wantErr: []string{
				`ek_allow entry "` + strings.ToUpper(hashA) + `" is not a lowercase hex SHA-256 EK hash`,
				`ek_allow entry "abc" is not a lowercase hex SHA-256 EK hash`,
				"challenge_ttl must be between 1s and 10m0s",
				"challenges_per_minute must be between 1 and 1000",
				`ek_ca "garbage" roots: PEM block 1: x509:`,
				`ek_ca "no-roots" roots: cannot be empty`,
				`ek_ca "not-pem" roots: holds no PEM certificate`,
				`ek_ca "string" must be an object {"roots": "<PEM>", "intermediates": "<PEM>"}`,
				`ek_ca "typo": unknown field "root" (want roots, intermediates)`,
				`ek_ca "bad-inter" intermediates: holds no PEM certificate`,
				`ek_ca name " padded" cannot be empty or start or end with spaces`,
				`ek_ca "number": roots must be a PEM string`,
			},
		},
		{
			name:    "zero ttl",
			data:    map[string]any{"ek_allow": hashA, "challenge_ttl": 0},
			wantErr: []string{"challenge_ttl must be between 1s and 10m0s"},
		},
		{
			name:    "zero checkpoint schedule",
			data:    map[string]any{"ek_allow": hashA, "checkpoint_every": 0, "checkpoint_interval": 0},
			wantErr: []string{"checkpoint_every must be between 1 and 1000000", "checkpoint_interval must be between 1s and 24h0m0s"},
		},
		{
			name:    "checkpoint schedule too long",
			data:    map[string]any{"ek_allow": hashA, "checkpoint_every": 1_000_001, "checkpoint_interval": "25h"},
			wantErr: []string{"checkpoint_every must be between 1 and 1000000", "checkpoint_interval must be between 1s and 24h0m0s"},
		},
		{
			name:    "too many challenges",
			data:    map[string]any{"ek_allow": hashA, "challenges_per_minute": 1001},
			wantErr: []string{"challenges_per_minute must be between 1 and 1000"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			resp, err := e.request(logical.UpdateOperation, "config", tt.data)
			if err != nil {
				t.Fatal(err)
			}
			if !resp.IsError() {
				t.Fatalf("config accepted: %v", resp)
			}
			msg := resp.Error().Error()
			for _, want := range tt.wantErr {
				if !strings.Contains(msg, want) {
					t.Errorf("error lacks %q:\n%s", want, msg)
				}
			}
			if got := strings.Count(msg, "\n") + 1; got != len(tt.wantErr) {
				t.Errorf("error has %d lines, want %d:\n%s", got, len(tt.wantErr), msg)
			}
			if raw, _ := e.storage.Get(context.Background(), configPath); raw != nil {
				t.Error("an invalid configuration was stored")
			}
		})
	}
}

func TestConfigReadWrite(t *testing.T) {
	e := newEnv(t)
	if resp, err := e.request(logical.ReadOperation, "config", nil); err != nil || resp != nil {
		t.Fatalf("read before configuring = %v, %v; want nothing", resp, err)
	}
	ca := newTestCA(t, "vendor root", nil)
	inter := newTestCA(t, "vendor intermediate", ca)
	e.configure(map[string]any{
		"ek_allow": hashA + "," + hashB,
		"ek_ca":    map[string]any{"vendor": map[string]any{"roots": ca.pem, "intermediates": inter.pem}},
	})
	read := func() map[string]any {
		t.Helper()
		resp, err := e.request(logical.ReadOperation, "config", nil)
		if err != nil || resp == nil {
			t.Fatalf("read: %v %v", resp, err)
		}
		return resp.Data
	}
	got := read()
	if !slices.Equal(got["ek_allow"].([]string), []string{hashA, hashB}) {
		t.Errorf("ek_allow = %v", got["ek_allow"])
	}
	vendor := got["ek_ca"].(map[string]any)["vendor"].(map[string]any)
	if vendor["roots"] != ca.pem || vendor["intermediates"] != inter.pem {
		t.Errorf("ek_ca = %v", got["ek_ca"])
	}
	if got["challenge_ttl"] != int64(60) || got["challenges_per_minute"] != 10 || got["allow_sha1"] != false {
		t.Errorf("defaults = %v", got)
	}

	// A write changes what it names and keeps the rest.
	e.configure(map[string]any{"challenge_ttl": "30s", "allow_sha1": true})
	got = read()
	if got["challenge_ttl"] != int64(30) || got["allow_sha1"] != true || len(got["ek_allow"].([]string)) != 2 || len(got["ek_ca"].(map[string]any)) != 1 {
		t.Errorf("after a partial write: %v", got)
	}
	// An invalid write changes nothing.
	resp, err := e.request(logical.UpdateOperation, "config", map[string]any{"ek_allow": "nope", "challenge_ttl": "5m"})
	if err != nil || !resp.IsError() {
		t.Fatalf("invalid write = %v, %v", resp, err)
	}
	if got = read(); got["challenge_ttl"] != int64(30) {
		t.Errorf("an invalid write changed the configuration: %v", got)
	}
	// The stored form is read again after a restart.
	e2 := e.restart()
	resp, err = e2.request(logical.ReadOperation, "config", nil)
	if err != nil || resp.Data["challenge_ttl"] != int64(30) {
		t.Errorf("after a restart: %v %v", resp, err)
	}
}

func TestConfigIsSealWrappedAndInvalidated(t *testing.T) {
	e := newEnv(t)
	if !slices.Contains(e.b.PathsSpecial.SealWrapStorage, "config") {
		t.Errorf("SealWrapStorage = %v, want config", e.b.PathsSpecial.SealWrapStorage)
	}
	e.configure(map[string]any{"ek_allow": hashA})
	if _, err := e.b.config(context.Background(), e.storage); err != nil {
		t.Fatal(err)
	}
	// Another node of the cluster changes the configuration: Vault
	// replicates the storage entry and calls Invalidate.
	other := restart(t, e.storage, e.clock)
	other.configure(map[string]any{"challenges_per_minute": 3})
	if c, _ := e.b.config(context.Background(), e.storage); c.challengesPerMinute != 10 {
		t.Fatalf("cached configuration = %d per minute before Invalidate", c.challengesPerMinute)
	}
	e.b.InvalidateKey(context.Background(), "config")
	if c, _ := e.b.config(context.Background(), e.storage); c.challengesPerMinute != 3 {
		t.Errorf("configuration after Invalidate = %d per minute, want 3", c.challengesPerMinute)
	}
}
