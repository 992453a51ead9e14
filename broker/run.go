package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/broker/metrics"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/vaultsource"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// MaxRequestSize bounds a gRPC request: a full event log plus four quotes.
const MaxRequestSize = 2 << 20

// Paths inside the data directory.
const (
	CADir     = "ca"       // ca.pem, ca-key.pem
	SPIFFEDir = "spiffe"   // the SPIFFE authority: ca.pem, ca-key.pem, jwt-key.pem
	BoltFile  = "store.db" // bbolt: used-challenge markers, receipts, node records, challenge keys
	// AdminSocket (admin.go) is the third entry.
)

// Running is a started broker.
type Running struct {
	Server *Server
	CA     *issue.CA
	// SPIFFE is the trust domain's authority, nil without a spiffe block.
	SPIFFE *issue.SPIFFE

	dataDir string
	lis     net.Listener
	grpc    *grpc.Server
	// handshakes runs the gRPC server's TLS handshakes.
	handshakes *handshakePool
	admin      *http.Server
	metrics    *metrics.Endpoint // nil without metrics_listen
	st         store.Backend
	vault      *vaultsource.Client // nil without a vault block
	policies   *policyReloader
	once       sync.Once
	done       chan error
	stop       chan struct{}
	tasks      sync.WaitGroup // purge, checkpoints and the policy watcher
	// checkpoints signs the receipt chain's head (checkpoints.go).
	checkpoints *checkpointer
}

// PurgeInterval is how often a running broker drops the markers of used
// challenges that have expired, and the receipts past receipt_retention.
const PurgeInterval = time.Minute

// purgeBatch is the most receipts one delete removes: etcd bounds a
// transaction's size, and other writers should not wait behind a long one.
const purgeBatch = 1000

// purge drops expired used-challenge markers, and receipts older than
// retention (zero: none), every PurgeInterval until Stop.
func (r *Running) purge(log *slog.Logger, retention time.Duration) {
	t := time.NewTicker(PurgeInterval)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case now := <-t.C:
			r.purgeOnce(log, now, retention)
		}
	}
}

func (r *Running) purgeOnce(log *slog.Logger, now time.Time, retention time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), PurgeInterval)
	defer cancel()
	if n, err := r.st.PurgeConsumed(ctx, now); err != nil {
		log.Error("unable to purge used challenges", "error", err)
	} else if n > 0 {
		log.Debug("purged used challenges", "count", n)
	}
	if retention <= 0 {
		return
	}
	total := 0
	for {
		n, err := r.st.DeleteReceiptsBefore(ctx, now.Add(-retention), purgeBatch, r.checkpoints.signer.Seal)
		total += n
		if err != nil {
			log.Error("unable to delete receipts past their retention", "error", err)
			break
		}
		if n < purgeBatch {
			break
		}
	}
	if total > 0 {
		log.Info("deleted receipts past their retention", "count", total, "retention", retention.String())
	}
}

