package broker

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/broker/store"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// Messages of the workload SVID RPCs' refusals. They name what is wrong
// with the caller's request or identity, never policy contents.
const (
	msgNoSPIFFE       = "spiffe: no trust domain is configured"
	msgNoClientCert   = "node authentication: a node X.509-SVID client certificate is required"
	msgNotSVID        = "node authentication: the client certificate is not an X.509-SVID of trust domain %s"
	msgSVIDExpired    = "node authentication: the node X.509-SVID has expired"
	msgUnknownSVID    = "node authentication: the client certificate is not a current node X.509-SVID; attest again"
	msgDenied         = "node authentication: the node is on the deny list; attest again"
	msgNotInEntries   = "spiffe id not in this node's workload entries"
	msgInternalLookup = "internal error: unable to look up the node"
)

// caller is a node authenticated by its node X.509-SVID.
type caller struct {
	node     store.NodeRecord
	id       spiffeid.ID // the node SVID's ID
	serial   string
	notAfter time.Time
}

// authenticateNode authenticates the caller of a workload SVID RPC: the
// TLS layer verified a client certificate against the trust domain's X.509
// authorities (Start sets tls.VerifyClientCertIfGiven); here it must be an
// X.509-SVID of the trust domain (x509svid.Verify, at the server's time),
// unexpired, and a node SVID the node's last attestation released (looked
// up by serial: a workload SVID, or a node SVID that a later attestation
// replaced, is not), of a node not on the deny list.
func (s *Server) authenticateNode(ctx context.Context) (*caller, error) {
	if s.spiffe == nil {
		return nil, status.Error(codes.FailedPrecondition, msgNoSPIFFE)
	}
	var chain []*x509.Certificate
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
			chain = ti.State.PeerCertificates
		}
	}
	if len(chain) == 0 {
		return nil, status.Error(codes.PermissionDenied, msgNoClientCert)
	}
	now := s.now()
	leaf := chain[0]
	if !now.Before(leaf.NotAfter) {
		s.log.Warn("workload svid refused: node svid expired", "serial", fmt.Sprintf("%x", leaf.SerialNumber), "not_after", leaf.NotAfter)
		return nil, status.Error(codes.PermissionDenied, msgSVIDExpired)
	}
	td := s.spiffe.TrustDomain()
	id, _, err := x509svid.Verify(chain, s.spiffe.Bundle(), x509svid.WithTime(now))
	if err != nil {
		s.log.Warn("workload svid refused: client certificate is not an svid of the trust domain", "error", err)
		return nil, status.Errorf(codes.PermissionDenied, msgNotSVID, td.Name())
	}
	serial := fmt.Sprintf("%x", leaf.SerialNumber)
	node, err := s.nodes.NodeBySVIDSerial(ctx, serial)
	switch {
	case errors.Is(err, store.ErrNotFound):
		s.log.Warn("workload svid refused: not a current node svid", "spiffe_id", id.String(), "serial", serial)
		return nil, status.Error(codes.PermissionDenied, msgUnknownSVID)
	case err != nil:
		s.log.Error("workload svid refused: node lookup failed", "serial", serial, "error", err)
		return nil, status.Error(codes.Internal, msgInternalLookup)
	}
	c := &caller{node: node, id: id, serial: serial, notAfter: leaf.NotAfter}
	known := false
	for _, sv := range node.SVIDs {
		if sv.Serial == serial && sv.ID == id {
			known = true
			if sv.NotAfter.Before(c.notAfter) {
				c.notAfter = sv.NotAfter
			}
		}
	}
	if !known {
		s.log.Warn("workload svid refused: node svid does not match the record", "ek", node.EKHash, "spiffe_id", id.String(), "serial", serial)
		return nil, status.Error(codes.PermissionDenied, msgUnknownSVID)
	}
	switch d, err := s.nodes.GetDenial(ctx, node.EKHash); {
	case err == nil:
		s.log.Warn("workload svid refused: node is on the deny list", "ek", node.EKHash, "receipt", d.ReceiptID, "check", d.Check)
		return nil, status.Error(codes.PermissionDenied, msgDenied)
	case !errors.Is(err, store.ErrNotFound):
		s.log.Error("workload svid refused: deny list lookup failed", "ek", node.EKHash, "error", err)
		return nil, status.Error(codes.Internal, msgInternalLookup)
	}
	return c, nil
}

