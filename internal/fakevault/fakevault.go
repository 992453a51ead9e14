// Package fakevault is a fake of Vault's HTTP API as keybroker's TPM auth
// method (plugins/vaultauth) presents it to a node: auth/<mount>/challenge,
// auth/<mount>/login (optionally response-wrapped) and sys/wrapping/unwrap,
// served over TLS on a loopback socket with the request and response
// bodies Vault uses. The verification behind it is a Backend: a broker
// Server (real checks and policy) or AnyEKInsecure.
//
//	fv := fakevault.Start(t, fakevault.Opts{Backend: env.Server})
//	c, _ := agent.NewVaultClient(fv.URL, agent.VaultClientOpts{CAPEM: fv.CAPEM})
//
// A real Vault with the real plugin is exercised by the e2e/vault module.
package fakevault

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/broker/verify"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// Backend checks nodes: the two calls of the broker's API that the TPM auth
// method adapts. *broker.Server is one.
type Backend interface {
	Challenge(context.Context, *pb.ChallengeRequest) (*pb.ChallengeResponse, error)
	Attest(context.Context, *pb.AttestRequest) (*pb.AttestResponse, error)
}

// Opts configure Start.
type Opts struct {
	// Backend verifies challenges and logins. Required.
	Backend Backend
	// Mount is where the auth method is enabled. Default "tpm".
	Mount string
	// Role is the only role that exists. Default "web".
	Role string
	// Policies are the token's policies. Default ["default", "web"].
	Policies []string
	// WrapTTL, if set, response-wraps logins as a role's
	// response_wrap_ttl makes Vault do.
	WrapTTL time.Duration
	// WrapCreationPath overrides the creation_path of wrapping tokens.
	// Default auth/<mount>/login, as Vault sets it.
	WrapCreationPath string
}

// Server is a running fake. Its exported fields are read-only.
type Server struct {
	URL   string // https://127.0.0.1:port
	CAPEM []byte // the CA bundle that verifies the server

	opts Opts

	mu        sync.Mutex
	requests  []Request
	wrapped   map[string]map[string]any // wrapping token → wrapped response
	tokens    int
	override  map[string]func(body map[string]any) (int, any)
	tokenSeen bool
}

// Request is a request the fake received.
type Request struct {
	Method, Path string
	Body         map[string]any
}

// Start serves the fake until the test ends.
func Start(tb testing.TB, opts Opts) *Server {
	tb.Helper()
	if opts.Mount == "" {
		opts.Mount = "tpm"
	}
	if opts.Role == "" {
		opts.Role = "web"
	}
	if opts.Policies == nil {
		opts.Policies = []string{"default", "web"}
	}
	if opts.WrapCreationPath == "" {
		opts.WrapCreationPath = "auth/" + opts.Mount + "/login"
	}
	s := &Server{opts: opts, wrapped: map[string]map[string]any{}, override: map[string]func(map[string]any) (int, any){}}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // TLS handshakes that tests make fail
	srv.StartTLS()
	tb.Cleanup(srv.Close)
	s.URL = srv.URL
	s.CAPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return s
}

// Override answers path (such as "auth/tpm/login") with f's status and
// JSON body instead of the fake's own handling.
func (s *Server) Override(path string, f func(body map[string]any) (status int, resp any)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.override[path] = f
}

// Requests returns the requests received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// TokensIssued counts the tokens the fake created.
func (s *Server) TokensIssued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokens
}

// SawToken reports whether any challenge or login request carried an
// X-Vault-Token header: the TPM auth method's paths are unauthenticated,
// so a client sending one leaks a token it should not hold.
func (s *Server) SawToken() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokenSeen
}

