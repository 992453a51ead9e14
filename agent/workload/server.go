package workload

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/keybroker/keybroker/idlog"
)

// HeaderKey and HeaderValue form the metadata every Workload API call must
// carry, so that a browser or other confused deputy cannot be made to call
// the API (SPIFFE Workload API §5.3).
const (
	HeaderKey   = "workload.spiffe.io"
	HeaderValue = "true"
)

// The messages callers get, as SPIRE words them where SPIRE has one.
const (
	msgNoHeader        = "security header missing from request"
	msgNoIdentity      = "no identity issued"
	msgExpired         = "identity expired"
	msgNotAttested     = "unable to attest the caller"
	msgNotReady        = "the agent holds no identity yet"
	msgNoAudience      = "audience must be specified"
	msgNoSVID          = "svid must be specified"
	msgBadSPIFFEID     = "spiffe_id is not a valid SPIFFE ID"
	msgJWTUnavailable  = "unable to fetch a JWT-SVID"
	msgEncodingFailure = "unable to encode the response"
	msgUnrecorded      = "unable to record the identity handout"
)

// Server is the SPIFFE Workload API. Every call must carry the
// workload.spiffe.io header; the caller is attested from the socket's peer
// credentials (see Caller.Selectors) and gets the SVIDs of the entries all
// of whose selectors it matches.
type Server struct {
	workloadpb.UnimplementedSpiffeWorkloadAPIServer

	src     Source
	log     *slog.Logger
	now     func() time.Time
	procDir string
	bundles BundleLocations
	att     *attestor
	rec     Recorder
	unary   []grpc.UnaryServerInterceptor
	stream  []grpc.StreamServerInterceptor
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets where the server logs refusals and attestation problems.
// Default: slog.Default().
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// WithInterceptors runs unary and stream (either may be nil) around every
// call, before the security header check, so that they see the calls it
// refuses too (e.g. metrics.Agent's, to count calls by method and code).
func WithInterceptors(unary grpc.UnaryServerInterceptor, stream grpc.StreamServerInterceptor) Option {
	return func(s *Server) {
		if unary != nil {
			s.unary = append(s.unary, unary)
		}
		if stream != nil {
			s.stream = append(s.stream, stream)
		}
	}
}

// WithClock replaces time.Now, for tests.
func WithClock(now func() time.Time) Option { return func(s *Server) { s.now = now } }

// withProcDir reads processes from another /proc, for tests.
func withProcDir(dir string) Option { return func(s *Server) { s.procDir = dir } }

// NewServer returns a Workload API server handing out src's identities.
func NewServer(src Source, opts ...Option) *Server {
	s := &Server{src: src, log: slog.Default(), now: time.Now, procDir: DefaultProcDir}
	for _, o := range opts {
		o(s)
	}
	s.att = newAttestor(s.procDir, s.bundles, s.log)
	return s
}

// Serve serves the Workload API on lis, a unix socket listener (see
// Listen), until ctx is done; then it stops, ending open streams, and
// closes lis.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	unary := append(s.unary[:len(s.unary):len(s.unary)], func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if err := checkHeader(ctx); err != nil {
			return nil, err
		}
		return h(ctx, req)
	})
	stream := append(s.stream[:len(s.stream):len(s.stream)], func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if err := checkHeader(ss.Context()); err != nil {
			return err
		}
		return h(srv, ss)
	})
	g := grpc.NewServer(
		grpc.Creds(peerCredentials{att: s.att}),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
	)
	workloadpb.RegisterSpiffeWorkloadAPIServer(g, s)
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(lis) }()
	select {
	case <-ctx.Done():
		g.Stop()
		<-errc
		return nil
	case err := <-errc:
		return err
	}
}

func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(HeaderKey); len(v) != 1 || v[0] != HeaderValue {
		return status.Error(codes.InvalidArgument, msgNoHeader)
	}
	return nil
}

