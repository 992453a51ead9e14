package vaultauth

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/keybroker/keybroker/broker/verify"
)

// Limits of the requests the plugin makes to Vault's own API.
const (
	selfTimeout     = 10 * time.Second
	maxSelfResponse = 1 << 20
)

// selfClient completes the logins of roles with token_envelope: it
// presents a ticket to this mount's login path over Vault's own API, so
// that Vault core creates the token (with its lease, entity alias and renew
// callback), and receives the token to seal it to the node's TPM.
type selfClient struct {
	addr string
	http *http.Client
}

// newSelfClient validates the vault_* configuration fields. Plain http is
// accepted only for a loopback address: the token travels back over it.
func newSelfClient(addr, caPEM, serverName string) (*selfClient, error) {
	if addr == "" {
		return nil, errors.New("vault_addr is required when vault_ca_cert or vault_tls_server_name is set")
	}
	u, err := url.Parse(addr)
	switch {
	case err != nil:
		return nil, fmt.Errorf("vault_addr %q is not a URL: %w", addr, err)
	case u.Scheme != "https" && u.Scheme != "http", u.Host == "", u.User != nil, u.RawQuery != "", u.Fragment != "",
		u.Path != "" && u.Path != "/":
		return nil, fmt.Errorf("vault_addr %q must be https://host[:port] (or http:// on a loopback address)", addr)
	case u.Scheme == "http" && !isLoopback(u.Hostname()):
		return nil, fmt.Errorf("vault_addr %q: plain http is only accepted on a loopback address; the token travels over it", addr)
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if caPEM != "" {
		pool, err := certPool(caPEM)
		if err != nil {
			return nil, fmt.Errorf("vault_ca_cert: %w", err)
		}
		tlsConf.RootCAs = pool
	}
	return &selfClient{
		addr: u.Scheme + "://" + u.Host,
		http: &http.Client{
			Timeout: selfTimeout,
			// No proxy from the environment: the request carries a
			// ticket and its answer a token.
			Transport: &http.Transport{TLSClientConfig: tlsConf, ForceAttemptHTTP2: true},
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return errors.New("vault_addr answered with a redirect; set it to the API address of this cluster")
			},
		},
	}, nil
}

// isLoopback accepts loopback IP literals only: a name would depend on the
// resolver.
func isLoopback(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// selfAuth is Vault's answer to a ticket login: the auth object as Vault
// wrote it (it holds the token) and the fields the plugin reads from it.
type selfAuth struct {
	raw         json.RawMessage
	clientToken string
	accessor    string
	metadata    map[string]string
}

// login presents ticket to <mount>login (mount as Vault names it in
// requests, "auth/tpm/").
func (c *selfClient) login(ctx context.Context, mount, role, ticket string) (*selfAuth, error) {
	body, err := json.Marshal(map[string]string{"role": role, "ticket": ticket})
	if err != nil {
		return nil, err
	}
	var out struct {
		Auth json.RawMessage `json:"auth"`
	}
	if err := c.do(ctx, "/v1/"+strings.TrimSuffix(mount, "/")+"/login", "", body, &out); err != nil {
		return nil, err
	}
	var a struct {
		ClientToken string            `json:"client_token"`
		Accessor    string            `json:"accessor"`
		Metadata    map[string]string `json:"metadata"`
	}
	if len(out.Auth) == 0 || string(out.Auth) == "null" {
		return nil, errors.New("vault answered the ticket login without a token")
	}
	if err := json.Unmarshal(out.Auth, &a); err != nil || a.ClientToken == "" {
		return nil, errors.New("vault answered the ticket login without a token")
	}
	return &selfAuth{raw: out.Auth, clientToken: a.ClientToken, accessor: a.Accessor, metadata: a.Metadata}, nil
}

// revokeSelf revokes a token the plugin received but could not deliver.
func (c *selfClient) revokeSelf(ctx context.Context, token string) error {
	return c.do(ctx, "/v1/auth/token/revoke-self", token, []byte("{}"), nil)
}

// do posts body to path and decodes a 200 answer into out. Vault's error
// messages are passed on; they never echo the request.
func (c *selfClient) do(ctx context.Context, path, token string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.addr+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("X-Vault-Token", token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("unable to reach vault_addr: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxSelfResponse+1))
	if err != nil {
		return fmt.Errorf("unable to read vault_addr's answer: %w", err)
	}
	if len(data) > maxSelfResponse {
		return fmt.Errorf("vault_addr's answer exceeds %d bytes", maxSelfResponse)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Errors []string `json:"errors"`
		}
		_ = json.Unmarshal(data, &e)
		if len(e.Errors) == 0 {
			return fmt.Errorf("vault_addr answered %s", resp.Status)
		}
		return fmt.Errorf("vault_addr answered %s: %s", resp.Status, strings.Join(e.Errors, "; "))
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("unable to decode vault_addr's answer: %w", err)
	}
	return nil
}

// certPool parses the CERTIFICATE blocks of a PEM bundle; other block
// types are skipped.
func certPool(src string) (*x509.CertPool, error) {
	certs, err := verify.ParsePEMCertificates([]byte(src))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}