// Unwrap spends a wrapping token as someone who intercepted it would.
func (s *Server) Unwrap(token string) (map[string]any, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.wrapped[token]
	delete(s.wrapped, token)
	return r, ok
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	path, ok := strings.CutPrefix(r.URL.Path, "/v1/")
	if !ok || (r.Method != http.MethodPut && r.Method != http.MethodPost) {
		reply(w, http.StatusNotFound, errorsBody("unsupported path"))
		return
	}
	var body map[string]any
	raw, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err == nil && len(raw) > 0 {
		err = json.Unmarshal(raw, &body)
	}
	if err != nil {
		reply(w, http.StatusBadRequest, errorsBody("failed to parse JSON input: "+err.Error()))
		return
	}
	s.mu.Lock()
	s.requests = append(s.requests, Request{Method: r.Method, Path: path, Body: body})
	f := s.override[path]
	prefix := "auth/" + s.opts.Mount + "/"
	if strings.HasPrefix(path, prefix) && r.Header.Get("X-Vault-Token") != "" {
		s.tokenSeen = true
	}
	s.mu.Unlock()
	if f != nil {
		code, resp := f(body)
		reply(w, code, resp)
		return
	}
	switch path {
	case prefix + "challenge":
		code, resp := s.challenge(r.Context(), body)
		reply(w, code, resp)
	case prefix + "login":
		code, resp := s.login(r.Context(), body)
		reply(w, code, resp)
	case "sys/wrapping/unwrap":
		resp, ok := s.Unwrap(r.Header.Get("X-Vault-Token"))
		if !ok {
			reply(w, http.StatusBadRequest, errorsBody("wrapping token is not valid or does not exist"))
			return
		}
		reply(w, http.StatusOK, resp)
	default:
		reply(w, http.StatusNotFound, errorsBody("no handler for route \""+path+"\""))
	}
}

