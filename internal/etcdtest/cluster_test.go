package etcdtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs etcd; skipped with -short")
	}
}

// ctxT is a context bounded by d and by the test's end.
func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// mustGet reads key through cli and fails the test unless it holds want.
func mustGet(t *testing.T, cli *clientv3.Client, key, want string) {
	t.Helper()
	resp, err := cli.Get(ctxT(t, 5*time.Second), key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != want {
		t.Fatalf("get %s = %v, want %q", key, resp.Kvs, want)
	}
}

// memberClient is a client of member i alone.
func memberClient(t *testing.T, c *Cluster, i int) *clientv3.Client {
	t.Helper()
	cfg := c.ClientConfig()
	cfg.Endpoints = []string{c.Member(i).ClientURL}
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatalf("client of member %d: %v", i, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// putRetry writes key within d, retrying while the cluster elects a leader
// or the client moves off a dead member.
func putRetry(t *testing.T, cli *clientv3.Client, key, val string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		_, err := cli.Put(ctxT(t, time.Second), key, val)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("put %s not accepted within %v: %v", key, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkTxn checks that a compare-and-swap commits once and is refused once
// its condition no longer holds.
func checkTxn(t *testing.T, cli *clientv3.Client) {
	t.Helper()
	ctx := ctxT(t, 5*time.Second)
	if _, err := cli.Put(ctx, "txn", "a"); err != nil {
		t.Fatalf("put: %v", err)
	}
	cas := func() bool {
		resp, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.Value("txn"), "=", "a")).
			Then(clientv3.OpPut("txn", "b")).
			Commit()
		if err != nil {
			t.Fatalf("txn: %v", err)
		}
		return resp.Succeeded
	}
	if !cas() {
		t.Fatal("first compare-and-swap did not succeed")
	}
	if cas() {
		t.Fatal("second compare-and-swap succeeded on a changed value")
	}
	mustGet(t, cli, "txn", "b")
}

func TestSingleMember(t *testing.T) {
	skipShort(t)
	c := Start(t, Opts{})
	if eps := c.Endpoints(); len(eps) != 1 || !strings.HasPrefix(eps[0], "http://127.0.0.1:") {
		t.Fatalf("endpoints %v, want one http loopback URL", eps)
	}
	if m := c.Member(0); !m.Running || m.Name != "m0" || m.DataDir == "" {
		t.Fatalf("member 0 = %+v", m)
	}
	if c.CAFile != "" || c.CertFile != "" || c.KeyFile != "" {
		t.Fatal("certificate files set without TLS")
	}
	cli := c.Client(t)
	if _, err := cli.Put(ctxT(t, 5*time.Second), "k", "v"); err != nil {
		t.Fatalf("put: %v", err)
	}
	mustGet(t, cli, "k", "v")
	checkTxn(t, cli)
	if !strings.Contains(c.Log(0), "etcdtest: starting m0") {
		t.Error("member output not captured")
	}
}

func TestThreeMembers(t *testing.T) {
	skipShort(t)
	c := Start(t, Opts{Members: 3})
	cli := c.Client(t)
	ml, err := cli.MemberList(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatalf("member list: %v", err)
	}
	if len(ml.Members) != 3 {
		t.Fatalf("%d members listed, want 3", len(ml.Members))
	}
	checkTxn(t, cli)
	for i := range 3 {
		mustGet(t, memberClient(t, c, i), "txn", "b")
	}
}

// TestKillKeepsQuorum kills one of three members: the other two still
// accept writes; restarted, the member catches up on what it missed.
func TestKillKeepsQuorum(t *testing.T) {
	skipShort(t)
	c := Start(t, Opts{Members: 3})
	cli := c.Client(t)
	c.Kill(1)
	if c.Member(1).Running {
		t.Fatal("member 1 runs after Kill")
	}
	u, err := url.Parse(c.Member(1).ClientURL)
	if err != nil {
		t.Fatal(err)
	}
	if conn, err := net.DialTimeout("tcp", u.Host, time.Second); err == nil {
		conn.Close()
		t.Fatalf("killed member still listens on %s", u.Host)
	}
	putRetry(t, cli, "during", "outage", 10*time.Second)
	mustGet(t, cli, "during", "outage")

	c.Restart(1)
	if !c.Member(1).Running {
		t.Fatal("member 1 not running after Restart")
	}
	if u2, _ := url.Parse(c.Member(1).ClientURL); u2.Host != u.Host {
		t.Fatalf("member 1 moved from %s to %s", u.Host, u2.Host)
	}
	st, err := cli.Status(ctxT(t, 5*time.Second), c.Member(1).ClientURL)
	if err != nil {
		t.Fatalf("status of restarted member: %v", err)
	}
	if st.Leader == 0 || len(st.Errors) != 0 {
		t.Fatalf("restarted member: leader %x, errors %v", st.Leader, st.Errors)
	}
	mustGet(t, memberClient(t, c, 1), "during", "outage")
}

// TestStopAllStartAll stops every member: requests fail; started again,
// the cluster serves the data written before, to the same client.
func TestStopAllStartAll(t *testing.T) {
	skipShort(t)
	c := Start(t, Opts{Members: 3})
	cli := c.Client(t)
	if _, err := cli.Put(ctxT(t, 5*time.Second), "kept", "yes"); err != nil {
		t.Fatalf("put: %v", err)
	}
	c.StopAll()
	for i := range 3 {
		if c.Member(i).Running {
			t.Fatalf("member %d runs after StopAll", i)
		}
	}
	if _, err := cli.Get(ctxT(t, 500*time.Millisecond), "kept"); err == nil {
		t.Fatal("get succeeded with every member stopped")
	}
	c.StartAll()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := cli.Get(ctxT(t, time.Second), "kept")
		if err == nil {
			if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "yes" {
				t.Fatalf("after StartAll kept = %v, want yes", resp.Kvs)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("client did not recover after StartAll: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestTLS serves over TLS with client certificates: the generated files
// work, a client without a certificate and a plain-http client are refused.
func TestTLS(t *testing.T) {
	skipShort(t)
	c := Start(t, Opts{TLS: true})
	for _, f := range []string{c.CAFile, c.CertFile, c.KeyFile} {
		if fi, err := os.Stat(f); err != nil || fi.Size() == 0 {
			t.Fatalf("certificate file %q: %v", f, err)
		}
	}
	if ep := c.Endpoints()[0]; !strings.HasPrefix(ep, "https://127.0.0.1:") {
		t.Fatalf("endpoint %s is not https", ep)
	}
	cli := c.Client(t)
	if _, err := cli.Put(ctxT(t, 5*time.Second), "k", "tls"); err != nil {
		t.Fatalf("put over TLS: %v", err)
	}
	mustGet(t, cli, "k", "tls")

	caPEM, err := os.ReadFile(c.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	host := strings.TrimPrefix(c.Endpoints()[0], "https://")
	refused := map[string]clientv3.Config{
		"no client certificate": {Endpoints: c.Endpoints(), TLS: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
		"plain http":            {Endpoints: []string{"http://" + host}},
	}
	for name, cfg := range refused {
		t.Run(name, func(t *testing.T) {
			cfg.DialTimeout, cfg.Logger = time.Second, zap.NewNop()
			bad, err := clientv3.New(cfg)
			if err != nil {
				return // refused while dialling
			}
			defer bad.Close()
			if _, err := bad.Get(ctxT(t, 2*time.Second), "k"); err == nil {
				t.Fatal("read succeeded")
			}
		})
	}
}

// recorder is a testing.TB that records Skip and Fatal instead of ending the
// real test.
type recorder struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (r *recorder) Skip(args ...any) {
	r.skipped, r.msg = true, fmt.Sprint(args...)
	runtime.Goexit()
}

func (r *recorder) Fatal(args ...any) {
	r.failed, r.msg = true, fmt.Sprint(args...)
	runtime.Goexit()
}

func (r *recorder) Fatalf(format string, args ...any) { r.Fatal(fmt.Sprintf(format, args...)) }

func TestStartWithoutEtcd(t *testing.T) {
	tests := []struct {
		name, ci    string
		wantSkipped bool
	}{
		{name: "skips outside CI", ci: "", wantSkipped: true},
		{name: "fails in CI", ci: "true", wantSkipped: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("PATH", t.TempDir())
			t.Setenv("KEYBROKER_ETCD", "")
			t.Setenv("CI", tt.ci)
			r := &recorder{TB: t}
			done := make(chan struct{})
			go func() {
				defer close(done)
				Start(r, Opts{})
			}()
			<-done
			if r.skipped != tt.wantSkipped || r.failed == tt.wantSkipped {
				t.Fatalf("skipped=%v failed=%v, want skipped=%v", r.skipped, r.failed, tt.wantSkipped)
			}
			if !strings.Contains(r.msg, "etcd not on PATH") {
				t.Errorf("message %q does not name the missing binary", r.msg)
			}
		})
	}
}

// TestStartFailureQuotesLog starts a "member" that exits at once: Start
// fails fast and its message carries the process's output.
func TestStartFailureQuotesLog(t *testing.T) {
	skipShort(t)
	script := t.TempDir() + "/etcd"
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho 'broken etcd: bad flag' >&2\nexit 3\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KEYBROKER_ETCD", script)
	r := &recorder{TB: t}
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		Start(r, Opts{})
	}()
	<-done
	if !r.failed {
		t.Fatal("Start did not fail")
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("Start took %v to notice the exit", time.Since(start))
	}
	for _, want := range []string{"etcd member m0 exited", "exit status 3", "broken etcd: bad flag"} {
		if !strings.Contains(r.msg, want) {
			t.Errorf("message %q lacks %q", r.msg, want)
		}
	}
}
