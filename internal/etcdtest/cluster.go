package etcdtest

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// HealthTimeout bounds every wait for members to serve: at Start, Restart and
// StartAll.
const HealthTimeout = 20 * time.Second

// errPortTaken marks a start that failed because another process bound one
// of the ports chosen for it; Start then retries with fresh ports.
var errPortTaken = errors.New("a chosen port was taken")

// Opts configures Start. The zero value is a single plain-http member.
type Opts struct {
	// Members is the number of etcd servers: 1 when zero; 3 for quorum
	// tests. Any odd number up to 7 is accepted.
	Members int
	// TLS serves clients and peers over TLS with certificates from a fresh
	// ECDSA CA and requires client certificates (etcd's --client-cert-auth).
	// Cluster.CAFile, CertFile and KeyFile then name the CA and a client
	// certificate and key. Off by default: plain http on loopback.
	TLS bool
}

// Cluster is a running etcd cluster on loopback, stopped and removed when
// the test that started it ends. Its methods end the test on failure and so
// must be called from the test's goroutine.
type Cluster struct {
	// CAFile, CertFile and KeyFile are PEM files of the cluster's CA and of
	// a client certificate and its key; empty unless Opts.TLS.
	CAFile, CertFile, KeyFile string

	tb      testing.TB
	bin     string
	dir     string
	tlsConf *tls.Config
	members []*member
}

// Member describes one member of a Cluster.
type Member struct {
	Name      string // etcd's --name, m0, m1, …
	ClientURL string // the endpoint clients use
	PeerURL   string
	DataDir   string
	Running   bool // whether its process is alive
}

// Start starts opts.Members etcd servers on free loopback ports, each with a
// data directory of its own, and waits until every one serves linearizable
// reads (at most HealthTimeout). It registers a cleanup that kills them all
// and removes their data, and logs each member's output tail if the test
// failed.
//
// The etcd binary is $KEYBROKER_ETCD or etcd on PATH (Debian's etcd-server).
// Start skips the test when it is missing, unless the CI environment
// variable is set, in which case it fails: CI machines must run these tests.
func Start(tb testing.TB, opts Opts) *Cluster {
	tb.Helper()
	n := opts.Members
	if n == 0 {
		n = 1
	}
	if n < 0 || n > 7 || n%2 == 0 {
		tb.Fatalf("etcdtest: %d members: want an odd number from 1 to 7", n)
	}
	c := &Cluster{tb: tb, bin: findEtcd(tb), dir: tb.TempDir()}
	if opts.TLS {
		if err := c.writeCerts(); err != nil {
			tb.Fatalf("etcdtest: %v", err)
		}
	}
	tb.Cleanup(c.cleanup)
	var err error
	for attempt := range 3 {
		if err = c.launch(n, attempt); !errors.Is(err, errPortTaken) {
			break
		}
	}
	if err != nil {
		tb.Fatalf("etcdtest: %v", err)
	}
	return c
}

// findEtcd returns the etcd binary's path or skips (fails in CI) the test.
func findEtcd(tb testing.TB) string {
	tb.Helper()
	if p := os.Getenv("KEYBROKER_ETCD"); p != "" {
		return p
	}
	p, err := exec.LookPath("etcd")
	if err == nil {
		return p
	}
	msg := "etcd not on PATH (Debian package etcd-server, or set KEYBROKER_ETCD)"
	if os.Getenv("CI") == "" {
		tb.Skip(msg + "; skipping, set CI to make this a failure")
	}
	tb.Fatal(msg)
	return ""
}

// launch creates n members on fresh ports and starts them; on failure it
// kills whatever it started.
func (c *Cluster) launch(n, attempt int) error {
	ports, err := freePorts(2 * n)
	if err != nil {
		return err
	}
	scheme := "http"
	if c.tlsConf != nil {
		scheme = "https"
	}
	token := make([]byte, 8)
	if _, err := rand.Read(token); err != nil {
		return fmt.Errorf("unable to draw a cluster token: %w", err)
	}
	c.members = make([]*member, n)
	var initial []string
	for i := range n {
		m := &member{
			name:      fmt.Sprintf("m%d", i),
			clientURL: fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[2*i]),
			peerURL:   fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[2*i+1]),
			dataDir:   filepath.Join(c.dir, fmt.Sprintf("try%d-m%d", attempt, i)),
			out:       &tailBuffer{},
		}
		c.members[i] = m
		initial = append(initial, m.name+"="+m.peerURL)
	}
	for _, m := range c.members {
		m.args = c.args(m, strings.Join(initial, ","), "etcdtest-"+hex.EncodeToString(token))
		if err := m.start(c.bin); err != nil {
			c.killAll()
			return err
		}
	}
	if err := c.waitAll(c.members); err != nil {
		c.killAll()
		for _, m := range c.members {
			if strings.Contains(m.out.String(), "address already in use") {
				return fmt.Errorf("%w: %w", errPortTaken, err)
			}
		}
		return err
	}
	return nil
}

// args is m's etcd command line.
func (c *Cluster) args(m *member, initialCluster, token string) []string {
	a := []string{
		"--name", m.name,
		"--data-dir", m.dataDir,
		"--listen-client-urls", m.clientURL,
		"--advertise-client-urls", m.clientURL,
		"--listen-peer-urls", m.peerURL,
		"--initial-advertise-peer-urls", m.peerURL,
		"--initial-cluster", initialCluster,
		"--initial-cluster-token", token,
		"--initial-cluster-state", "new",
		"--logger", "zap",
		"--log-outputs", "stderr",
	}
	if c.tlsConf != nil {
		a = append(a,
			"--trusted-ca-file", c.CAFile,
			"--cert-file", c.serverCert(), "--key-file", c.serverKey(),
			"--client-cert-auth",
			"--peer-trusted-ca-file", c.CAFile,
			"--peer-cert-file", c.serverCert(), "--peer-key-file", c.serverKey(),
			"--peer-client-cert-auth",
		)
	}
	return a
}

// waitAll waits for every member of ms to serve, within HealthTimeout; the
// error quotes the output tail of the member that did not.
func (c *Cluster) waitAll(ms []*member) error {
	deadline := time.Now().Add(HealthTimeout)
	for _, m := range ms {
		if err := m.waitHealthy(deadline, c.tlsConf); err != nil {
			return fmt.Errorf("%w; last output of %s:\n%s", err, m.name, m.out.tail(tailRows))
		}
	}
	return nil
}

func (c *Cluster) killAll() {
	var wg sync.WaitGroup
	for _, m := range c.members {
		wg.Go(m.kill)
	}
	wg.Wait()
}

func (c *Cluster) cleanup() {
	c.killAll()
	if c.tb.Failed() {
		for _, m := range c.members {
			c.tb.Logf("etcdtest: last output of %s:\n%s", m.name, m.out.tail(tailRows))
		}
	}
}