func (s *Server) challenge(ctx context.Context, body map[string]any) (int, any) {
	var errs []error
	req := &pb.ChallengeRequest{
		EkPublic:      decode(body, "ek_public", &errs),
		EkCertificate: decode(body, "ek_certificate", &errs),
		AkPublic:      decode(body, "ak_public", &errs),
	}
	if ims, ok := body["ek_intermediates"].([]any); ok {
		for _, im := range ims {
			s, _ := im.(string)
			der, err := base64.StdEncoding.DecodeString(s)
			if err != nil {
				errs = append(errs, errors.New("ek_intermediates holds a value that is not base64"))
			}
			req.EkIntermediates = append(req.EkIntermediates, der)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return http.StatusBadRequest, errorsBody(err.Error())
	}
	ch, err := s.opts.Backend.Challenge(ctx, req)
	if err != nil {
		return statusOf(err)
	}
	return http.StatusOK, map[string]any{"data": map[string]any{
		"challenge_id":     ch.GetChallengeId(),
		"credential_blob":  base64.StdEncoding.EncodeToString(ch.GetCredentialBlob()),
		"encrypted_secret": base64.StdEncoding.EncodeToString(ch.GetEncryptedSecret()),
		"expires":          time.Unix(ch.GetExpiresUnix(), 0).UTC().Format(time.RFC3339Nano),
	}}
}

// loginBody is the login request as the TPM auth method reads it.
type loginBody struct {
	Role        string `json:"role"`
	ChallengeID string `json:"challenge_id"`
	Quotes      []struct {
		Attest    []byte `json:"attest"`
		Signature []byte `json:"signature"`
		PCRs      struct {
			HashAlg uint32            `json:"hash_alg"`
			Values  map[string][]byte `json:"values"`
		} `json:"pcrs"`
	} `json:"quotes"`
	EventLog []byte `json:"event_log"`
	// The EK and AK material of the challenge request, presented again.
	EKPublic        []byte   `json:"ek_public"`
	EKCertificate   []byte   `json:"ek_certificate"`
	EKIntermediates [][]byte `json:"ek_intermediates"`
	AKPublic        []byte   `json:"ak_public"`
}

func (s *Server) login(ctx context.Context, body map[string]any) (int, any) {
	raw, _ := json.Marshal(body)
	var in loginBody
	if err := json.Unmarshal(raw, &in); err != nil {
		return http.StatusBadRequest, errorsBody("malformed login: " + err.Error())
	}
	if in.Role != s.opts.Role {
		return http.StatusBadRequest, errorsBody(fmt.Sprintf("role %q not found", in.Role))
	}
	req := &pb.AttestRequest{ChallengeId: in.ChallengeID, EventLog: in.EventLog,
		EkPublic: in.EKPublic, EkCertificate: in.EKCertificate, EkIntermediates: in.EKIntermediates, AkPublic: in.AKPublic}
	for _, q := range in.Quotes {
		values := map[uint32][]byte{}
		for k, v := range q.PCRs.Values {
			i, err := strconv.ParseUint(k, 10, 8)
			if err != nil {
				return http.StatusBadRequest, errorsBody("malformed PCR index " + k)
			}
			values[uint32(i)] = v
		}
		req.Quotes = append(req.Quotes, &pb.Quote{Attest: q.Attest, Signature: q.Signature,
			Pcrs: &pb.PCRValues{HashAlg: q.PCRs.HashAlg, Values: values}})
	}
	if _, err := s.opts.Backend.Attest(ctx, req); err != nil {
		return statusOf(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens++
	resp := map[string]any{"auth": map[string]any{
		"client_token":   fmt.Sprintf("hvs.fake-token-%d", s.tokens),
		"accessor":       fmt.Sprintf("accessor-%d", s.tokens),
		"policies":       s.opts.Policies,
		"token_policies": s.opts.Policies,
		"metadata":       map[string]string{"role": in.Role},
		"lease_duration": 3600,
		"renewable":      true,
		"entity_id":      "entity-1",
		"token_type":     "service",
		"orphan":         true,
	}}
	if s.opts.WrapTTL <= 0 {
		return http.StatusOK, resp
	}
	token := "hvs.fake-wrap-" + strconv.Itoa(s.tokens)
	s.wrapped[token] = resp
	return http.StatusOK, map[string]any{"wrap_info": map[string]any{
		"token":         token,
		"accessor":      "wrap-accessor-" + strconv.Itoa(s.tokens),
		"ttl":           int(s.opts.WrapTTL / time.Second),
		"creation_time": time.Now().UTC().Format(time.RFC3339Nano),
		"creation_path": s.opts.WrapCreationPath,
	}}
}

func decode(body map[string]any, key string, errs *[]error) []byte {
	v, _ := body[key].(string)
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		*errs = append(*errs, fmt.Errorf("%s is not base64", key))
	}
	return b
}

// statusOf maps a Backend's gRPC status to what the TPM auth method answers:
// a refused check is 403 with the check's message alone.
func statusOf(err error) (int, any) {
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.InvalidArgument:
		return http.StatusBadRequest, errorsBody(st.Message())
	case codes.PermissionDenied, codes.DeadlineExceeded, codes.FailedPrecondition:
		return http.StatusForbidden, errorsBody(st.Message())
	}
	return http.StatusInternalServerError, errorsBody("internal error")
}

func errorsBody(msgs ...string) map[string]any { return map[string]any{"errors": msgs} }

func reply(w http.ResponseWriter, code int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(body)
}

// AnyEKInsecure is a Backend that trusts every EK and accepts any quotes:
// Challenge makes a real credential (so that only the TPM holding the EK
// and AK can activate it) and Attest checks only that the challenge is
// known and unused. For tests of request and response handling only.
func AnyEKInsecure() Backend { return &anyEK{challenges: map[string]bool{}} }

type anyEK struct {
	mu         sync.Mutex
	challenges map[string]bool
}

func (a *anyEK) Challenge(_ context.Context, req *pb.ChallengeRequest) (*pb.ChallengeResponse, error) {
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](req.GetEkPublic())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "input: ek_public is not a TPMT_PUBLIC")
	}
	key, err := tpm2.Pub(*pub)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "input: ek_public holds no usable key")
	}
	hash, err := verify.EKHash(key)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "input: "+err.Error())
	}
	node, err := verify.Node(req.GetEkPublic(), nil, nil, req.GetAkPublic(), verify.Opts{Trust: verify.Trust{EKHashes: []string{hash}}})
	if err != nil {
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	secret := make([]byte, challenge.SecretSize)
	rand.Read(secret)
	blob, enc, err := challenge.MakeCredential(node.EKPublic(), node.AKName(), secret)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	sum := sha256.Sum256(secret)
	id := hex.EncodeToString(sum[:12])
	a.mu.Lock()
	a.challenges[id] = true
	a.mu.Unlock()
	return &pb.ChallengeResponse{ChallengeId: id, CredentialBlob: blob, EncryptedSecret: enc, ExpiresUnix: time.Now().Add(time.Minute).Unix()}, nil
}

func (a *anyEK) Attest(_ context.Context, req *pb.AttestRequest) (*pb.AttestResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.challenges[req.GetChallengeId()] {
		return nil, status.Error(codes.PermissionDenied, "challenge: unknown or already used")
	}
	delete(a.challenges, req.GetChallengeId())
	if len(req.GetQuotes()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "input: no quotes")
	}
	return &pb.AttestResponse{}, nil
}