// Start opens the broker's store and CA in cfg.DataDir (creating them on first
// use), loads the policies and serves the gRPC API over TLS on cfg.Listen.
// When cfg.PolicyPollInterval is set, it reloads the policies whenever their
// files change, as ReloadPolicies does.
//
// With a trust domain (cfg.TrustDomain), it loads or creates the SPIFFE
// authority in data_dir/spiffe, and the TLS server asks for a client
// certificate signed by one of the authority's X.509 authorities
// (tls.VerifyClientCertIfGiven): nodes present their node X.509-SVID to the
// workload SVID RPCs, and Challenge, Attest and GetBundle work without one.
//
// With cfg.MetricsListen, it serves the broker's metrics (package metrics)
// over plain HTTP at GET /metrics on that address.
func Start(cfg *Config, log *slog.Logger) (*Running, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("unable to create data_dir: %w", err)
	}
	reloader := newPolicyReloader(cfg.PolicyPaths, log, cfg.CheckPolicies)
	var m *metrics.Broker
	if cfg.MetricsListen != "" {
		m = metrics.New()
		reloader.metrics = m
	}
	pol, err := reloader.load()
	if err != nil {
		return nil, fmt.Errorf("unable to load policies: %w", err)
	}
	ca, err := issue.LoadOrCreateCA(filepath.Join(cfg.DataDir, CADir), issue.CAOpts{})
	if err != nil {
		return nil, fmt.Errorf("unable to load the CA: %w", err)
	}
	serving, err := ca.ServingCertificate(cfg.ServerNames)
	if err != nil {
		return nil, fmt.Errorf("unable to issue the serving certificate: %w", err)
	}
	tlsConfig := &tls.Config{Certificates: []tls.Certificate{serving}, MinVersion: tls.VersionTLS13}
	var sp *issue.SPIFFE
	if !cfg.TrustDomain.IsZero() {
		sp, err = issue.LoadOrCreateSPIFFE(filepath.Join(cfg.DataDir, SPIFFEDir), cfg.TrustDomain.Name(), issue.CAOpts{})
		if err != nil {
			return nil, fmt.Errorf("unable to load the SPIFFE authority: %w", err)
		}
		clientCAs := x509.NewCertPool()
		for _, c := range sp.Bundle().X509Authorities() {
			clientCAs.AddCert(c)
		}
		tlsConfig.ClientAuth, tlsConfig.ClientCAs = tls.VerifyClientCertIfGiven, clientCAs
	}
	var vc *vaultsource.Client
	if v := cfg.Vault; v != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		vc, err = vaultsource.New(ctx, vaultsource.Opts{
			Address: v.Address, CACert: v.CACert, Namespace: v.Namespace, TokenFile: v.TokenFile,
			RoleID: v.RoleID, SecretIDFile: v.SecretIDFile, AppRoleMount: v.AppRoleMount,
			Logger: log.With("component", "vault"), Observe: m.VaultCall,
		})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("unable to log in to vault at %s: %w", v.Address, err)
		}
	}
	closeVault := func() {
		if vc != nil {
			vc.Close()
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	st, err := OpenStore(ctx, cfg, StoreOpts{})
	cancel()
	if err != nil {
		closeVault()
		return nil, fmt.Errorf("unable to open the store: %w", err)
	}
	if b, ok := st.(*store.Bolt); ok && m != nil {
		b.ObserveCommits(m.StoreTransaction)
	}
	cps, err := loadCheckpointSigner(cfg)
	if err != nil {
		st.Close()
		closeVault()
		return nil, err
	}
	checkpoints := newCheckpointer(st, cps, cfg.ReceiptCheckpoints, log)
	results, err := loadResultSigner(cfg)
	if err != nil {
		st.Close()
		closeVault()
		return nil, fmt.Errorf("unable to load the attestation result key: %w", err)
	}
	pcrSigner, err := loadPCRPolicySigner(cfg, true)
	if errors.Is(err, errNoEtcdPCRPolicyKey) {
		log.Warn("no PCR-policy signing key: pcr_policy \"authorized\" releases are refused", "reason", err)
		pcrSigner, err = nil, nil
	}
	if err != nil {
		st.Close()
		closeVault()
		return nil, err
	}
	var resultTTL time.Duration
	if cfg.AttestationResults != nil {
		resultTTL = cfg.AttestationResults.TTL
	}
	srv, err := NewServer(ServerOpts{
		Verify:               cfg.Verify,
		ChallengeTTL:         cfg.ChallengeTTL,
		ChallengeKeyRotation: cfg.ChallengeKeyRotation,
		Store:                st,
		CA:                   ca,
		Policies:             pol,
		SPIFFE:               sp,
		Vault:                vc,
		Kubernetes:           cfg.Kubernetes,
		Limits:               cfg.Limits,
		Results:              results,
		ResultTTL:            resultTTL,
		PCRPolicy:            pcrSigner,
		Metrics:              m,
		Logger:               log,
	})
	if err != nil {
		st.Close()
		closeVault()
		return nil, err
	}
	admin, err := serveAdmin(filepath.Join(cfg.DataDir, AdminSocket), st, checkpoints)
	if err != nil {
		st.Close()
		closeVault()
		return nil, err
	}
	lis, err := listenTCP(cfg.Listen)
	if err != nil {
		admin.Close()
		st.Close()
		closeVault()
		return nil, fmt.Errorf("unable to listen on %s: %w", cfg.Listen, err)
	}
	var mep *metrics.Endpoint
	if m != nil {
		if mep, err = m.Serve(cfg.MetricsListen); err != nil {
			lis.Close()
			admin.Close()
			st.Close()
			closeVault()
			return nil, err
		}
	}
	handshakes := newHandshakePool(credentials.NewTLS(tlsConfig), workersPerCPU*runtime.GOMAXPROCS(0))
	g := grpc.NewServer(append(transportOptions(),
		grpc.Creds(handshakes),
		grpc.ChainUnaryInterceptor(m.UnaryServerInterceptor(), recoverPanics(log)),
	)...)
	pb.RegisterBrokerServer(g, srv)
	hs := health.NewServer()
	hs.SetServingStatus(pb.Broker_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, hs)
	reflection.Register(g)

	reloader.install = srv.SetPolicies
	r := &Running{dataDir: cfg.DataDir, Server: srv, CA: ca, SPIFFE: sp, lis: lis, grpc: g, handshakes: handshakes, admin: admin, metrics: mep, st: st, vault: vc, policies: reloader,
		done: make(chan error, 1), stop: make(chan struct{}), checkpoints: checkpoints}
	go func() { r.done <- g.Serve(lis) }()
	r.tasks.Go(func() { r.purge(log, cfg.ReceiptRetention) })
	r.tasks.Go(func() { checkpoints.run(r.stop) })
	if cfg.PolicyPollInterval > 0 {
		r.tasks.Go(func() { reloader.watch(r.stop, cfg.PolicyPollInterval) })
	}
	log.Info("broker listening", "addr", lis.Addr().String(), "policies", pol.Names(), "policy_hash", pol.Hash(),
		"policy_poll_interval", cfg.PolicyPollInterval.String(), "trust_domain", cfg.TrustDomain.Name(), "vault", cfg.Vault != nil,
		"store", cfg.Store.String(), "metrics", r.MetricsAddr())
	return r, nil
}

// DataDir returns the broker's data directory.
func (r *Running) DataDir() string { return r.dataDir }

// Addr returns the listening address.
func (r *Running) Addr() string { return r.lis.Addr().String() }

// MetricsAddr returns the address serving the metrics; empty without
// metrics_listen.
func (r *Running) MetricsAddr() string {
	if r.metrics == nil {
		return ""
	}
	return r.metrics.Addr()
}

// Done is closed with the serving error (nil after Stop) when serving ends.
func (r *Running) Done() <-chan error { return r.done }

// Store returns the broker's store.
func (r *Running) Store() store.Backend { return r.st }

// Stop finishes in-flight requests, stops serving and closes the store.
func (r *Running) Stop() {
	r.once.Do(func() {
		close(r.stop)
		r.grpc.GracefulStop()
		r.handshakes.close()
		r.admin.Close()
		if r.metrics != nil {
			r.metrics.Close()
		}
		r.tasks.Wait()
		r.checkpointHead()
		if r.vault != nil {
			r.vault.Close()
		}
		r.st.Close()
	})
}

// recoverPanics turns a panic in a handler into an Internal error, logged,
// instead of a crashed broker: a node's input must never take the broker
// down. Nothing is released by a handler that panicked.
func recoverPanics(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if p := recover(); p != nil {
				log.Error("handler panicked; nothing released", "method", info.FullMethod, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
				resp, err = nil, status.Error(codes.Internal, "internal error")
			}
		}()
		return handler(ctx, req)
	}
}
