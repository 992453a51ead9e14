package etcdtest

import (
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Endpoints returns every member's client URL, in member order.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.members))
	for i, m := range c.members {
		eps[i] = m.clientURL
	}
	return eps
}

// ClientConfig is a client configuration for all members: TLS with the
// client certificate when the cluster uses TLS, a 5 s dial timeout and no
// client logging.
func (c *Cluster) ClientConfig() clientv3.Config {
	cfg := clientv3.Config{
		Endpoints:   c.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	}
	if c.tlsConf != nil {
		cfg.TLS = c.tlsConf.Clone()
	}
	return cfg
}

// Client returns a client of all members, closed when tb ends.
func (c *Cluster) Client(tb testing.TB) *clientv3.Client {
	tb.Helper()
	cli, err := clientv3.New(c.ClientConfig())
	if err != nil {
		tb.Fatalf("etcdtest: unable to create a client: %v", err)
	}
	tb.Cleanup(func() { cli.Close() })
	return cli
}

// Member describes member i (0-based).
func (c *Cluster) Member(i int) Member {
	m := c.member(i)
	return Member{
		Name:      m.name,
		ClientURL: m.clientURL,
		PeerURL:   m.peerURL,
		DataDir:   m.dataDir,
		Running:   m.running(),
	}
}

// Log returns the output member i wrote since Start (its last 256 KiB),
// with a marker line at each start and kill.
func (c *Cluster) Log(i int) string { return c.member(i).out.String() }

// Kill sends SIGKILL to member i, as `kill -9` would, and waits until its
// process is gone. Killing a stopped member does nothing.
func (c *Cluster) Kill(i int) { c.member(i).kill() }

// Restart kills member i if it runs, starts it again with the same data
// directory and ports, and waits until it serves linearizable reads again:
// it has rejoined the cluster and caught up with the leader.
func (c *Cluster) Restart(i int) {
	c.tb.Helper()
	m := c.member(i)
	m.kill()
	if err := m.start(c.bin); err != nil {
		c.tb.Fatalf("etcdtest: %v", err)
	}
	if err := c.waitAll([]*member{m}); err != nil {
		c.tb.Fatalf("etcdtest: restart of %s: %v", m.name, err)
	}
}

// StopAll kills every member at once (SIGKILL), so no etcd serves until
// StartAll. Acknowledged writes survive: etcd syncs its log before it
// answers.
func (c *Cluster) StopAll() { c.killAll() }

// StartAll starts every stopped member with its data and ports and waits
// until all serve again.
func (c *Cluster) StartAll() {
	c.tb.Helper()
	for _, m := range c.members {
		if err := m.start(c.bin); err != nil {
			c.tb.Fatalf("etcdtest: %v", err)
		}
	}
	if err := c.waitAll(c.members); err != nil {
		c.tb.Fatalf("etcdtest: start of all members: %v", err)
	}
}

func (c *Cluster) member(i int) *member {
	c.tb.Helper()
	if i < 0 || i >= len(c.members) {
		c.tb.Fatalf("etcdtest: no member %d in a cluster of %d", i, len(c.members))
	}
	return c.members[i]
}