// caller attests the process behind ctx's connection.
func (s *Server) caller(ctx context.Context, method string) (Caller, error) {
	p, ok := peerFromContext(ctx)
	if !ok {
		s.log.Error("workload API call without peer credentials", "method", method)
		return Caller{}, status.Error(codes.PermissionDenied, msgNotAttested)
	}
	c, err := s.att.attest(p)
	if err != nil {
		s.log.Warn("workload API caller not attested", "method", method, "pid", p.PID, "uid", p.UID, "error", err)
		return Caller{}, status.Error(codes.PermissionDenied, msgNotAttested)
	}
	return c, nil
}

// identity returns the current snapshot and the entries c matches, or the
// status to refuse c with. It is called at every call and before every
// streamed response, and refuses a caller whose process ran another
// executable since it connected.
func (s *Server) identity(c Caller, method string) (*Snapshot, []Entry, <-chan struct{}, error) {
	if err := s.att.recheck(c); err != nil {
		s.log.Warn("workload API caller not attested", "method", method, "pid", c.PID, "uid", c.UID, "path", c.Path, "error", err)
		return nil, nil, nil, status.Error(codes.PermissionDenied, msgNotAttested)
	}
	snap, changed := s.src.Snapshot()
	if snap == nil {
		return nil, nil, nil, status.Error(codes.Unavailable, msgNotReady)
	}
	sel, noBundle := s.att.selectors(c, snap)
	entries := snap.Match(sel)
	if len(entries) == 0 {
		args := []any{"method", method, "pid", c.PID, "uid", c.UID, "gid", c.GID, "path", c.Path, "sha256", c.SHA256}
		if noBundle != nil {
			args = append(args, "sigstore_bundle", "none found", "looked_in", noBundle)
		}
		s.log.Info("workload API caller matches no entry", args...)
		return nil, nil, nil, status.Error(codes.PermissionDenied, msgNoIdentity)
	}
	return snap, entries, changed, nil
}

// FetchX509SVID streams the caller's X.509-SVIDs: one response now and one
// after every change (rotation, re-attestation), until the node's identity
// lapses or the caller matches no entry any more, which end the stream with
// PermissionDenied.
func (s *Server) FetchX509SVID(_ *workloadpb.X509SVIDRequest, stream grpc.ServerStreamingServer[workloadpb.X509SVIDResponse]) error {
	const method = "FetchX509SVID"
	ctx := stream.Context()
	c, err := s.caller(ctx, method)
	if err != nil {
		return err
	}
	var last *workloadpb.X509SVIDResponse
	for {
		snap, entries, changed, err := s.identity(c, method)
		if err != nil {
			return err
		}
		now := s.now()
		if snap.Lapsed(now) {
			return status.Error(codes.PermissionDenied, msgExpired)
		}
		resp, wake, expired, err := x509Response(snap, entries, now)
		if err != nil {
			s.log.Error("unable to encode X.509-SVIDs", "error", err)
			return status.Error(codes.Internal, msgEncodingFailure)
		}
		switch {
		case len(resp.Svids) == 0 && expired:
			return status.Error(codes.PermissionDenied, msgExpired)
		case len(resp.Svids) > 0 && !proto.Equal(resp, last):
			if err := s.record(c, entries, x509Handouts(snap, resp)); err != nil {
				return err
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
			last = resp
		}
		if err := wait(ctx, changed, wake.Sub(now)); err != nil {
			return nil
		}
	}
}

// wait returns when changed is closed, after d (if positive), or with an
// error when ctx is done.
func wait(ctx context.Context, changed <-chan struct{}, d time.Duration) error {
	var timeout <-chan time.Time
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-changed:
		return nil
	case <-timeout:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// x509Response holds the SVIDs of entries valid at now, one per SPIFFE ID
// in entry order, and returns when the response must next be rebuilt (the
// first expiry, or the lapse) and whether an SVID was left out as expired.
func x509Response(snap *Snapshot, entries []Entry, now time.Time) (*workloadpb.X509SVIDResponse, time.Time, bool, error) {
	bundle := concatDER(snap.Bundle.X509Authorities())
	resp := &workloadpb.X509SVIDResponse{}
	wake := snap.Lapse
	expired := false
	seen := map[spiffeid.ID]bool{}
	for _, e := range entries {
		if seen[e.ID] {
			continue
		}
		seen[e.ID] = true
		svid := snap.X509SVIDs[e.ID]
		if svid == nil || len(svid.Certificates) == 0 {
			continue
		}
		notAfter := svid.Certificates[0].NotAfter
		if !now.Before(notAfter) {
			expired = true
			continue
		}
		if notAfter.Before(wake) {
			wake = notAfter
		}
		certs, key, err := svid.MarshalRaw()
		if err != nil {
			return nil, time.Time{}, false, fmt.Errorf("svid %s: %w", e.ID, err)
		}
		resp.Svids = append(resp.Svids, &workloadpb.X509SVID{
			SpiffeId:    e.ID.String(),
			X509Svid:    certs,
			X509SvidKey: key,
			Bundle:      bundle,
		})
	}
	return resp, wake, expired, nil
}

// x509Handouts are the handouts of resp's SVIDs, for the Recorder.
func x509Handouts(snap *Snapshot, resp *workloadpb.X509SVIDResponse) []idlog.Issued {
	var out []idlog.Issued
	for _, v := range resp.Svids {
		id, _ := spiffeid.FromString(v.SpiffeId)
		cert := snap.X509SVIDs[id].Certificates[0]
		out = append(out, idlog.Issued{Type: idlog.TypeX509, SPIFFEID: v.SpiffeId,
			Serial: cert.SerialNumber.Text(16), Expires: cert.NotAfter})
	}
	return out
}

func concatDER(certs []*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, c.Raw...)
	}
	return b
}

