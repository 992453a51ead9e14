package broker

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/broker/receiptchain"
)

// ReceiptCheckpointsFile is the receipt_checkpoints block: how often the
// broker signs the head of its store's receipt chain (docs/receipts.md),
// and with which key. Checkpoints are always on; without the block the
// defaults apply.
//
//	receipt_checkpoints {
//	  every    = 1000   # sign once this many receipts were added since the last checkpoint; default 1000
//	  interval = "1m"   # sign at least this often while receipts are added; 1s to 24h, default 1m
//	  key_file = "checkpoint-key.pem"  # ECDSA P-256 (PEM); default data_dir/receipts/checkpoint-key.pem, created 0600
//	}
//
// Brokers sharing an etcd store each sign with their own key unless they
// are given the same key_file; "keybroker receipts verify" takes every key.
type ReceiptCheckpointsFile struct {
	Every    *int   `hcl:"every,optional"`
	Interval string `hcl:"interval,optional"`
	KeyFile  string `hcl:"key_file,optional"`
}

// ReceiptCheckpointsConfig is the parsed receipt_checkpoints block. Zero
// Every and Interval mean the defaults.
type ReceiptCheckpointsConfig struct {
	Every    uint64
	Interval time.Duration
	// KeyFile is the operator's key, loaded as is; empty: the broker's
	// own in data_dir/receipts (CheckpointKeyFile), created on first use.
	KeyFile string
}

// Defaults and bounds of the receipt_checkpoints block.
const (
	DefaultCheckpointEvery    = 1000
	MaxCheckpointEvery        = 1_000_000
	DefaultCheckpointInterval = time.Minute
	MaxCheckpointInterval     = 24 * time.Hour
	// ReceiptsDir holds the checkpoint key the broker makes
	// (CheckpointKeyFile) when key_file is not set.
	ReceiptsDir       = "receipts"
	CheckpointKeyFile = "checkpoint-key.pem"
)

// buildCheckpoints validates the receipt_checkpoints block (nil: absent,
// the defaults). A key_file must hold an ECDSA P-256 key: the broker never
// writes an operator's key file.
func (rf *ReceiptCheckpointsFile) buildCheckpoints(abs func(string) string, at spot, p *problems) ReceiptCheckpointsConfig {
	rc := ReceiptCheckpointsConfig{Every: DefaultCheckpointEvery, Interval: DefaultCheckpointInterval}
	if rf == nil {
		return rc
	}
	if rf.Every != nil {
		if *rf.Every < 1 || *rf.Every > MaxCheckpointEvery {
			p.at(at.attr("every"), "receipt_checkpoints: every must be between 1 and %d", MaxCheckpointEvery)
		} else {
			rc.Every = uint64(*rf.Every)
		}
	}
	if d, ok := parseDuration(rf.Interval, "interval", at, p); ok {
		if d < time.Second || d > MaxCheckpointInterval {
			p.at(at.attr("interval"), "receipt_checkpoints: interval must be between 1s and %s", MaxCheckpointInterval)
		} else {
			rc.Interval = d
		}
	}
	switch {
	case at.has("key_file") && rf.KeyFile == "":
		p.at(at.attr("key_file"), "receipt_checkpoints: key_file cannot be empty; leave it out for a key in data_dir")
	case rf.KeyFile != "":
		rc.KeyFile = abs(rf.KeyFile)
		if _, err := issue.LoadSigningKey(rc.KeyFile); err != nil {
			p.at(at.attr("key_file"), "receipt_checkpoints: key_file %s: %v", rf.KeyFile, err)
		}
	}
	return rc
}

// orDefaults is rc with the defaults for its zero fields.
func (rc ReceiptCheckpointsConfig) orDefaults() ReceiptCheckpointsConfig {
	if rc.Every == 0 {
		rc.Every = DefaultCheckpointEvery
	}
	if rc.Interval <= 0 {
		rc.Interval = DefaultCheckpointInterval
	}
	return rc
}

// CheckpointKeyPath is where the checkpoint key of c lives: key_file, or
// the broker's own in data_dir/receipts.
func (c *Config) CheckpointKeyPath() string {
	if c.ReceiptCheckpoints.KeyFile != "" {
		return c.ReceiptCheckpoints.KeyFile
	}
	return filepath.Join(c.DataDir, ReceiptsDir, CheckpointKeyFile)
}

// loadCheckpointSigner loads (or, for the broker's own key, creates) the
// checkpoint key of c.
func loadCheckpointSigner(c *Config) (*receiptchain.Signer, error) {
	load := issue.LoadSigningKey
	if c.ReceiptCheckpoints.KeyFile == "" {
		if err := os.MkdirAll(filepath.Join(c.DataDir, ReceiptsDir), 0o700); err != nil {
			return nil, fmt.Errorf("unable to create the checkpoint key's directory: %w", err)
		}
		load = issue.LoadOrCreateSigningKey
	}
	key, err := load(c.CheckpointKeyPath())
	if err != nil {
		return nil, fmt.Errorf("unable to load the checkpoint key: %w", err)
	}
	return receiptchain.NewSigner(key)
}

// CheckpointPublicKey returns the PEM public key of c's checkpoint key,
// without creating the key.
func CheckpointPublicKey(c *Config) ([]byte, error) {
	key, err := issue.LoadSigningKey(c.CheckpointKeyPath())
	if err != nil {
		return nil, fmt.Errorf("unable to load the checkpoint key: %w", err)
	}
	s, err := receiptchain.NewSigner(key)
	if err != nil {
		return nil, err
	}
	return s.PublicKeyPEM()
}