// entryTTL returns the longest validity the node's workload entries allow
// for id (the largest ttl of its entries with that ID), and whether id is
// in them at all.
func (c *caller) entryTTL(id spiffeid.ID) (time.Duration, bool) {
	var ttl time.Duration
	found := false
	for _, e := range c.node.WorkloadEntries {
		if e.ID == id {
			found = true
			ttl = max(ttl, e.TTL)
		}
	}
	return ttl, found
}

// ttlFor is the validity of a workload SVID for id: the entry's ttl, at
// most limit (if set), never beyond the node SVID. It refuses IDs outside
// the node's entries, and a node SVID with less than a second left.
func (s *Server) ttlFor(c *caller, id spiffeid.ID, limit time.Duration) (time.Duration, error) {
	ttl, ok := c.entryTTL(id)
	if !ok {
		s.log.Warn("workload svid refused: spiffe id not in the node's workload entries", "ek", c.node.EKHash, "spiffe_id", id.String())
		return 0, status.Errorf(codes.PermissionDenied, "%s: %s", msgNotInEntries, id)
	}
	if limit > 0 {
		ttl = min(ttl, limit)
	}
	ttl = min(ttl, c.notAfter.Sub(s.now()))
	if ttl < time.Second {
		return 0, status.Error(codes.PermissionDenied, msgSVIDExpired)
	}
	return ttl, nil
}

// IssueWorkloadX509SVIDs implements keybroker.v1.Broker: it signs the
// workload CSRs of an authenticated node, each for a SPIFFE ID of the
// node's workload entries, valid for at most the entry's ttl and the node
// SVID's remaining validity. Any refused CSR refuses the whole request:
// nothing is returned then.
func (s *Server) IssueWorkloadX509SVIDs(ctx context.Context, req *pb.IssueWorkloadX509SVIDsRequest) (*pb.IssueWorkloadX509SVIDsResponse, error) {
	c, err := s.authenticateNode(ctx)
	if err != nil {
		return nil, err
	}
	csrs := req.GetCsrs()
	switch {
	case len(csrs) == 0:
		return nil, status.Error(codes.InvalidArgument, "input: no csrs")
	case len(csrs) > issue.MaxCSRsPerRequest:
		return nil, status.Errorf(codes.InvalidArgument, "input: at most %d csrs", issue.MaxCSRsPerRequest)
	}
	ids := make([]spiffeid.ID, len(csrs))
	ttls := make([]time.Duration, len(csrs))
	seen := map[spiffeid.ID]bool{}
	for i, csr := range csrs {
		if n := len(csr.GetCsr()); n == 0 || n > issue.MaxCSRSize {
			return nil, status.Errorf(codes.InvalidArgument, "input: csrs[%d]: csr must be between 1 and %d bytes", i, issue.MaxCSRSize)
		}
		id, err := spiffeid.FromString(csr.GetSpiffeId())
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "input: csrs[%d]: invalid spiffe id %q: %v", i, csr.GetSpiffeId(), err)
		}
		if seen[id] {
			return nil, status.Errorf(codes.InvalidArgument, "input: csrs[%d]: %s is requested twice", i, id)
		}
		seen[id] = true
		if ttls[i], err = s.ttlFor(c, id, 0); err != nil {
			return nil, err
		}
		ids[i] = id
	}
	resp := &pb.IssueWorkloadX509SVIDsResponse{}
	var svids []*issue.X509SVID
	for i, csr := range csrs {
		svid, err := s.spiffe.SignX509SVID(csr.GetCsr(), ids[i], ttls[i])
		if err != nil {
			s.log.Warn("workload svid refused: csr", "ek", c.node.EKHash, "spiffe_id", ids[i].String(), "error", err)
			return nil, status.Errorf(codes.InvalidArgument, "csrs[%d]: %v", i, err)
		}
		svids = append(svids, svid)
		out := &pb.WorkloadX509SVID{SpiffeId: svid.ID.String(), ExpiresUnix: svid.NotAfter.Unix()}
		for _, cert := range svid.Chain {
			out.CertChain = append(out.CertChain, cert.Raw)
		}
		resp.Svids = append(resp.Svids, out)
	}
	for _, svid := range svids {
		s.log.Info("workload X.509-SVID issued", "ek", c.node.EKHash, "node_spiffe_id", c.id.String(),
			"spiffe_id", svid.ID.String(), "serial", svid.Serial, "expires", svid.NotAfter.UTC().Format(time.RFC3339))
	}
	return resp, nil
}

