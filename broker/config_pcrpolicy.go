package broker

import (
	"crypto/ecdsa"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/broker/pcrpolicy"
)

// PCRPolicyFile is the pcr_policy block: the keys that sign the approvals
// of pcr_policy "authorized" releases (package pcrpolicy). Without it the
// broker signs with its own key in data_dir, created on first start —
// except with store "etcd", where every replica must sign with the same
// key: there key_file is required, and without a pcr_policy block the
// broker has no signing key and refuses policies with an authorized
// release (CheckPolicies: at start and at each reload). Key files
// must not be readable by group or others. Publish the public keys
// ("keybroker pcr-policy keys") so operators can pin them.
//
//	pcr_policy {
//	  key_file      = "pcr-policy.pem"       # ECDSA P-256 (PEM, 0600); default data_dir/pcr-policy/signing-key.pem, created 0600; required with store "etcd"
//	  next_key_file = "pcr-policy-next.pem"  # optional: the next key; new blobs are bound to both, so making it key_file later keeps them opening
//	}
type PCRPolicyFile struct {
	KeyFile     string `hcl:"key_file,optional"`
	NextKeyFile string `hcl:"next_key_file,optional"`
}

// PCRPolicyConfig is the parsed pcr_policy block.
type PCRPolicyConfig struct {
	// KeyFile is the operator's signing key, loaded as is; empty: the
	// broker's own in data_dir/pcr-policy (PCRPolicyKeyFile).
	KeyFile string
	// NextKeyFile is the next signing key; empty: none.
	NextKeyFile string
}

// Where the broker keeps the PCR-policy signing key it makes when key_file
// is not set.
const (
	PCRPolicyDir     = "pcr-policy"
	PCRPolicyKeyFile = "signing-key.pem"
)

// build validates the pcr_policy block: a key_file and next_key_file must
// hold different ECDSA P-256 keys; the broker never writes them.
func (pf *PCRPolicyFile) build(abs func(string) string, storeKind string, at spot, p *problems) PCRPolicyConfig {
	pc := PCRPolicyConfig{KeyFile: abs(pf.KeyFile), NextKeyFile: abs(pf.NextKeyFile)}
	if storeKind == StoreEtcd && pf.KeyFile == "" && !at.has("key_file") {
		p.at(at.label, "pcr_policy: key_file is required with store \"etcd\": every replica must sign with the same key")
	}
	keys := map[string]*ecdsa.PrivateKey{}
	for _, f := range []struct{ attr, path, raw string }{{"key_file", pc.KeyFile, pf.KeyFile}, {"next_key_file", pc.NextKeyFile, pf.NextKeyFile}} {
		switch {
		case at.has(f.attr) && f.raw == "":
			p.at(at.attr(f.attr), "pcr_policy: %s cannot be empty; leave it out", f.attr)
		case f.raw != "":
			k, err := issue.LoadKey(f.path, pcrPolicyKeyOpts)
			if err != nil {
				p.at(at.attr(f.attr), "pcr_policy: %s %s: %v", f.attr, f.raw, err)
				continue
			}
			keys[f.attr] = k
		}
	}
	if cur, next := keys["key_file"], keys["next_key_file"]; cur != nil && next != nil && cur.PublicKey.Equal(&next.PublicKey) {
		p.at(at.attr("next_key_file"), "pcr_policy: next_key_file holds the same key as key_file")
	}
	return pc
}

// PCRPolicyKeyPath is where the current PCR-policy signing key of c lives:
// key_file, or the broker's own in data_dir/pcr-policy.
func (c *Config) PCRPolicyKeyPath() string {
	if c.PCRPolicy.KeyFile != "" {
		return c.PCRPolicy.KeyFile
	}
	return filepath.Join(c.DataDir, PCRPolicyDir, PCRPolicyKeyFile)
}

// pcrPolicyKeyOpts load a PCR-policy signing key: named so in errors,
// refused when group or others may read it.
var pcrPolicyKeyOpts = issue.KeyOpts{What: "PCR-policy signing key", OwnerOnly: true}

// errNoEtcdPCRPolicyKey is why a broker on store "etcd" without
// pcr_policy.key_file has no PCR-policy signing key.
var errNoEtcdPCRPolicyKey = errors.New("pcr_policy: key_file is required with store \"etcd\": every replica must sign with the same key")

// loadPCRPolicySigner loads the PCR-policy signing keys of c, creating the
// broker's own key (0600, atomically) when key_file is not set and create
// is true. With store "etcd" and no key_file it returns
// errNoEtcdPCRPolicyKey: replicas making keys of their own would each
// sign approvals the others' blobs refuse.
func loadPCRPolicySigner(c *Config, create bool) (*pcrpolicy.Signer, error) {
	if c.PCRPolicy.KeyFile == "" && c.Store.Kind == StoreEtcd {
		return nil, errNoEtcdPCRPolicyKey
	}
	load := issue.LoadKey
	if c.PCRPolicy.KeyFile == "" && create {
		if err := os.MkdirAll(filepath.Join(c.DataDir, PCRPolicyDir), 0o700); err != nil {
			return nil, fmt.Errorf("unable to create the PCR-policy key's directory: %w", err)
		}
		load = issue.LoadOrCreateKey
	}
	cur, err := load(c.PCRPolicyKeyPath(), pcrPolicyKeyOpts)
	if err != nil {
		return nil, err
	}
	var next *ecdsa.PrivateKey
	if c.PCRPolicy.NextKeyFile != "" {
		nextOpts := pcrPolicyKeyOpts
		nextOpts.What = "next PCR-policy signing key"
		if next, err = issue.LoadKey(c.PCRPolicy.NextKeyFile, nextOpts); err != nil {
			return nil, err
		}
	}
	return pcrpolicy.NewSigner(cur, next)
}

// PCRPolicyKeys returns the PEM public keys of c's PCR-policy signing keys,
// current first, without creating a key.
func PCRPolicyKeys(c *Config) ([]byte, error) {
	s, err := loadPCRPolicySigner(c, false)
	if err != nil {
		return nil, err
	}
	return s.PublicKeysPEM()
}
