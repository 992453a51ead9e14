package store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Defaults of EtcdOpts.
const (
	DefaultEtcdPrefix         = "/keybroker/"
	DefaultEtcdDialTimeout    = 5 * time.Second
	DefaultEtcdRequestTimeout = 5 * time.Second
)

// Key families under EtcdOpts.Prefix.
const (
	etcdConsumed      = "consumed/"        // challenge ID -> expiry (RFC 3339), leased to the expiry
	etcdReceipts      = "receipts/"        // receipt ID -> Receipt
	etcdReceiptsByEK  = "receipts_by_ek/"  // escaped EK hash/receipt ID -> ""
	etcdNodes         = "nodes/"           // EK hash -> NodeRecord without its event log
	etcdNodeSVIDs     = "node_svids/"      // node SVID serial -> EK hash
	etcdDenied        = "denied/"          // EK hash -> Denial
	etcdEventLogs     = "event_logs/"      // SHA-256 of an event log (hex) -> the log
	etcdChallengeKeys = "challenge_keys/"  // key ID -> ChallengeKey
	etcdChainHead     = "chain_head"       // the receipt chain's ChainHead
	etcdReceiptsBySeq = "receipts_by_seq/" // Seq (20 decimal digits) -> receipt ID
	etcdCheckpoints   = "checkpoints/"     // Seq (20 decimal digits) -> Checkpoint
	etcdPCRApprovals  = "pcr_approvals/"   // approval ID -> PCRApproval
	etcdPCREpoch      = "pcr_policy_epoch" // the PCR revocation epoch (decimal)
)

// EtcdOpts configures OpenEtcd.
type EtcdOpts struct {
	// Endpoints are the client URLs of the etcd members, such as
	// https://10.0.0.1:2379. At least one is required.
	Endpoints []string
	// CAFile is a PEM file of the CA that signed the members' serving
	// certificates; CertFile and KeyFile are the PEM client certificate and
	// key the broker authenticates with. Setting any of them turns TLS on;
	// CertFile and KeyFile go together. Without CAFile the system roots
	// verify the members.
	CAFile, CertFile, KeyFile string
	// Prefix is put before every key: several brokers (or other users) can
	// share one etcd. Default DefaultEtcdPrefix; a trailing "/" is added.
	Prefix string
	// DialTimeout bounds OpenEtcd's first contact with the cluster.
	// Default DefaultEtcdDialTimeout; negative is an error.
	DialTimeout time.Duration
	// RequestTimeout bounds every store call (Record's retries included)
	// on top of the caller's context, so that an unreachable cluster fails
	// the call instead of blocking it. Default DefaultEtcdRequestTimeout;
	// negative is an error.
	RequestTimeout time.Duration
}

// Etcd is the Backend shared by broker replicas: every key under one prefix
// of an etcd cluster. Record is one etcd transaction, committed by a quorum
// before it returns. Markers of used challenges expire with leases shared
// per expiry second (one lease per second in which challenges expire, not
// one per marker), so PurgeConsumed has nothing to do. It is safe for
// concurrent use, also by several processes.
type Etcd struct {
	cli     *clientv3.Client
	prefix  string
	timeout time.Duration

	mu     sync.Mutex
	leases map[int64]clientv3.LeaseID // expiry second -> lease ending after it

	// chainMu is held by whoever commits at the chain head: this
	// process's decisions do not conflict with each other, only with
	// other processes'. head is the head as last read or written, at
	// headRev (its mod revision; 0 when not read yet or absent).
	chainMu sync.Mutex
	head    ChainHead
	headRev int64
	// queue holds the decisions waiting for the head (etcd_commit.go).
	qmu   sync.Mutex
	queue []*chained
	// approvalsMu serializes this process's PCR-approval updates, which
	// then conflict only with other processes' (etcd_pcrapprovals.go).
	approvalsMu sync.Mutex
}

var _ Backend = (*Etcd)(nil)

// OpenEtcd connects to the etcd cluster of opts and checks that it answers
// within opts.DialTimeout (and ctx). The connection is kept and re-dialed
// as needed: when the cluster is unreachable calls fail after
// opts.RequestTimeout, and work again once it is back.
func OpenEtcd(ctx context.Context, opts EtcdOpts) (*Etcd, error) {
	cfg, prefix, err := opts.clientConfig()
	if err != nil {
		return nil, fmt.Errorf("unable to open etcd store: %w", err)
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("unable to open etcd store: %w", err)
	}
	e := &Etcd{cli: cli, prefix: prefix, timeout: opts.RequestTimeout, leases: map[int64]clientv3.LeaseID{},
		head: ChainHead{Hash: GenesisHash}}
	if e.timeout == 0 {
		e.timeout = DefaultEtcdRequestTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := cli.Get(ctx, prefix+etcdChallengeKeys, clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
		_ = cli.Close()
		return nil, fmt.Errorf("unable to reach etcd at %s: %w", strings.Join(opts.Endpoints, ","), err)
	}
	return e, nil
}

// clientConfig validates o and returns the client configuration and the
// key prefix.
func (o EtcdOpts) clientConfig() (clientv3.Config, string, error) {
	var errs []error
	if len(o.Endpoints) == 0 {
		errs = append(errs, errors.New("endpoints cannot be empty"))
	}
	for _, ep := range o.Endpoints {
		if ep == "" {
			errs = append(errs, errors.New("an endpoint cannot be empty"))
		}
	}
	if o.DialTimeout < 0 || o.RequestTimeout < 0 {
		errs = append(errs, errors.New("timeouts cannot be negative"))
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		errs = append(errs, errors.New("cert and key must be given together"))
	}
	if err := errors.Join(errs...); err != nil {
		return clientv3.Config{}, "", err
	}
	prefix := o.Prefix
	if prefix == "" {
		prefix = DefaultEtcdPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	cfg := clientv3.Config{
		Endpoints:            o.Endpoints,
		DialTimeout:          o.DialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Logger:               zap.NewNop(),
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultEtcdDialTimeout
	}
	if o.CAFile != "" || o.CertFile != "" {
		tc, err := o.tlsConfig()
		if err != nil {
			return clientv3.Config{}, "", err
		}
		cfg.TLS = tc
	}
	return cfg, prefix, nil
}

func (o EtcdOpts) tlsConfig() (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("unable to read etcd ca_cert: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd ca_cert %s holds no PEM certificate", o.CAFile)
		}
	}
	if o.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("unable to load etcd client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Close closes the connection to the cluster. Closing twice is harmless.
func (e *Etcd) Close() error {
	if err := e.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("unable to close etcd store: %w", err)
	}
	return nil
}

// request bounds one call by the request timeout.
func (e *Etcd) request(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, e.timeout)
}

func (e *Etcd) key(family, name string) string { return e.prefix + family + name }

// ekIndexPrefix is the prefix of ekHash's receipt index keys: the EK hash
// is path-escaped, so that no EK hash's prefix is another's.
func (e *Etcd) ekIndexPrefix(ekHash string) string {
	return e.prefix + etcdReceiptsByEK + url.PathEscape(ekHash) + "/"
}

// explain says that etcd did not answer when err is the request timeout
// running out (not the caller's context), or that it is unavailable when
// the connection failed first.
func (e *Etcd) explain(ctx context.Context, err error) error {
	switch {
	case ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("etcd did not answer within %v: %w", e.timeout, err)
	case ctx.Err() == nil && status.Code(err) == codes.Unavailable:
		// The connection failed before the timeout (an etcd stopping
		// resets it).
		return fmt.Errorf("etcd is unavailable: %w", err)
	}
	return err
}
