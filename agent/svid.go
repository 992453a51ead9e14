package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/keybroker/keybroker/agent/metrics"
	"github.com/keybroker/keybroker/agent/workload"
	"github.com/keybroker/keybroker/internal/atomicfile"
	"github.com/keybroker/keybroker/internal/provenance"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// Limits the agent holds the broker to.
const (
	MaxWorkloadEntries = 256 // per attestation
	maxCSRsPerRequest  = 64  // per IssueWorkloadX509SVIDs call
	maxJWTCache        = 1024
)

// BrokerTarget is where the agent gets workload SVIDs: the broker, over
// mutual TLS with the node X.509-SVID as client certificate, the broker's
// certificate verified against CAPEM (as for attestation).
type BrokerTarget struct {
	Addr  string // HOST:PORT
	CAPEM []byte // the broker's CA bundle, pinned
	// ServerName is checked in the broker's certificate; empty means the
	// host part of Addr.
	ServerName string
}

// SVIDManager holds the node's SPIFFE identity and hands it to the Workload
// API (it is a workload.Source): the node X.509-SVID and workload entries
// of the last attestation, and for each entry's SPIFFE ID a key generated
// here (ECDSA P-256, never leaving the agent but to the workloads) with its
// X.509-SVID from the broker, renewed at half its life. JWT-SVIDs are
// fetched from the broker on demand and cached until half their life.
//
// Run keeps it current: it re-attests at half the node SVID's life and
// rotates the workload SVIDs. After a failed re-attestation nothing new is
// issued until one succeeds; the identities lapse when the node SVID
// expires (plus WithGrace).
type SVIDManager struct {
	addr       string
	pool       *x509.CertPool
	serverName string
	log        *slog.Logger
	grace      time.Duration
	retryMin   time.Duration
	retryMax   time.Duration
	bundleFile string
	metrics    *metrics.Agent

	mu        sync.Mutex
	node      *NodeSVID
	nodeAt    time.Time // when node was installed
	renewBy   time.Time // when the attestation is half through its life (node SVID, files)
	entries   []workload.Entry
	trust     *provenance.Trust
	bundle    *spiffebundle.Bundle
	svids     map[spiffeid.ID]issuedSVID
	jwts      map[jwtKey]cachedJWT
	suspended bool // the last re-attestation failed
	lapsed    bool // the identities were dropped at lapse
	snap      *workload.Snapshot
	changed   chan struct{}
}

type issuedSVID struct {
	svid *x509svid.SVID
	at   time.Time // when the agent got it
}

// renewAt is half-way from when the agent got a certificate to its expiry
// (not from NotBefore, which the broker backdates).
func renewAt(at, notAfter time.Time) time.Time { return at.Add(notAfter.Sub(at) / 2) }

// SVIDOption configures an SVIDManager.
type SVIDOption func(*SVIDManager)

// WithBundleFile writes the trust domain's SPIFFE bundle (JWKS) to path,
// atomically and mode 0644, whenever it changes, for software that reads
// trust bundles from files rather than from the Workload API.
func WithBundleFile(path string) SVIDOption { return func(m *SVIDManager) { m.bundleFile = path } }

// WithGrace keeps serving the workload SVIDs already issued for up to d
// after the node SVID expired (never beyond each SVID's own expiry).
// Default 0: the identities lapse with the node SVID.
func WithGrace(d time.Duration) SVIDOption { return func(m *SVIDManager) { m.grace = d } }

// WithSVIDLogger sets where the manager logs renewals and failures.
// Default: slog.Default().
func WithSVIDLogger(l *slog.Logger) SVIDOption { return func(m *SVIDManager) { m.log = l } }

// WithRetry sets the backoff after a failed re-attestation or rotation:
// first retry after min, doubling up to max. Default 1s and 1m.
func WithRetry(min, max time.Duration) SVIDOption {
	return func(m *SVIDManager) { m.retryMin, m.retryMax = min, max }
}

// WithMetrics counts re-attestations and workload SVID rotations in m and
// reports the node SVID's expiry to it. Default: none.
func WithMetrics(m *metrics.Agent) SVIDOption { return func(mgr *SVIDManager) { mgr.metrics = m } }

// NewSVIDManager returns a manager that gets workload SVIDs from target.
// It holds nothing until Update.
func NewSVIDManager(target BrokerTarget, opts ...SVIDOption) (*SVIDManager, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(target.CAPEM) {
		return nil, errors.New("the broker CA bundle holds no PEM certificate")
	}
	serverName := target.ServerName
	if serverName == "" {
		host, _, err := net.SplitHostPort(target.Addr)
		if err != nil {
			return nil, fmt.Errorf("broker address %q: %w", target.Addr, err)
		}
		serverName = host
	}
	m := &SVIDManager{
		addr: target.Addr, pool: pool, serverName: serverName,
		log: slog.Default(), retryMin: time.Second, retryMax: time.Minute,
		svids: map[spiffeid.ID]issuedSVID{}, jwts: map[jwtKey]cachedJWT{},
		changed: make(chan struct{}),
	}
	for _, o := range opts {
		o(m)
	}
	if m.retryMin <= 0 || m.retryMax < m.retryMin {
		return nil, fmt.Errorf("invalid retry backoff %v..%v", m.retryMin, m.retryMax)
	}
	if m.grace < 0 {
		return nil, fmt.Errorf("grace %v is negative", m.grace)
	}
	return m, nil
}