// IssueWorkloadJWTSVID implements keybroker.v1.Broker: a JWT-SVID for a
// SPIFFE ID of the authenticated node's workload entries, valid for at
// most the entry's ttl, issue.MaxJWTSVIDTTL and the node SVID's remaining
// validity.
func (s *Server) IssueWorkloadJWTSVID(ctx context.Context, req *pb.IssueWorkloadJWTSVIDRequest) (*pb.IssueWorkloadJWTSVIDResponse, error) {
	c, err := s.authenticateNode(ctx)
	if err != nil {
		return nil, err
	}
	aud := req.GetAudience()
	switch {
	case len(aud) == 0:
		return nil, status.Error(codes.InvalidArgument, "input: audience is required")
	case len(aud) > issue.MaxAudiences:
		return nil, status.Errorf(codes.InvalidArgument, "input: at most %d audiences", issue.MaxAudiences)
	}
	for _, a := range aud {
		if a == "" || len(a) > issue.MaxAudienceSize {
			return nil, status.Errorf(codes.InvalidArgument, "input: each audience must be 1 to %d bytes", issue.MaxAudienceSize)
		}
	}
	id, err := spiffeid.FromString(req.GetSpiffeId())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "input: invalid spiffe id %q: %v", req.GetSpiffeId(), err)
	}
	ttl, err := s.ttlFor(c, id, issue.MaxJWTSVIDTTL)
	if err != nil {
		return nil, err
	}
	token, exp, err := s.spiffe.IssueJWTSVID(id, aud, ttl)
	if err != nil {
		s.log.Error("workload JWT-SVID failed", "ek", c.node.EKHash, "spiffe_id", id.String(), "error", err)
		return nil, status.Error(codes.Internal, "internal error: unable to sign the JWT-SVID")
	}
	s.log.Info("workload JWT-SVID issued", "ek", c.node.EKHash, "node_spiffe_id", c.id.String(),
		"spiffe_id", id.String(), "audience", aud, "expires", exp.UTC().Format(time.RFC3339))
	return &pb.IssueWorkloadJWTSVIDResponse{Token: token, ExpiresUnix: exp.Unix()}, nil
}

// GetBundle implements keybroker.v1.Broker: the trust domain's bundle,
// without authentication (it holds only public keys).
func (s *Server) GetBundle(ctx context.Context, _ *pb.GetBundleRequest) (*pb.GetBundleResponse, error) {
	if s.spiffe == nil {
		return nil, status.Error(codes.FailedPrecondition, msgNoSPIFFE)
	}
	b, err := s.spiffe.BundleJWKS()
	if err != nil {
		s.log.Error("unable to encode the bundle", "error", err)
		return nil, status.Error(codes.Internal, "internal error: unable to encode the bundle")
	}
	return &pb.GetBundleResponse{TrustDomain: s.spiffe.TrustDomain().Name(), SpiffeBundle: b}, nil
}
