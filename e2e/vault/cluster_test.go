package vaulte2e

// A challenge across the nodes of an HA cluster: three cores on one storage
// and HA lock, the agent's challenge and login sent to different cores by a
// proxy that routes each request to the core the test names.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// msgChallengeUsed is the plugin's answer to a login whose challenge is
// unknown or already consumed.
const msgChallengeUsed = "challenge: challenge is unknown or already used"

// haCluster is a Vault test cluster of several cores sharing one storage
// and HA lock: one active core, the others standbys that forward every
// request to it (Vault OSS has no performance standbys). Its root client
// talks to the active core.
type haCluster struct {
	*cluster
	direct *http.Client // trusts the cluster CA, follows no redirect
}

// startHACluster starts a cluster of n cores, as startCluster starts one,
// and waits until one core is active and the others forward to it.
func startHACluster(t *testing.T, n int) *haCluster {
	t.Helper()
	start := time.Now()
	cl := startCores(t, n)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(cl.CACertPEM) {
		t.Fatal("the cluster CA holds no certificate")
	}
	c := &haCluster{
		cluster: cl,
		// No timeout of its own: a proxied request is bounded by the
		// agent's, the test's own requests by their contexts.
		direct: &http.Client{
			Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	active, err := c.waitActive(30*time.Second, -1)
	if err != nil {
		t.Fatal(err)
	}
	c.useActive(active)
	t.Logf("Vault test cluster of %d cores up in %v; core %d active at %s", n, time.Since(start).Round(time.Millisecond), active, c.addr)
	return c
}

// coreAddr is core i's API address, https://127.0.0.1:port.
func (c *haCluster) coreAddr(i int) string { return c.Cores[i].Client.Address() }

// useActive points the root client (and so the harness's helpers) at core i.
func (c *haCluster) useActive(i int) {
	c.root = c.Cores[i].Client
	c.addr = c.coreAddr(i)
}

// send sends body to core i at path (without /v1/) with token, if any,
// and returns Vault's status and answer. A standby that cannot forward
// answers with a redirect, which send returns as it is.
func (c *haCluster) send(ctx context.Context, i int, method, path, token string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.coreAddr(i)+"/v1/"+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if token != "" {
		req.Header.Set("X-Vault-Token", token)
	}
	resp, err := c.direct.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// active asks every core for sys/leader and returns the one active core,
// having checked that every core agrees on it, that sys/leader agrees with
// the core's own state, and that every standby forwards a request to it
// (a token lookup, which a standby cannot answer itself).
func (c *haCluster) active() (int, error) {
	active, leaders := -1, make([]string, len(c.Cores))
	for i, core := range c.Cores {
		l, err := core.Client.Sys().Leader()
		if err != nil {
			return -1, fmt.Errorf("core %d: sys/leader: %w", i, err)
		}
		standby, err := core.Standby()
		switch {
		case err != nil:
			return -1, fmt.Errorf("core %d: %w", i, err)
		case !l.HAEnabled:
			return -1, fmt.Errorf("core %d: HA not enabled", i)
		case l.IsSelf == standby:
			return -1, fmt.Errorf("core %d: sys/leader is_self=%t but standby=%t", i, l.IsSelf, standby)
		case l.IsSelf && active >= 0:
			return -1, fmt.Errorf("cores %d and %d are both active", active, i)
		case l.IsSelf:
			active = i
		}
		leaders[i] = l.LeaderAddress
	}
	if active < 0 {
		return -1, fmt.Errorf("no core is active (leaders %q)", leaders)
	}
	for i, l := range leaders {
		if l != c.coreAddr(active) {
			return -1, fmt.Errorf("core %d follows %q, the active core %d is at %s", i, l, active, c.coreAddr(active))
		}
		if i == active {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		status, body, err := c.send(ctx, i, http.MethodGet, "auth/token/lookup-self", c.RootToken, nil)
		cancel()
		if err != nil || status != http.StatusOK {
			return -1, fmt.Errorf("standby %d does not forward yet: %d %s %v", i, status, body, err)
		}
	}
	return active, nil
}

// waitActive waits until active answers with a core other than not.
func (c *haCluster) waitActive(timeout time.Duration, not int) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		i, err := c.active()
		if err == nil && i == not {
			err = fmt.Errorf("core %d is still active", i)
		}
		if err == nil {
			return i, nil
		}
		if time.Now().After(deadline) {
			return -1, fmt.Errorf("cluster not settled within %v: %w", timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// stepDown makes the active core i step down, as `vault operator
// step-down` does, and returns the core active after it.
func (c *haCluster) stepDown(i int) (int, error) {
	if err := c.Cores[i].Client.Sys().StepDown(); err != nil {
		return -1, fmt.Errorf("step down core %d: %w", i, err)
	}
	return c.waitActive(30*time.Second, i)
}

// standbys lists the cores other than active.
func (c *haCluster) standbys(active int) []int {
	var out []int
	for i := range c.Cores {
		if i != active {
			out = append(out, i)
		}
	}
	return out
}

// requireToken checks, through the active core, that token works and came
// from a login at auth/tpm with the role's policy.
func (c *haCluster) requireToken(t *testing.T, active int, token string) {
	t.Helper()
	cl, err := c.Cores[active].Client.Clone()
	if err != nil {
		t.Fatal(err)
	}
	cl.SetToken(token)
	self, err := cl.Auth().Token().LookupSelf()
	if err != nil {
		t.Fatalf("lookup-self on the active core %d: %v", active, err)
	}
	policies, _ := self.TokenPolicies()
	if path, _ := self.Data["path"].(string); path != "auth/tpm/login" || !slices.Contains(policies, "node-read") {
		t.Errorf("lookup-self: path %q, policies %v; want auth/tpm/login and node-read", path, policies)
	}
}

// requireReplayRefused sends login, a login request already answered, to
// every core in turn: each must refuse it (403, the challenge is used) and
// create no token.
func (c *haCluster) requireReplayRefused(t *testing.T, login []byte, when string) {
	t.Helper()
	for i := range c.Cores {
		before := c.accessors(t)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		status, body, err := c.send(ctx, i, http.MethodPost, "auth/tpm/login", "", login)
		cancel()
		if err != nil {
			t.Fatalf("replay %s to core %d: %v", when, i, err)
		}
		var answer struct {
			Errors []string `json:"errors"`
		}
		json.Unmarshal(body, &answer)
		if status != http.StatusForbidden || !slices.Contains(answer.Errors, msgChallengeUsed) {
			t.Errorf("replay %s to core %d: %d %s; want 403 %q", when, i, status, redact(string(body)), msgChallengeUsed)
		}
		if after := c.accessors(t); len(after) != len(before) {
			t.Errorf("replay %s to core %d created a token (%d → %d accessors)", when, i, len(before), len(after))
		}
	}
}

// routedExchange is an exchange and the core it went to (-1: none, the
// proxy answered itself).
type routedExchange struct {
	exchange
	core int
}

// coreRouter is a TLS server of its own between the agent and the cluster
// that sends each request to the core its route names, without following
// redirects: a standby that fails to forward shows as a 307, not as a
// request quietly served by the active core.
type coreRouter struct {
	url    string
	caFile string

	mu        sync.Mutex
	route     func(path string) (int, error) // path without /v1/
	exchanges []routedExchange
}

func startCoreRouter(t *testing.T, c *haCluster) *coreRouter {
	t.Helper()
	p := &coreRouter{}
	p.url, p.caFile = serveTLS(t, "router", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		e := routedExchange{exchange: exchange{path: strings.TrimPrefix(r.URL.Path, "/v1/"), request: body}, core: -1}
		p.mu.Lock()
		route := p.route
		p.mu.Unlock()
		// Routes may take their time (a step-down): outside the lock.
		core, err := route(e.path)
		if err == nil {
			e.core = core
			err = p.forward(r, c.coreAddr(core), c.direct, &e.exchange)
		}
		if err != nil {
			e.status = http.StatusBadGateway
			e.response, _ = json.Marshal(map[string][]string{"errors": {"proxy: " + err.Error()}})
		}
		p.mu.Lock()
		p.exchanges = append(p.exchanges, e)
		p.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(e.status)
		w.Write(e.response)
	})
	return p
}

// forward sends r, whose body e holds, to addr and records the answer in e.
func (p *coreRouter) forward(r *http.Request, addr string, upstream *http.Client, e *exchange) error {
	req, err := http.NewRequestWithContext(r.Context(), r.Method, addr+r.URL.RequestURI(), bytes.NewReader(e.request))
	if err != nil {
		return err
	}
	req.Header = r.Header.Clone()
	resp, err := upstream.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	e.status = resp.StatusCode
	e.response, err = io.ReadAll(resp.Body)
	return err
}

// setRoute sets the core each later request goes to.
func (p *coreRouter) setRoute(route func(path string) (int, error)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.route = route
}

// requireRouted returns the last exchange on path, which must have gone to
// core and been answered 200.
func (p *coreRouter) requireRouted(t *testing.T, path string, core int) routedExchange {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.exchanges) - 1; i >= 0; i-- {
		if e := p.exchanges[i]; e.path == path {
			if e.core != core || e.status != http.StatusOK {
				t.Fatalf("%s went to core %d and was answered %d: %s; want core %d, 200", path, e.core, e.status, e.response, core)
			}
			return e
		}
	}
	t.Fatalf("no request to %s went through the router", path)
	return routedExchange{}
}

// TestChallengeAcrossClusterNodes: in a cluster of three cores a challenge
// asked for through one standby is answered through another standby, once:
// the same login request sent again to each core is refused and issues no
// token. Then the active core steps down between challenge and login: the
// new active core, with its own plugin process, accepts the challenge the
// old one issued (it lives in the cluster's storage, not in a process),
// again once.
func TestChallengeAcrossClusterNodes(t *testing.T) {
	skipUnlessE2E(t)
	requireTools(t)
	c := startHACluster(t, 3)
	c.enablePlugin(t)
	ca := newLocalCA(t)
	n := newNode(t, ca)
	c.configure(t, map[string]localCA{"swtpm": ca})
	c.writeRole(t, "web", n.pcr7, nil)
	p := startCoreRouter(t, c)

	login := func(what string) loginOutput {
		t.Helper()
		r := runAgent(t, n.home, vaultLoginArgs(p.url, p.caFile, n.tpm, "web", "-format", "json")...)
		if r.code != 0 {
			t.Fatalf("vault-login %s: exit %d: %s", what, r.code, r.stderr)
		}
		out := parseLoginOutput(t, r)
		if out.Auth.ClientToken == "" {
			t.Fatalf("vault-login %s printed no token: %+v", what, out)
		}
		return out
	}

	// Challenge through standby a, login through standby b.
	active, err := c.active()
	if err != nil {
		t.Fatal(err)
	}
	sb := c.standbys(active)
	a, b := sb[0], sb[1]
	t.Logf("core %d active; challenge through standby %d, login through standby %d", active, a, b)
	p.setRoute(func(path string) (int, error) {
		switch path {
		case "auth/tpm/challenge":
			return a, nil
		case "auth/tpm/login":
			return b, nil
		}
		return -1, fmt.Errorf("unexpected request to %s", path)
	})
	out := login("through two standbys")
	p.requireRouted(t, "auth/tpm/challenge", a)
	e := p.requireRouted(t, "auth/tpm/login", b)
	c.requireToken(t, active, out.Auth.ClientToken)
	c.requireReplayRefused(t, e.request, "of the login through standby "+fmt.Sprint(b))

	// The active core steps down after issuing the challenge; the login
	// goes through it, now a standby, to the new active core.
	old := active
	p.setRoute(func(path string) (int, error) {
		switch path {
		case "auth/tpm/challenge":
			return a, nil
		case "auth/tpm/login":
			if _, err := c.stepDown(old); err != nil {
				return -1, err
			}
			return old, nil
		}
		return -1, fmt.Errorf("unexpected request to %s", path)
	})
	out = login("across a step-down")
	p.requireRouted(t, "auth/tpm/challenge", a)
	e = p.requireRouted(t, "auth/tpm/login", old)
	if active, err = c.active(); err != nil {
		t.Fatal(err)
	}
	if active == old {
		t.Fatalf("core %d is active again: the login may have met the plugin that issued the challenge", old)
	}
	t.Logf("core %d stepped down, core %d active", old, active)
	c.useActive(active)
	c.requireToken(t, active, out.Auth.ClientToken)
	c.requireReplayRefused(t, e.request, "of the login after the step-down")
}
