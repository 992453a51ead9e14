// Package kube is the broker's client of the Kubernetes API, with the
// broker's own identity (a bearer token): for quarantine it puts a taint on
// a node's Node object when the node is refused, and takes it off when the
// node attests again, reading and replacing the Node (GET, then PUT with
// its resourceVersion, retried when another writer changed it in between)
// so that other taints are kept — get and update on nodes; for kubelet
// releases in bootstrap_token mode it creates short-lived bootstrap token
// Secrets in kube-system, and deletes those of decisions not released —
// create and delete on secrets there.
package kube

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"
)

// DefaultTaint is the taint of a quarantined node unless configured.
const DefaultTaint = "keybroker.io/attestation=failed:NoExecute"

// maxResponse bounds a Node object read from the API server.
const maxResponse = 4 << 20

// attempts bounds the read-modify-write retries after a conflict.
const attempts = 4

// ErrNoNode is returned when the node has no Node object.
var ErrNoNode = errors.New("no such Node object")

// Taint is a Kubernetes node taint.
type Taint struct {
	Key    string `json:"key"`
	Value  string `json:"value,omitempty"`
	Effect string `json:"effect"`
}

func (t Taint) String() string {
	if t.Value == "" {
		return t.Key + ":" + t.Effect
	}
	return t.Key + "=" + t.Value + ":" + t.Effect
}

var (
	// A qualified name: an optional DNS subdomain prefix and a name.
	taintKeyRE   = regexp.MustCompile(`^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`)
	taintValueRE = regexp.MustCompile(`^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$`)
)

// ParseTaint parses "key[=value]:Effect" as kubectl taint does; Effect is
// NoSchedule, PreferNoSchedule or NoExecute.
func ParseTaint(s string) (Taint, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return Taint{}, fmt.Errorf("taint %q is not key[=value]:Effect", s)
	}
	t := Taint{Effect: s[i+1:]}
	t.Key, t.Value, _ = strings.Cut(s[:i], "=")
	switch {
	case !slices.Contains([]string{"NoSchedule", "PreferNoSchedule", "NoExecute"}, t.Effect):
		return Taint{}, fmt.Errorf("taint %q: effect %q is not NoSchedule, PreferNoSchedule or NoExecute", s, t.Effect)
	case len(t.Key) > 253 || !taintKeyRE.MatchString(t.Key):
		return Taint{}, fmt.Errorf("taint %q: key %q is not a qualified name such as keybroker.io/attestation", s, t.Key)
	case !taintValueRE.MatchString(t.Value):
		return Taint{}, fmt.Errorf("taint %q: value %q is not a label value", s, t.Value)
	}
	return t, nil
}

// Client changes the quarantine taint of Node objects.
type Client struct {
	server    string
	tokenFile string
	taint     Taint
	http      *http.Client
}

// Opts configure New.
type Opts struct {
	// Server is the API server URL (https).
	Server string
	// CAPEM verifies the API server; empty: the system's roots.
	CAPEM []byte
	// TokenFile holds the bearer token of the broker's identity; it is read
	// on each use, so that a rotated token is picked up.
	TokenFile string
	// Taint is the quarantine taint.
	Taint Taint
	// Timeout bounds each request (default 5s).
	Timeout time.Duration
}

