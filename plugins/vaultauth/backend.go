package vaultauth

import (
	"context"
	"crypto/sha256"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/broker/receiptchain"
	"github.com/keybroker/keybroker/policies"
)

// Storage layout (see vaultStore). config and role/ replicate like any
// Vault state; the challenge keys, the used-challenge markers and node/ are
// local to each cluster (see backendHelp). config and the challenge keys
// are seal-wrapped.
const (
	configPath        = "config"
	rolePrefix        = "role/"
	challengeKeysPath = "challenge_keys"
	consumedPrefix    = "consumed/"
	nodePrefix        = "node/"
	receiptPrefix     = "receipt/"
	deniedPrefix      = "denied/"
	eventLogPrefix    = "eventlog/"
	// ticketPrefix (path_login_sealed.go) is local too.
)

// Factory returns the auth method's backend; main serves it with
// plugin.ServeMultiplex.
func Factory(ctx context.Context, conf *logical.BackendConfig) (logical.Backend, error) {
	b := backend()
	if err := b.Setup(ctx, conf); err != nil {
		return nil, err
	}
	return b, nil
}

// tpmAuthBackend adapts keybroker's verification pipeline to Vault.
type tpmAuthBackend struct {
	*framework.Backend

	// now returns the current time; tests move it.
	now func() time.Time

	l            sync.RWMutex
	cachedConfig *config

	policyMu sync.Mutex
	policies map[string]cachedPolicy // role name -> parsed policy

	// storageLocks serialize the check-and-put steps Vault storage has no
	// transactions for: adding a challenge key, using up a challenge,
	// redeeming a ticket.
	storageLocks []*locksutil.LockEntry
	limiter      *rateLimiter

	// chain serializes extending the receipt chain (chain.go); cp signs
	// its checkpoints every cpEvery receipts or cpInterval
	// (checkpoints.go), made on first use under cpMu.
	chain      chain
	cpMu       sync.Mutex
	cp         *receiptchain.Checkpointer
	cpSigner   *receiptchain.Signer
	cpEvery    uint64
	cpInterval time.Duration
}

// cachedPolicy is a role's parsed policy document and the SHA-256 of the
// source it was parsed from: a role whose source changed is parsed again.
type cachedPolicy struct {
	src [sha256.Size]byte
	set *policies.Set
}

func backend() *tpmAuthBackend {
	b := &tpmAuthBackend{
		now:          time.Now,
		policies:     map[string]cachedPolicy{},
		storageLocks: locksutil.CreateLocks(),
		limiter:      newRateLimiter(),
	}
	b.Backend = &framework.Backend{
		BackendType: logical.TypeCredential,
		Help:        backendHelp,
		AuthRenew:   b.pathLoginRenew,
		Invalidate:  b.invalidate,
		PeriodicFunc: func(ctx context.Context, req *logical.Request) error {
			return b.periodic(ctx, req)
		},
		PathsSpecial: &logical.Paths{
			Unauthenticated: []string{"login", "challenge"},
			SealWrapStorage: []string{configPath, challengeKeysPath, checkpointKeyPath},
			LocalStorage: []string{challengeKeysPath, consumedPrefix, nodePrefix, ticketPrefix, receiptPrefix, deniedPrefix, eventLogPrefix,
				chainHeadPath, chainSeqPrefix, checkpointPrefix, checkpointKeyPath},
		},
		Paths: []*framework.Path{
			pathConfig(b),
			pathRoleList(b),
			pathRole(b),
			pathChallenge(b),
			pathLogin(b),
			pathReceiptList(b),
			pathReceipt(b),
			pathCheckpointList(b),
			pathCheckpoint(b),
			pathCheckpointKey(b),
			pathNodeList(b),
			pathNode(b),
		},
	}
	return b
}

// invalidate drops what this node cached of a key another node changed.
func (b *tpmAuthBackend) invalidate(_ context.Context, key string) {
	if key == configPath {
		b.l.Lock()
		b.cachedConfig = nil
		b.l.Unlock()
	}
	if name, ok := strings.CutPrefix(key, rolePrefix); ok {
		b.policyMu.Lock()
		delete(b.policies, name)
		b.policyMu.Unlock()
	}
}

// periodic deletes the markers of expired challenges and unredeemed
// tickets, forgets idle rate-limit windows, and signs the receipt chain's
// head when a checkpoint is due (checkpoints.go).
// Vault runs it about once a minute.
func (b *tpmAuthBackend) periodic(ctx context.Context, req *logical.Request) error {
	now := b.now()
	b.limiter.forgetIdle(now)
	if sys := b.System(); sys != nil {
		rs := sys.ReplicationState()
		if rs.HasState(consts.ReplicationPerformanceStandby) || rs.HasState(consts.ReplicationDRSecondary) {
			return nil // read-only here; the active node purges
		}
	}
	n, err := b.store(req.Storage).PurgeConsumed(ctx, now)
	if err != nil {
		return fmt.Errorf("unable to purge used challenges: %w", err)
	}
	if n > 0 {
		b.Logger().Debug("markers of expired challenges purged", "count", n)
	}
	if n, err = b.purgeTickets(ctx, req.Storage, now); err != nil {
		return fmt.Errorf("unable to purge expired tickets: %w", err)
	}
	if n > 0 {
		b.Logger().Debug("unredeemed tickets purged", "count", n)
	}
	_, err = b.signCheckpoint(ctx, req.Storage, false)
	return err
}

// policy returns the parsed policy document of a role, parsing it only
// when its source changed since it was last parsed.
func (b *tpmAuthBackend) policy(name string, r *roleEntry) (*policies.Set, error) {
	sum := sha256.Sum256([]byte(r.Policy))
	b.policyMu.Lock()
	defer b.policyMu.Unlock()
	if c, ok := b.policies[name]; ok && c.src == sum {
		return c.set, nil
	}
	set, err := parseRolePolicy(name, r.Policy)
	if err != nil {
		return nil, err
	}
	b.policies[name] = cachedPolicy{src: sum, set: set}
	return set, nil
}

const backendHelp = `
The TPM auth method issues Vault tokens to machines that prove with their
TPM 2.0 what they booted, using keybroker's verification and policy code.

A node first writes its EK and AK to "challenge" and receives a credential
that only the TPM holding both keys can activate. It then writes to "login"
a quote signed by its AK over the activated secret, with its PCR values and
event log. Vault verifies the EK trust ("config"), the AK, the quote and the
event log exactly as the keybroker broker does, evaluates the role's policy
document over the verified facts, and on success issues a token with the
role's token settings. The entity alias is the node's EK hash.

A challenge is a token sealed (AES-256-GCM) under a challenge key kept in
Vault storage, so issuing one writes nothing and a challenge survives a
restart or a leader change. The node sends its EK and AK material again at
login; a login uses its challenge up by writing a marker, kept until the
challenge expires. The challenge keys, the markers and the TPM counters of
each node's last login are in storage local to each cluster (not
replicated to performance secondaries): a node answers a challenge to the
cluster that issued it. "challenge" and "login" are forwarded from
performance standbys to the active node, which accepts each challenge
exactly once.
`