// Snapshot implements workload.Source.
func (m *SVIDManager) Snapshot() (*workload.Snapshot, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.snap, m.changed
}

// publishLocked makes the current state the snapshot and wakes the
// Workload API streams.
func (m *SVIDManager) publishLocked() {
	snap := &workload.Snapshot{
		Entries:   slices.Clone(m.entries),
		Trust:     m.trust,
		X509SVIDs: make(map[spiffeid.ID]*x509svid.SVID, len(m.svids)),
		Bundle:    m.bundle.Clone(),
		Lapse:     m.lapseLocked(),
	}
	for id, s := range m.svids {
		snap.X509SVIDs[id] = s.svid
	}
	if m.bundleFile != "" && snap.Bundle != nil && (m.snap == nil || m.snap.Bundle == nil || !m.snap.Bundle.Equal(snap.Bundle)) {
		m.writeBundle(snap.Bundle)
	}
	m.snap = snap
	close(m.changed)
	m.changed = make(chan struct{})
}

// writeBundle writes the bundle file; a failure is logged, not fatal: the
// Workload API keeps serving the bundle.
func (m *SVIDManager) writeBundle(b *spiffebundle.Bundle) {
	if b == nil {
		return
	}
	jwks, err := b.Marshal()
	if err == nil {
		err = atomicfile.Write(m.bundleFile, jwks, 0o644)
	}
	if err != nil {
		m.log.Error("unable to write the SPIFFE bundle file", "path", m.bundleFile, "error", err)
	}
}

// lapseLocked is when the node's identity ends.
func (m *SVIDManager) lapseLocked() time.Time {
	return m.node.SVID.Certificates[0].NotAfter.Add(m.grace)
}

// Update installs what an attestation released: the node SVID (and its
// bundle) and entries replace the previous ones, the SVIDs of IDs no longer
// in the entries are dropped, and a new X.509-SVID is requested for every
// entry's ID. An error means some workload SVIDs could not be issued; the
// node SVID and entries are installed regardless (Run retries).
func (m *SVIDManager) Update(ctx context.Context, att *Attestation) error {
	if att == nil || att.NodeSVID == nil {
		return errors.New("the attestation released no node X.509-SVID")
	}
	m.mu.Lock()
	m.node, m.nodeAt = att.NodeSVID, time.Now()
	m.renewBy = att.renewBy(m.nodeAt)
	m.metrics.NodeSVIDExpires(att.NodeSVID.SVID.Certificates[0].NotAfter)
	m.entries = slices.Clone(att.Entries)
	// The same trust again keeps its cache of verified executables.
	if t := att.WorkloadTrust; t == nil || m.trust == nil || t.Digest() != m.trust.Digest() {
		m.trust = t
	}
	m.bundle = att.NodeSVID.Bundle.Clone()
	m.suspended, m.lapsed = false, false
	ids := m.entryIDsLocked()
	for id := range m.svids {
		if !slices.Contains(ids, id) {
			delete(m.svids, id)
		}
	}
	for k := range m.jwts {
		if !slices.Contains(ids, k.id) {
			delete(m.jwts, k)
		}
	}
	m.publishLocked()
	m.mu.Unlock()
	return m.rotate(ctx, ids)
}

// entryIDsLocked lists the distinct SPIFFE IDs of the entries, in order.
func (m *SVIDManager) entryIDsLocked() []spiffeid.ID {
	var ids []spiffeid.ID
	for _, e := range m.entries {
		if !slices.Contains(ids, e.ID) {
			ids = append(ids, e.ID)
		}
	}
	return ids
}

// errSuspended refuses new SVIDs after a failed re-attestation.
var errSuspended = errors.New("the last re-attestation failed: no new SVID until the node attests again")

// rotate gets new X.509-SVIDs for ids with fresh keys, refreshing the
// bundle first, and publishes those it got.
func (m *SVIDManager) rotate(ctx context.Context, ids []spiffeid.ID) (err error) {
	if len(ids) == 0 {
		return nil
	}
	defer func() { m.metrics.Rotation(err) }()
	m.mu.Lock()
	node, bundle, suspended := m.node, m.bundle, m.suspended
	m.mu.Unlock()
	if suspended {
		return errSuspended
	}
	client, done, err := m.client(node)
	if err != nil {
		return err
	}
	defer done()
	if b, err := fetchBundle(ctx, client, bundle.TrustDomain()); err != nil {
		m.log.Warn("unable to refresh the trust domain bundle; keeping the one from the attestation", "error", err)
	} else {
		bundle = b
	}
	issued, err := issueX509SVIDs(ctx, client, bundle, ids)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.node != node {
		// A newer attestation replaced the node SVID meanwhile; it
		// requested its own SVIDs.
		return err
	}
	if !m.bundle.Equal(bundle) {
		m.bundle = bundle
	}
	current := m.entryIDsLocked()
	for id, s := range issued {
		if slices.Contains(current, id) {
			m.svids[id] = s
			m.log.Info("workload X.509-SVID issued", "spiffe_id", id.String(), "serial", fmt.Sprintf("%x", s.svid.Certificates[0].SerialNumber), "expires", s.svid.Certificates[0].NotAfter.UTC().Format(time.RFC3339))
		}
	}
	if len(issued) > 0 || !m.snap.Bundle.Equal(m.bundle) {
		m.publishLocked()
	}
	return err
}