// FetchX509Bundles streams the trust domain's X.509 authorities: now and
// after every change.
func (s *Server) FetchX509Bundles(_ *workloadpb.X509BundlesRequest, stream grpc.ServerStreamingServer[workloadpb.X509BundlesResponse]) error {
	const method = "FetchX509Bundles"
	return s.streamBundles(stream.Context(), method, func(snap *Snapshot) (proto.Message, error) {
		td := snap.Bundle.TrustDomain()
		return &workloadpb.X509BundlesResponse{Bundles: map[string][]byte{td.IDString(): concatDER(snap.Bundle.X509Authorities())}}, nil
	}, func(m proto.Message) error { return stream.Send(m.(*workloadpb.X509BundlesResponse)) })
}

// FetchJWTBundles streams the trust domain's JWT keys (JWKS): now and after
// every change.
func (s *Server) FetchJWTBundles(_ *workloadpb.JWTBundlesRequest, stream grpc.ServerStreamingServer[workloadpb.JWTBundlesResponse]) error {
	const method = "FetchJWTBundles"
	return s.streamBundles(stream.Context(), method, func(snap *Snapshot) (proto.Message, error) {
		jwks, err := snap.Bundle.JWTBundle().Marshal()
		if err != nil {
			return nil, err
		}
		td := snap.Bundle.TrustDomain()
		return &workloadpb.JWTBundlesResponse{Bundles: map[string][]byte{td.IDString(): jwks}}, nil
	}, func(m proto.Message) error { return stream.Send(m.(*workloadpb.JWTBundlesResponse)) })
}

// streamBundles sends build's response now and whenever it changes. Bundles
// are public trust anchors: they are served to callers with an entry even
// after the node's identity lapsed.
func (s *Server) streamBundles(ctx context.Context, method string, build func(*Snapshot) (proto.Message, error), send func(proto.Message) error) error {
	c, err := s.caller(ctx, method)
	if err != nil {
		return err
	}
	var last proto.Message
	for {
		snap, _, changed, err := s.identity(c, method)
		if err != nil {
			return err
		}
		resp, err := build(snap)
		if err != nil {
			s.log.Error("unable to encode the bundle", "method", method, "error", err)
			return status.Error(codes.Internal, msgEncodingFailure)
		}
		if last == nil || !proto.Equal(resp, last) {
			if err := send(resp); err != nil {
				return err
			}
			last = resp
		}
		if err := wait(ctx, changed, 0); err != nil {
			return nil
		}
	}
}

