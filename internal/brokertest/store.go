package brokertest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/etcdtest"
)

// StoreEnv names the environment variable that picks the store tests run
// on: unset or "bolt" for the embedded bbolt file, "etcd" for a real etcd
// server started for the test (`make test-etcd` sets it).
const StoreEnv = "KEYBROKER_TEST_STORE"

// EtcdStore reports whether tests run on etcd (StoreEnv=etcd).
func EtcdStore() bool { return os.Getenv(StoreEnv) == "etcd" }

// OpenStore opens the store a test's broker uses, closed when the test
// ends: a bbolt file in a temporary directory, or, with StoreEnv=etcd, an
// etcd server started for the test.
func OpenStore(tb testing.TB) store.Backend {
	tb.Helper()
	if !EtcdStore() {
		st, err := store.OpenBolt(filepath.Join(tb.TempDir(), "store.db"), store.BoltOpts{})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { st.Close() })
		return st
	}
	c := etcdtest.Start(tb, etcdtest.Opts{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := store.OpenEtcd(ctx, store.EtcdOpts{Endpoints: c.Endpoints(), Prefix: fmt.Sprintf("/test-%d/", time.Now().UnixNano())})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	return st
}

// EtcdBlock is the broker.hcl store block of an etcd server started for
// the test, or "" on bolt (StoreEnv): what an e2e broker appends to its
// configuration.
func EtcdBlock(tb testing.TB) string {
	tb.Helper()
	if !EtcdStore() {
		return ""
	}
	c := etcdtest.Start(tb, etcdtest.Opts{})
	return fmt.Sprintf("\nstore \"etcd\" {\n  endpoints = [%q]\n  prefix = %q\n}\n", c.Endpoints()[0], fmt.Sprintf("/e2e-%d/", time.Now().UnixNano()))
}