// client connects to the broker authenticated with node's X.509-SVID.
func (m *SVIDManager) client(node *NodeSVID) (pb.BrokerClient, func(), error) {
	cert := tls.Certificate{PrivateKey: node.SVID.PrivateKey, Leaf: node.SVID.Certificates[0]}
	for _, c := range node.SVID.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	conn, err := dialTLS(m.addr, &tls.Config{
		RootCAs:      m.pool,
		ServerName:   m.serverName,
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
	})
	if err != nil {
		return nil, nil, err
	}
	return pb.NewBrokerClient(conn), func() { conn.Close() }, nil
}

// fetchBundle asks the broker for the trust domain's current bundle.
func fetchBundle(ctx context.Context, client pb.BrokerClient, td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	resp, err := client.GetBundle(ctx, &pb.GetBundleRequest{})
	if err != nil {
		return nil, rpcError(err)
	}
	if got := resp.GetTrustDomain(); got != td.Name() && got != td.IDString() {
		return nil, fmt.Errorf("the broker's bundle is for trust domain %q, not %s", got, td.Name())
	}
	b, err := spiffebundle.Parse(td, resp.GetSpiffeBundle())
	if err != nil {
		return nil, fmt.Errorf("unable to parse the broker's bundle: %w", err)
	}
	if len(b.X509Authorities()) == 0 {
		return nil, errors.New("the broker's bundle holds no X.509 authority")
	}
	return b, nil
}

// issueX509SVIDs generates a P-256 key and a CSR naming exactly the ID for
// each of ids, has the broker sign them and checks what comes back: one
// SVID per ID, for its key, chaining to bundle. It returns those that
// passed, and an error naming any that did not.
func issueX509SVIDs(ctx context.Context, client pb.BrokerClient, bundle *spiffebundle.Bundle, ids []spiffeid.ID) (map[spiffeid.ID]issuedSVID, error) {
	out := map[spiffeid.ID]issuedSVID{}
	var errs []error
	for batch := range slices.Chunk(ids, maxCSRsPerRequest) {
		keys := map[string]*ecdsa.PrivateKey{}
		req := &pb.IssueWorkloadX509SVIDsRequest{}
		for _, id := range batch {
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return out, fmt.Errorf("unable to generate a workload key: %w", err)
			}
			csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
			if err != nil {
				return out, fmt.Errorf("unable to create a CSR for %s: %w", id, err)
			}
			keys[id.String()] = key
			req.Csrs = append(req.Csrs, &pb.WorkloadCSR{SpiffeId: id.String(), Csr: csr})
		}
		resp, err := client.IssueWorkloadX509SVIDs(ctx, req)
		if err != nil {
			errs = append(errs, fmt.Errorf("IssueWorkloadX509SVIDs: %w", rpcError(err)))
			continue
		}
		at := time.Now()
		for _, s := range resp.GetSvids() {
			key, ok := keys[s.GetSpiffeId()]
			if !ok {
				errs = append(errs, fmt.Errorf("the broker returned an SVID for %q, which was not requested (or twice)", s.GetSpiffeId()))
				continue
			}
			delete(keys, s.GetSpiffeId())
			svid, err := workloadSVID(s, key, bundle)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			out[svid.ID] = issuedSVID{svid: svid, at: at}
		}
		for id := range keys {
			errs = append(errs, fmt.Errorf("the broker returned no SVID for %s", id))
		}
	}
	return out, errors.Join(errs...)
}

// workloadSVID checks one issued SVID against the key the agent made for it
// and the bundle.
func workloadSVID(s *pb.WorkloadX509SVID, key *ecdsa.PrivateKey, bundle *spiffebundle.Bundle) (*x509svid.SVID, error) {
	var certs []*x509.Certificate
	for _, der := range s.GetCertChain() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("SVID for %s: unable to parse certificate: %w", s.GetSpiffeId(), err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("SVID for %s: no certificate", s.GetSpiffeId())
	}
	if !key.PublicKey.Equal(certs[0].PublicKey) {
		return nil, fmt.Errorf("SVID for %s: not for the key the agent sent", s.GetSpiffeId())
	}
	id, _, err := x509svid.Verify(certs, bundle)
	if err != nil {
		return nil, fmt.Errorf("SVID for %s: %w", s.GetSpiffeId(), err)
	}
	if id.String() != s.GetSpiffeId() {
		return nil, fmt.Errorf("SVID for %s names %s", s.GetSpiffeId(), id)
	}
	return &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}, nil
}
