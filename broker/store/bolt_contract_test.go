package store_test

import (
	"path/filepath"
	"testing"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/store/storetest"
)

func TestBoltContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Backend {
		b, err := store.OpenBolt(filepath.Join(t.TempDir(), "broker.db"), store.BoltOpts{})
		if err != nil {
			t.Fatalf("OpenBolt: %v", err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return b
	})
}
