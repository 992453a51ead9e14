package vaultauth

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/idlog"
)

func TestLoginRefusals(t *testing.T) {
	n := openNode(t, 0)
	tests := []struct {
		name string
		// answer returns the login data; e is set up for n with role web.
		answer   func(e *env) map[string]any
		denied   bool // permission denied, else a 400 error response
		wantErr  string
		consumed bool // the challenge is used up
	}{
		{
			name:   "unknown challenge",
			answer: func(e *env) map[string]any { d := n.answer(e.challenge(n), "web"); d["challenge_id"] = "x"; return d },
			denied: true, wantErr: "challenge: challenge is unknown or already used",
		},
		{
			name: "tampered challenge token",
			answer: func(e *env) map[string]any {
				d := n.answer(e.challenge(n), "web")
				id := []byte(d["challenge_id"].(string))
				id[len(id)/2] ^= 'A' ^ 'B'
				d["challenge_id"] = string(id)
				return d
			},
			denied: true, wantErr: "challenge: challenge is unknown or already used",
		},
		{
			name: "another AK than the challenge's",
			answer: func(e *env) map[string]any {
				d := n.answer(e.challenge(n), "web")
				d["ak_public"] = d["ek_public"]
				return d
			},
			denied: true, wantErr: "challenge: challenge was issued for another EK or AK",
		},
		{
			name: "EK certificate not in the challenge request",
			answer: func(e *env) map[string]any {
				d := n.answer(e.challenge(n), "web")
				d["ek_certificate"] = b64([]byte("a certificate"))
				return d
			},
			denied: true, wantErr: "challenge: challenge was issued for another EK or AK",
		},
		{
			name: "no EK and AK material",
			answer: func(e *env) map[string]any {
				d := n.answer(e.challenge(n), "web")
				delete(d, "ek_public")
				delete(d, "ak_public")
				return d
			},
			wantErr: "ek_public is required\nak_public is required",
		},
		{
			name: "oversized EK material",
			answer: func(e *env) map[string]any {
				d := n.answer(e.challenge(n), "web")
				d["ek_certificate"] = b64(make([]byte, 9<<10))
				d["ek_intermediates"] = []string{"AAAA", "AAAA", "AAAA", "AAAA", "AAAA", "AAAA", "AAAA", "AAAA", "AAAA"}
				return d
			},
			wantErr: "ek_certificate exceeds 8192 bytes\nek_intermediates holds more than 8 certificates",
		},
		{
			name: "expired challenge",
			answer: func(e *env) map[string]any {
				d := n.answer(e.challenge(n), "web")
				e.clock.add(61 * time.Second)
				return d
			},
			denied: true, wantErr: "challenge: challenge has expired",
		},
		{
			name: "quote for another challenge",
			answer: func(e *env) map[string]any {
				d := n.answer(e.challenge(n), "web")
				d["challenge_id"] = e.challenge(n).Data["challenge_id"]
				return d
			},
			denied: true, wantErr: "quote_nonce: ", consumed: true,
		},
		{
			name: "tampered PCR value",
			answer: func(e *env) map[string]any {
				d := n.answer(e.challenge(n), "web")
				q := d["quotes"].([]any)[0].(map[string]any)
				q["pcrs"].(map[string]any)["values"].(map[string]any)["7"] = b64(bytes.Repeat([]byte{1}, 32))
				return d
			},
			denied: true, wantErr: "pcr_digest: ", consumed: true,
		},
		{
			name: "event log that does not replay",
			answer: func(e *env) map[string]any {
				d := n.answer(e.challenge(n), "web")
				d["event_log"] = b64([]byte("not a TCG event log"))
				return d
			},
			denied: true, wantErr: "event_log: ", consumed: true,
		},
		{
			name: "identity log that does not replay",
			answer: func(e *env) map[string]any {
				d := n.answer(e.challenge(n), "web")
				line, err := idlog.Encode(idlog.BootRecord(15, "boot", time.Now()), true)
				if err != nil {
					t.Fatal(err)
				}
				d["identity_log"] = b64(append(line, '\n'))
				return d
			},
			denied: true, wantErr: "identity_log: identity log does not replay to the quoted sha256 PCR 15", consumed: true,
		},
		{
			name: "oversized identity log",
			answer: func(e *env) map[string]any {
				d := n.answer(e.challenge(n), "web")
				d["identity_log"] = b64(make([]byte, idlog.MaxSize+1))
				return d
			},
			wantErr: "identity_log exceeds 262144 bytes",
		},
		{
			name: "EK no longer trusted",
			answer: func(e *env) map[string]any {
				d := n.answer(e.challenge(n), "web")
				e.configure(map[string]any{"ek_allow": hashA})
				return d
			},
			denied: true, wantErr: "ek_trust: EK is not trusted", consumed: true,
		},
		{
			name: "client outside token_bound_cidrs",
			answer: func(e *env) map[string]any {
				e.write("role/web", map[string]any{"token_bound_cidrs": "10.0.0.0/8"})
				return n.answer(e.challenge(n), "web")
			},
			denied: true,
		},
		{
			name:    "no role",
			answer:  func(e *env) map[string]any { return n.answer(e.challenge(n), "") },
			wantErr: "role is required",
		},
		{
			name:    "unknown role",
			answer:  func(e *env) map[string]any { return n.answer(e.challenge(n), "db") },
			wantErr: `role "db" not found`,
		},
		{
			name: "malformed quotes, every problem at once",
			answer: func(e *env) map[string]any {
				d := n.answer(e.challenge(n), "web")
				q := d["quotes"].([]any)[0].(map[string]any)
				q["attest"] = "%%%"
				delete(q, "signature")
				pcrs := q["pcrs"].(map[string]any)
				pcrs["hash_alg"] = "md5"
				values := pcrs["values"].(map[string]any)
				values["24"] = values["23"]
				delete(values, "23")
				d["event_log"] = "!"
				return d
			},
			wantErr: "event_log is not base64: illegal base64 data at input byte 0\n" +
				"quotes[0].attest is not base64: illegal base64 data at input byte 0\n" +
				"quotes[0].signature is required\n" +
				`quotes[0].pcrs.hash_alg "md5" is not sha1, sha256, sha384, sha512 or a TPM_ALG_ID` + "\n" +
				`quotes[0].pcrs.values: "24" is not a PCR index 0-23`,
		},
		{
			name: "unknown quote field",
			answer: func(e *env) map[string]any {
				d := n.answer(e.challenge(n), "web")
				d["quotes"].([]any)[0].(map[string]any)["nonce"] = "AAAA"
				return d
			},
			wantErr: `quotes must be a list of {attest, signature, pcrs: {hash_alg, values}}: json: unknown field "nonce"`,
		},
		{
			name: "no quotes",
			answer: func(e *env) map[string]any {
				d := n.answer(e.challenge(n), "web")
				d["quotes"] = []any{}
				return d
			},
			wantErr: "quotes is required",
		},
		{
			name: "garbage quote",
			answer: func(e *env) map[string]any {
				d := n.answer(e.challenge(n), "web")
				d["quotes"].([]any)[0].(map[string]any)["attest"] = b64([]byte("garbage"))
				return d
			},
			denied: true, wantErr: "quote_signature: ", consumed: true,
		},
		{
			name: "PCR value of the wrong size",
			answer: func(e *env) map[string]any {
				d := n.answer(e.challenge(n), "web")
				q := d["quotes"].([]any)[0].(map[string]any)
				q["pcrs"].(map[string]any)["values"].(map[string]any)["7"] = b64([]byte("short"))
				return d
			},
			wantErr: "input: PCR 7 value has the wrong size for bank sha256", consumed: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			setup(t, e, n)
			data := tt.answer(e)
			before, _ := e.storage.List(t.Context(), consumedPrefix)
			resp, err := e.request(logical.UpdateOperation, "login", data)
			if tt.denied {
				if err != logical.ErrPermissionDenied {
					t.Fatalf("err = %v (%v), want permission denied", err, resp.Error())
				}
			} else if err != nil || !resp.IsError() {
				t.Fatalf("err = %v, resp = %v; want an error response", err, resp)
			}
			if resp != nil && resp.Auth != nil {
				t.Fatal("refused login carries auth")
			}
			if tt.wantErr != "" && !strings.Contains(resp.Error().Error(), tt.wantErr) {
				t.Errorf("message = %q, want %q", resp.Error(), tt.wantErr)
			}
			after, _ := e.storage.List(t.Context(), consumedPrefix)
			if consumed := len(after) > len(before); consumed != tt.consumed {
				t.Errorf("challenge consumed = %v, want %v", consumed, tt.consumed)
			}
		})
	}
}
