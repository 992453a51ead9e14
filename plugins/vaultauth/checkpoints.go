package vaultauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/broker/receiptchain"
	"github.com/keybroker/keybroker/broker/store"
)

// Checkpoints of the auth method's receipt chain (docs/receipts.md): the
// auth method signs its chain head with a key of its own, an ECDSA P-256
// key made on first use and kept seal-wrapped at checkpointKeyPath
// (PKCS#8 DER), whenever the head's seq is a multiple of config's
// checkpoint_every (after the login that chains it), and, when receipts
// were chained at all, at the periodic function once checkpoint_interval
// passed since the last checkpoint. The checkpoints are kept at
// checkpointPrefix<seq, 20 digits> (store.Checkpoint, JSON), one per seq,
// and read at checkpoints/; the public key at checkpoint-key.
const (
	checkpointKeyPath = "checkpoint_key"
	checkpointPrefix  = "checkpoint/"
)

var _ store.Checkpoints = (*vaultStore)(nil)

// checkpointSchedule returns the configured checkpoint_every and
// checkpoint_interval, the defaults when the auth method is not
// configured.
func (b *tpmAuthBackend) checkpointSchedule(ctx context.Context, s logical.Storage) (uint64, time.Duration, error) {
	c, err := b.config(ctx, s)
	switch {
	case err != nil:
		return 0, 0, err
	case c == nil:
		return defaultCheckpointEvery, defaultCheckpointInterval, nil
	}
	return c.checkpointEvery, c.checkpointInterval, nil
}

// checkpointer returns the backend's Checkpointer on the configured
// schedule, made on first use and again when the schedule changed, with
// its key (created on first use when there is none).
func (b *tpmAuthBackend) checkpointer(ctx context.Context, s logical.Storage) (*receiptchain.Checkpointer, *receiptchain.Signer, error) {
	every, interval, err := b.checkpointSchedule(ctx, s)
	if err != nil {
		return nil, nil, err
	}
	b.cpMu.Lock()
	defer b.cpMu.Unlock()
	if b.cp != nil && b.cpEvery == every && b.cpInterval == interval {
		return b.cp, b.cpSigner, nil
	}
	if b.cpSigner == nil {
		key, err := loadOrCreateCheckpointKey(ctx, s)
		if err != nil {
			return nil, nil, err
		}
		if b.cpSigner, err = receiptchain.NewSigner(key); err != nil {
			return nil, nil, err
		}
	}
	b.cp, b.cpEvery, b.cpInterval = receiptchain.NewCheckpointer(b.store(s), b.cpSigner, every, interval), every, interval
	return b.cp, b.cpSigner, nil
}

// loadOrCreateCheckpointKey reads the checkpoint key, or makes one and
// stores it when there is none. The caller holds cpMu; a new active node
// reads the key the first one stored.
func loadOrCreateCheckpointKey(ctx context.Context, s logical.Storage) (*ecdsa.PrivateKey, error) {
	raw, err := s.Get(ctx, checkpointKeyPath)
	if err != nil {
		return nil, fmt.Errorf("unable to read the checkpoint key: %w", err)
	}
	if raw != nil {
		k, err := x509.ParsePKCS8PrivateKey(raw.Value)
		key, ok := k.(*ecdsa.PrivateKey)
		if err != nil || !ok || key.Curve != elliptic.P256() {
			return nil, errors.New("the stored checkpoint key is not an ECDSA P-256 PKCS#8 key")
		}
		return key, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("unable to generate the checkpoint key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("unable to encode the checkpoint key: %w", err)
	}
	if err := s.Put(ctx, &logical.StorageEntry{Key: checkpointKeyPath, Value: der, SealWrap: true}); err != nil {
		return nil, fmt.Errorf("unable to store the checkpoint key: %w", err)
	}
	return key, nil
}

// signCheckpoint signs the chain head when it is due (force: whenever it
// moved since the last checkpoint) and returns the head the newest
// checkpoint covers.
func (b *tpmAuthBackend) signCheckpoint(ctx context.Context, s logical.Storage, force bool) (store.ChainHead, error) {
	cp, _, err := b.checkpointer(ctx, s)
	if err != nil {
		return store.ChainHead{}, err
	}
	head, signed, err := cp.Sign(ctx, b.now(), force)
	if err != nil {
		return store.ChainHead{}, fmt.Errorf("unable to sign a receipt checkpoint: %w", err)
	}
	if signed {
		b.Logger().Debug("signed receipt checkpoint", "seq", head.Seq)
	}
	return head, nil
}

// PutCheckpoint implements store.Checkpoints.
func (v *vaultStore) PutCheckpoint(ctx context.Context, c store.Checkpoint) error {
	if err := c.Validate(); err != nil {
		return err
	}
	key := seqKey(checkpointPrefix, c.Seq)
	v.chain.mu.Lock()
	defer v.chain.mu.Unlock()
	switch old, err := v.s.Get(ctx, key); {
	case err != nil:
		return err
	case old != nil:
		return fmt.Errorf("checkpoint of seq %d: %w", c.Seq, store.ErrExists)
	}
	return v.putJSON(ctx, key, c)
}

// ListCheckpoints implements store.Checkpoints.
func (v *vaultStore) ListCheckpoints(ctx context.Context, after uint64, limit int) ([]store.Checkpoint, error) {
	if limit <= 0 || limit > store.MaxListLimit {
		limit = store.MaxListLimit
	}
	keys, err := v.s.List(ctx, checkpointPrefix)
	if err != nil {
		return nil, err
	}
	slices.Sort(keys) // 20 digits: seq order
	var out []store.Checkpoint
	for _, k := range keys {
		if len(out) == limit {
			break
		}
		seq, err := strconv.ParseUint(k, 10, 64)
		if err != nil || seq <= after {
			continue
		}
		c, err := v.GetCheckpoint(ctx, seq)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// GetCheckpoint returns the checkpoint of seq, or store.ErrNotFound.
func (v *vaultStore) GetCheckpoint(ctx context.Context, seq uint64) (store.Checkpoint, error) {
	raw, err := v.s.Get(ctx, seqKey(checkpointPrefix, seq))
	switch {
	case err != nil:
		return store.Checkpoint{}, err
	case raw == nil:
		return store.Checkpoint{}, store.ErrNotFound
	}
	var c store.Checkpoint
	if err := raw.DecodeJSON(&c); err != nil {
		return store.Checkpoint{}, fmt.Errorf("unable to decode checkpoint %d: %w", seq, err)
	}
	return c, nil
}

// parseSeq parses a seq as checkpoints/<seq> names it: decimal, with or
// without the leading zeros of its storage key.
func parseSeq(s string) (uint64, bool) {
	if s == "" || len(s) > 20 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false
	}
	seq, err := strconv.ParseUint(s, 10, 64)
	return seq, err == nil && seq > 0
}