// New returns a Client.
func New(o Opts) (*Client, error) {
	u, err := url.Parse(o.Server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("kubernetes server %q is not an https URL", o.Server)
	}
	if o.TokenFile == "" {
		return nil, errors.New("no token file")
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(o.CAPEM) > 0 {
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(o.CAPEM) {
			return nil, errors.New("the kubernetes CA holds no PEM certificate")
		}
	}
	return &Client{server: strings.TrimSuffix(o.Server, "/"), tokenFile: o.TokenFile, taint: o.Taint,
		http: &http.Client{Timeout: o.Timeout, Transport: &http.Transport{TLSClientConfig: cfg}}}, nil
}

// Taint returns the quarantine taint.
func (c *Client) Taint() Taint { return c.taint }

// Quarantine puts the taint on node's Node object (replacing a taint with
// the same key and effect); it changes nothing if the taint is there.
func (c *Client) Quarantine(ctx context.Context, node string) error {
	return c.update(ctx, node, func(taints []Taint) ([]Taint, bool) {
		i := slices.IndexFunc(taints, c.same)
		if i >= 0 && taints[i] == c.taint {
			return taints, false
		}
		if i >= 0 {
			taints[i] = c.taint
			return taints, true
		}
		return append(taints, c.taint), true
	})
}

// Release takes the taint off node's Node object, if it is there.
func (c *Client) Release(ctx context.Context, node string) error {
	return c.update(ctx, node, func(taints []Taint) ([]Taint, bool) {
		out := slices.DeleteFunc(slices.Clone(taints), c.same)
		return out, len(out) != len(taints)
	})
}

// same reports whether t is the quarantine taint, whatever its value.
func (c *Client) same(t Taint) bool { return t.Key == c.taint.Key && t.Effect == c.taint.Effect }

// update reads node's Node, has change compute its new taints and, when
// they changed, writes the Node back under its resourceVersion, again if
// another writer got in between.
func (c *Client) update(ctx context.Context, node string, change func([]Taint) ([]Taint, bool)) error {
	path := "/api/v1/nodes/" + url.PathEscape(node)
	for range attempts {
		var obj map[string]any
		code, body, err := c.do(ctx, http.MethodGet, path, nil)
		switch {
		case err != nil:
			return err
		case code == http.StatusNotFound:
			return fmt.Errorf("node %q: %w", node, ErrNoNode)
		case code != http.StatusOK:
			return apiError("read", node, code, body)
		}
		if err := json.Unmarshal(body, &obj); err != nil {
			return fmt.Errorf("node %q: malformed Node object: %w", node, err)
		}
		spec, _ := obj["spec"].(map[string]any)
		if spec == nil {
			spec = map[string]any{}
			obj["spec"] = spec
		}
		var taints []Taint
		if raw, ok := spec["taints"]; ok {
			b, _ := json.Marshal(raw)
			if err := json.Unmarshal(b, &taints); err != nil {
				return fmt.Errorf("node %q: malformed taints: %w", node, err)
			}
		}
		// Keep what this client does not know of each taint (timeAdded).
		keep := map[Taint]any{}
		if list, ok := spec["taints"].([]any); ok {
			for i, t := range list {
				if i < len(taints) {
					keep[taints[i]] = t
				}
			}
		}
		next, changed := change(taints)
		if !changed {
			return nil
		}
		out := make([]any, 0, len(next))
		for _, t := range next {
			if orig, ok := keep[t]; ok {
				out = append(out, orig)
			} else {
				out = append(out, t)
			}
		}
		spec["taints"] = out
		put, err := json.Marshal(obj)
		if err != nil {
			return err
		}
		code, body, err = c.do(ctx, http.MethodPut, path, put)
		switch {
		case err != nil:
			return err
		case code == http.StatusOK:
			return nil
		case code == http.StatusConflict:
			continue // another writer: read again
		case code == http.StatusNotFound:
			return fmt.Errorf("node %q: %w", node, ErrNoNode)
		default:
			return apiError("update", node, code, body)
		}
	}
	return fmt.Errorf("node %q: changed by others %d times in a row", node, attempts)
}

func (c *Client) do(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	token, err := os.ReadFile(c.tokenFile)
	if err != nil {
		return 0, nil, fmt.Errorf("unable to read the kubernetes token: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.server+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("kubernetes API unavailable: %w", err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return 0, nil, fmt.Errorf("kubernetes API: %w", err)
	}
	if len(out) > maxResponse {
		return 0, nil, fmt.Errorf("kubernetes API: answer larger than %d bytes", maxResponse)
	}
	return resp.StatusCode, out, nil
}

// apiError describes a refused request with the API server's own message.
func apiError(op, node string, code int, body []byte) error {
	var st struct {
		Message string `json:"message"`
	}
	_ = json.Unmarshal(body, &st)
	msg := st.Message
	if msg == "" {
		msg = http.StatusText(code)
	}
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	what := fmt.Sprintf("node %q", node)
	if node == "" {
		what = "the cluster"
	}
	switch code {
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Errorf("kubernetes refused to %s %s (%d): %s", op, what, code, msg)
	}
	return fmt.Errorf("unable to %s %s (%d): %s", op, what, code, msg)
}
