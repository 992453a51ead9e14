package broker

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/keybroker/keybroker/broker/store"
)

// StoreOpts say how OpenStore opens a bolt store; etcd ignores them.
type StoreOpts struct {
	// ReadOnly opens the bolt file for reading, with a shared lock, for
	// inspection while no broker runs.
	ReadOnly bool
	// LockTimeout is how long to wait for the bolt file's lock; 0 means
	// store.DefaultLockTimeout.
	LockTimeout time.Duration
}

// OpenStore opens the store cfg names: the bolt file in the data directory,
// or the etcd cluster.
func OpenStore(ctx context.Context, cfg *Config, opts StoreOpts) (store.Backend, error) {
	switch cfg.Store.Kind {
	case StoreEtcd:
		sc := cfg.Store
		st, err := store.OpenEtcd(ctx, store.EtcdOpts{
			Endpoints: sc.Endpoints, CAFile: sc.CACert, CertFile: sc.Cert, KeyFile: sc.Key,
			Prefix: sc.Prefix, DialTimeout: sc.DialTimeout,
		})
		if err != nil {
			return nil, fmt.Errorf("unable to open the etcd store: %w", err)
		}
		return st, nil
	case StoreBolt, "":
		st, err := store.OpenBolt(filepath.Join(cfg.DataDir, BoltFile), store.BoltOpts{ReadOnly: opts.ReadOnly, Timeout: opts.LockTimeout})
		if err != nil {
			return nil, err
		}
		return st, nil
	}
	return nil, fmt.Errorf("unknown store %q", cfg.Store.Kind)
}
