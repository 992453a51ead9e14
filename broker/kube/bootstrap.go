package kube

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// BootstrapGroup is the extra group of the bootstrap tokens the broker
// creates: bind it to system:node-bootstrapper (and, for automatic
// approval, to the nodeclient approval role) for the kubelet's TLS
// bootstrap.
const BootstrapGroup = "system:bootstrappers:keybroker"

// bootstrapNamespace holds bootstrap token Secrets.
const bootstrapNamespace = "kube-system"

// BootstrapToken is a bootstrap token the broker created: "ID.Secret"
// authenticates as system:bootstrap:ID until Expires.
type BootstrapToken struct {
	ID      string
	Secret  string // never logged
	Expires time.Time
}

// Token is the bearer token, "ID.Secret".
func (t BootstrapToken) Token() string { return t.ID + "." + t.Secret }

// CreateBootstrapToken creates a bootstrap token valid for ttl (the
// Secret bootstrap-token-<id> in kube-system, usage
// bootstrap-authentication, extra group BootstrapGroup), described by
// description. The broker's identity needs create on secrets in
// kube-system.
func (c *Client) CreateBootstrapToken(ctx context.Context, ttl time.Duration, description string) (BootstrapToken, error) {
	for range attempts {
		id, err := randomToken(6)
		if err != nil {
			return BootstrapToken{}, err
		}
		sec, err := randomToken(16)
		if err != nil {
			return BootstrapToken{}, err
		}
		t := BootstrapToken{ID: id, Secret: sec, Expires: time.Now().Add(ttl).UTC().Truncate(time.Second)}
		secret := map[string]any{
			"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
			"metadata": map[string]any{"name": "bootstrap-token-" + t.ID, "namespace": bootstrapNamespace,
				"labels": map[string]string{"app.kubernetes.io/managed-by": "keybroker"}},
			"stringData": map[string]string{
				"token-id": t.ID, "token-secret": t.Secret, "expiration": t.Expires.Format(time.RFC3339),
				"usage-bootstrap-authentication": "true", "auth-extra-groups": BootstrapGroup, "description": description,
			},
		}
		body, err := json.Marshal(secret)
		if err != nil {
			return BootstrapToken{}, err
		}
		code, out, err := c.do(ctx, http.MethodPost, "/api/v1/namespaces/"+bootstrapNamespace+"/secrets", body)
		switch {
		case err != nil:
			// The Secret may exist nonetheless: its ID, for the caller to
			// delete it.
			return BootstrapToken{ID: t.ID}, err
		case code == http.StatusCreated:
			return t, nil
		case code == http.StatusConflict:
			continue // that ID exists: draw another
		default:
			return BootstrapToken{}, apiError("create a bootstrap token for", "", code, out)
		}
	}
	return BootstrapToken{}, errors.New("unable to draw an unused bootstrap token ID")
}

// DeleteBootstrapToken deletes the bootstrap token id; a token already
// gone is not an error.
func (c *Client) DeleteBootstrapToken(ctx context.Context, id string) error {
	code, out, err := c.do(ctx, http.MethodDelete, "/api/v1/namespaces/"+bootstrapNamespace+"/secrets/bootstrap-token-"+id, nil)
	switch {
	case err != nil:
		return err
	case code == http.StatusOK, code == http.StatusAccepted, code == http.StatusNotFound:
		return nil
	}
	return apiError("delete bootstrap token "+id+" for", "", code, out)
}

// randomToken draws n characters of [a-z0-9], uniformly.
func randomToken(n int) (string, error) {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	out := make([]byte, 0, n)
	var buf [32]byte
	for len(out) < n {
		if _, err := rand.Read(buf[:]); err != nil {
			return "", fmt.Errorf("unable to draw a bootstrap token: %w", err)
		}
		for _, b := range buf {
			// 252 = 7*36: reject the top values for uniformity.
			if b < 252 && len(out) < n {
				out = append(out, alphabet[b%36])
			}
		}
	}
	return string(out), nil
}