// FetchJWTSVID returns one JWT-SVID per SPIFFE ID the caller matches (only
// spiffe_id's if set) for the requested audience.
func (s *Server) FetchJWTSVID(ctx context.Context, req *workloadpb.JWTSVIDRequest) (*workloadpb.JWTSVIDResponse, error) {
	const method = "FetchJWTSVID"
	if len(req.GetAudience()) == 0 {
		return nil, status.Error(codes.InvalidArgument, msgNoAudience)
	}
	var want spiffeid.ID
	if req.GetSpiffeId() != "" {
		id, err := spiffeid.FromString(req.GetSpiffeId())
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, msgBadSPIFFEID)
		}
		want = id
	}
	c, err := s.caller(ctx, method)
	if err != nil {
		return nil, err
	}
	snap, entries, _, err := s.identity(c, method)
	if err != nil {
		return nil, err
	}
	if snap.Lapsed(s.now()) {
		return nil, status.Error(codes.PermissionDenied, msgExpired)
	}
	var ids []spiffeid.ID
	seen := map[spiffeid.ID]bool{}
	for _, e := range entries {
		if seen[e.ID] || (!want.IsZero() && e.ID != want) {
			continue
		}
		seen[e.ID] = true
		ids = append(ids, e.ID)
	}
	if len(ids) == 0 {
		return nil, status.Error(codes.PermissionDenied, msgNoIdentity)
	}
	resp := &workloadpb.JWTSVIDResponse{}
	var handouts []idlog.Issued
	for _, id := range ids {
		svid, err := s.src.FetchJWTSVID(ctx, id, req.GetAudience())
		if err != nil {
			s.log.Warn("unable to fetch a JWT-SVID", "spiffe_id", id.String(), "pid", c.PID, "error", err)
			switch {
			case errors.Is(err, ErrExpired):
				return nil, status.Error(codes.PermissionDenied, msgExpired)
			case errors.Is(err, ErrNoIdentity):
				return nil, status.Error(codes.PermissionDenied, msgNoIdentity)
			}
			return nil, status.Error(codes.Unavailable, msgJWTUnavailable)
		}
		token := svid.Marshal()
		resp.Svids = append(resp.Svids, &workloadpb.JWTSVID{SpiffeId: id.String(), Svid: token})
		handouts = append(handouts, idlog.Issued{Type: idlog.TypeJWT, SPIFFEID: id.String(),
			Serial: idlog.SerialOfToken(token), Expires: svid.Expiry})
	}
	if err := s.record(c, entries, handouts); err != nil {
		return nil, err
	}
	return resp, nil
}

// ValidateJWTSVID checks a JWT-SVID's signature against the trust domain's
// JWT keys, its expiry and that audience is among its audiences. Any
// attested caller may validate; no entry is needed.
func (s *Server) ValidateJWTSVID(ctx context.Context, req *workloadpb.ValidateJWTSVIDRequest) (*workloadpb.ValidateJWTSVIDResponse, error) {
	const method = "ValidateJWTSVID"
	switch {
	case req.GetAudience() == "":
		return nil, status.Error(codes.InvalidArgument, msgNoAudience)
	case req.GetSvid() == "":
		return nil, status.Error(codes.InvalidArgument, msgNoSVID)
	}
	if _, err := s.caller(ctx, method); err != nil {
		return nil, err
	}
	snap, _ := s.src.Snapshot()
	if snap == nil {
		return nil, status.Error(codes.Unavailable, msgNotReady)
	}
	svid, err := jwtsvid.ParseAndValidate(req.GetSvid(), snap.Bundle, []string{req.GetAudience()})
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	claims, err := claimsStruct(svid.Claims)
	if err != nil {
		s.log.Error("unable to encode JWT claims", "error", err)
		return nil, status.Error(codes.Internal, msgEncodingFailure)
	}
	return &workloadpb.ValidateJWTSVIDResponse{SpiffeId: svid.ID.String(), Claims: claims}, nil
}

func claimsStruct(claims map[string]any) (*structpb.Struct, error) {
	b, err := json.Marshal(claims)
	if err != nil {
		return nil, err
	}
	s := &structpb.Struct{}
	if err := protojson.Unmarshal(b, s); err != nil {
		return nil, err
	}
	return s, nil
}
