// Package etcdtest runs real etcd servers on loopback for tests: a single
// member or a 3-member cluster, each member a separate etcd process with
// its own data directory, which a test can kill (SIGKILL), restart with its
// data, or stop and start all together.
//
// Usage:
//
//	func TestReplicas(t *testing.T) {
//		if testing.Short() {
//			t.Skip("runs etcd; skipped with -short")
//		}
//		c := etcdtest.Start(t, etcdtest.Opts{Members: 3})
//		cli := c.Client(t) // all members; closed when t ends
//		if _, err := cli.Put(ctx, "k", "v"); err != nil { ... }
//
//		c.Kill(1)    // kill -9 one member: 2 of 3 still form a quorum
//		c.Restart(1) // same data and ports; returns once it has caught up
//		c.StopAll()  // no etcd at all: requests fail until StartAll
//		c.StartAll() // every member back with its data
//	}
//
// A component under test gets c.Endpoints() (client URLs such as
// http://127.0.0.1:40123) and, with Opts{TLS: true}, c.CAFile, c.CertFile and
// c.KeyFile: PEM files of a fresh ECDSA CA and of a client certificate and
// key that the members require (etcd's --client-cert-auth).
//
// The etcd binary is $KEYBROKER_ETCD or etcd on PATH; Debian's etcd-server
// package (3.4) provides it and .ci/run installs it. Without it Start skips
// the test, unless the CI environment variable is set: then it fails.
//
// Waits for members to serve are bounded by HealthTimeout and fail the test
// with the tail of the member's output; the whole output is in c.Log(i), and
// every member's tail is logged when the test fails. Methods end the test on
// failure and must be called from the test's goroutine.
package etcdtest
