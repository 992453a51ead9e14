package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// The stages of a Vault login that Bootstrap does not have.
const (
	StepLogin  Step = "login"
	StepUnwrap Step = "unwrap"
)

// DefaultVaultMount is the path the TPM auth method is usually enabled at
// (vault auth enable -path=tpm ...).
const DefaultVaultMount = "tpm"

// VaultLoginOpts tune VaultLogin.
type VaultLoginOpts struct {
	// Role is the auth method's role to log in with. Required.
	Role string
	// Mount is the path the TPM auth method is enabled at, without the
	// "auth/" prefix. Default DefaultVaultMount.
	Mount string
	// EventLog is the TCG binary event log behind the quoted PCRs (see
	// ReadEventLog). Nil sends none.
	EventLog []byte
	// Progress, if set, is called after each stage with its duration. The
	// detail never holds a token.
	Progress func(step Step, took time.Duration, detail string)
}

// VaultLoginResult is what a successful Vault login returns.
type VaultLoginResult struct {
	// Auth is Vault's answer: the token (Auth.ClientToken, a secret), its
	// accessor, policies, TTL and metadata.
	Auth *vaultapi.SecretAuth
	// Unwrapped reports that Vault response-wrapped the login (the role's
	// response_wrap_ttl) and VaultLogin unwrapped it: the token was never
	// on the wire before this node asked for it with the single-use
	// wrapping token.
	Unwrapped bool
	// Sealed is the envelope the token came in when the role seals tokens
	// to the TPM (the role's token_envelope): TPM_BOUND or PCR_SEALED;
	// RELEASE_MODE_UNSPECIFIED when Vault returned it in the response.
	Sealed pb.ReleaseMode
}

// VaultLogin logs in to Vault's TPM auth method (keybroker's
// plugins/vaultauth) with this node's TPM: it asks auth/<mount>/challenge
// for a credential made to its EK and AK, activates it in the TPM, quotes
// the PCRs with the activated secret and sends the quotes (and event log)
// to auth/<mount>/login for the role, with the EK and AK material of its
// challenge request again (the challenge was issued for it).
//
// When the role seals tokens (token_envelope), the login answers with the
// token sealed to this node's EK and VaultLogin opens it in the TPM (see
// OpenSealedToken).
//
// When the role response-wraps logins, Vault answers with a single-use
// wrapping token instead of the token; VaultLogin checks that it wraps a
// login of this mount and unwraps it (sys/wrapping/unwrap). An unwrap that
// fails means someone else used the wrapping token first: treat it as an
// incident.
//
// c must carry no token (the paths are unauthenticated). On failure
// VaultLogin returns a *StepError naming the stage; refusals by Vault wrap
// the *vaultapi.ResponseError (403 for a denied login).
func VaultLogin(ctx context.Context, c *vaultapi.Client, node *Node, opts VaultLoginOpts) (*VaultLoginResult, error) {
	if opts.Role == "" {
		return nil, errors.New("no role")
	}
	mount := strings.Trim(opts.Mount, "/")
	if mount == "" {
		mount = DefaultVaultMount
	}
	lap := newLap(opts.Progress)
	logical := c.Logical()

	req, err := node.ChallengeRequest()
	if err != nil {
		return nil, &StepError{StepChallenge, err}
	}
	chSecret, err := logical.WriteWithContext(ctx, "auth/"+mount+"/challenge", vaultChallengeRequest(req))
	if err != nil {
		return nil, &StepError{StepChallenge, vaultError(err)}
	}
	ch, err := parseVaultChallenge(chSecret)
	if err != nil {
		return nil, &StepError{StepChallenge, err}
	}
	detail := "challenge " + ch.GetChallengeId()[:min(8, len(ch.GetChallengeId()))] + "…"
	if ch.GetExpiresUnix() != 0 {
		detail += ", expires " + time.Unix(ch.GetExpiresUnix(), 0).UTC().Format(time.RFC3339)
	}
	lap(StepChallenge, detail)

	a, err := node.answer(ch, lap)
	if err != nil {
		return nil, err
	}

	login, err := logical.WriteWithContext(ctx, "auth/"+mount+"/login", vaultLoginRequest(opts.Role, req, ch.GetChallengeId(), a, opts.EventLog))
	if err != nil {
		return nil, &StepError{StepLogin, vaultError(err)}
	}
	if login == nil {
		return nil, &StepError{StepLogin, errors.New("vault answered the login with no content")}
	}
	res := &VaultLoginResult{}
	if w := login.WrapInfo; w != nil && w.Token != "" {
		lap(StepLogin, fmt.Sprintf("response-wrapped (accessor %s, ttl %ds)", w.Accessor, w.TTL))
		want := "auth/" + mount + "/login"
		if w.CreationPath != want {
			return nil, &StepError{StepUnwrap, fmt.Errorf("the wrapping token was created by %q, not %q: refusing to unwrap it", w.CreationPath, want)}
		}
		login, err = logical.UnwrapWithContext(ctx, w.Token)
		c.ClearToken() // Unwrap set the (now spent) wrapping token on c
		if err != nil {
			return nil, &StepError{StepUnwrap, fmt.Errorf("unable to unwrap the login (was the wrapping token used by someone else?): %w", vaultError(err))}
		}
		if login == nil {
			return nil, &StepError{StepUnwrap, errors.New("the wrapping token unwrapped to nothing")}
		}
		res.Unwrapped = true
	}
	if env, ok := login.Data["token_envelope"]; ok && login.Auth == nil {
		accessor := ""
		if info, ok := login.Data["auth"].(map[string]any); ok {
			accessor, _ = info["accessor"].(string)
		}
		lap(StepLogin, fmt.Sprintf("token sealed to this TPM (accessor %s)", accessor))
		auth, mode, err := openSealedToken(node, env, login.Data["auth"], strings.ToLower(opts.Role))
		if err != nil {
			return nil, &StepError{StepOpen, err}
		}
		res.Auth, res.Sealed = auth, mode
		lap(StepOpen, fmt.Sprintf("token opened in the TPM (%s; accessor %s, policies %v, ttl %ds)",
			mode, auth.Accessor, auth.Policies, auth.LeaseDuration))
		return res, nil
	}
	if login.Auth == nil || login.Auth.ClientToken == "" {
		step := StepLogin
		if res.Unwrapped {
			step = StepUnwrap
		}
		return nil, &StepError{step, errors.New("vault answered with no token")}
	}
	res.Auth = login.Auth
	detail = fmt.Sprintf("token issued (accessor %s, policies %v, ttl %ds)", login.Auth.Accessor, login.Auth.Policies, login.Auth.LeaseDuration)
	if res.Unwrapped {
		lap(StepUnwrap, detail)
	} else {
		lap(StepLogin, detail)
	}
	return res, nil
}

// VaultTokenEnvelope is the name of the credential a sealed Vault login
// carries (plugins/vaultauth's EnvelopeName).
const VaultTokenEnvelope = "vault-token"

// OpenSealedToken opens the token of a login answered by a role with
// token_envelope: data is the login response's data, holding the envelope
// (token_envelope) and the auth object without its token (auth). The
// envelope is the broker's Credential in its JSON form; only this node's
// TPM opens it, and for PCR_SEALED only while the PCRs hold the attested
// values (sealing.ErrImport otherwise). The token inside must be the one
// the response names (accessor) and have been issued to this node's EK for
// role.
func OpenSealedToken(n *Node, data map[string]any, role string) (*vaultapi.SecretAuth, pb.ReleaseMode, error) {
	env, ok := data["token_envelope"]
	if !ok {
		return nil, 0, errors.New("the login response holds no token_envelope")
	}
	return openSealedToken(n, env, data["auth"], role)
}

func openSealedToken(n *Node, env, info any, role string) (*vaultapi.SecretAuth, pb.ReleaseMode, error) {
	outside, ok := info.(map[string]any)
	if !ok {
		return nil, 0, errors.New("the login response holds no auth next to its token_envelope")
	}
	js, err := json.Marshal(env)
	if err != nil {
		return nil, 0, fmt.Errorf("unable to read token_envelope: %w", err)
	}
	cred := &pb.Credential{}
	if err := protojson.Unmarshal(js, cred); err != nil {
		return nil, 0, fmt.Errorf("token_envelope is not a keybroker credential: %w", err)
	}
	if cred.GetName() != VaultTokenEnvelope || cred.GetType() != pb.CredentialType_SECRET {
		return nil, 0, fmt.Errorf("token_envelope holds %q (%s), not %q", cred.GetName(), cred.GetType(), VaultTokenEnvelope)
	}
	payload, err := n.Open(cred)
	if err != nil {
		return nil, 0, err
	}
	defer clear(payload)
	auth := &vaultapi.SecretAuth{}
	if err := json.Unmarshal(payload, auth); err != nil || auth.ClientToken == "" {
		return nil, 0, errors.New("the opened envelope holds no Vault token")
	}
	// The accessor outside the envelope is what Vault's audit log and the
	// operator see: it must name the token inside.
	if a, _ := outside["accessor"].(string); a != auth.Accessor {
		return nil, 0, fmt.Errorf("the opened token's accessor %q differs from the response's %q", auth.Accessor, a)
	}
	// Anyone can seal to a public EK: the token must say it was issued to
	// this EK for this role.
	ekHash, err := n.EKHash()
	if err != nil {
		return nil, 0, err
	}
	if auth.Metadata["ek_hash"] != ekHash || auth.Metadata["role"] != role {
		return nil, 0, fmt.Errorf("the opened token was issued to EK %q for role %q, not to this node's EK for role %q",
			auth.Metadata["ek_hash"], auth.Metadata["role"], role)
	}
	return auth, cred.GetMode(), nil
}

// vaultChallengeRequest is the body of auth/<mount>/challenge: the TPM
// structures of the challenge request, base64 (standard encoding).
func vaultChallengeRequest(req *pb.ChallengeRequest) map[string]any {
	body := map[string]any{
		"ek_public": b64(req.GetEkPublic()),
		"ak_public": b64(req.GetAkPublic()),
	}
	if len(req.GetEkCertificate()) > 0 {
		body["ek_certificate"] = b64(req.GetEkCertificate())
	}
	if ims := req.GetEkIntermediates(); len(ims) > 0 {
		enc := make([]string, len(ims))
		for i, der := range ims {
			enc[i] = b64(der)
		}
		body["ek_intermediates"] = enc
	}
	return body
}

// parseVaultChallenge reads the answer of auth/<mount>/challenge.
func parseVaultChallenge(s *vaultapi.Secret) (*pb.ChallengeResponse, error) {
	if s == nil || s.Data == nil {
		return nil, errors.New("vault answered the challenge with no data")
	}
	var errs []error
	str := func(key string) string {
		v, ok := s.Data[key].(string)
		if !ok || v == "" {
			errs = append(errs, fmt.Errorf("the challenge response has no %s", key))
		}
		return v
	}
	bin := func(key string) []byte {
		v := str(key)
		if v == "" {
			return nil
		}
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("the challenge response's %s is not base64: %w", key, err))
		}
		return b
	}
	resp := &pb.ChallengeResponse{
		ChallengeId:     str("challenge_id"),
		CredentialBlob:  bin("credential_blob"),
		EncryptedSecret: bin("encrypted_secret"),
	}
	if v, ok := s.Data["expires"].(string); ok && v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			errs = append(errs, fmt.Errorf("the challenge response's expires is not RFC 3339: %w", err))
		}
		resp.ExpiresUnix = t.Unix()
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return resp, nil
}

// vaultLoginRequest is the body of auth/<mount>/login: the EK and AK
// material of the challenge request ch, again and in the same encodings
// (the challenge was issued for it), and each quote as its TPMS_ATTEST and
// TPMT_SIGNATURE, base64, with the quoted PCR values by index (hash_alg is
// the TPM_ALG_ID of the bank).
func vaultLoginRequest(role string, ch *pb.ChallengeRequest, challengeID string, a *answered, eventLog []byte) map[string]any {
	qs := make([]map[string]any, len(a.quotes))
	for i, q := range a.quotes {
		values := make(map[string]string, len(q.GetPcrs().GetValues()))
		for idx, v := range q.GetPcrs().GetValues() {
			values[strconv.FormatUint(uint64(idx), 10)] = b64(v)
		}
		qs[i] = map[string]any{
			"attest":    b64(q.GetAttest()),
			"signature": b64(q.GetSignature()),
			"pcrs": map[string]any{
				"hash_alg": q.GetPcrs().GetHashAlg(),
				"values":   values,
			},
		}
	}
	body := vaultChallengeRequest(ch)
	body["role"] = role
	body["challenge_id"] = challengeID
	body["quotes"] = qs
	if len(eventLog) > 0 {
		body["event_log"] = b64(eventLog)
	}
	if len(a.identityLog) > 0 {
		body["identity_log"] = b64(a.identityLog)
	}
	return body
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// vaultError words a Vault refusal with its status and messages, keeping
// the *vaultapi.ResponseError for errors.As.
func vaultError(err error) error {
	var re *vaultapi.ResponseError
	if !errors.As(err, &re) {
		return err
	}
	msg := strings.Join(re.Errors, "; ")
	if msg == "" {
		msg = http.StatusText(re.StatusCode)
	}
	return &vaultRefusal{msg: fmt.Sprintf("vault refused (%d): %s", re.StatusCode, msg), err: re}
}

type vaultRefusal struct {
	msg string
	err *vaultapi.ResponseError
}

func (e *vaultRefusal) Error() string { return e.msg }
func (e *vaultRefusal) Unwrap() error { return e.err }

// VaultClientOpts tune NewVaultClient.
type VaultClientOpts struct {
	// CAPEM, if set, is the only set of roots trusted for Vault's TLS
	// certificate. Default: the system's roots.
	CAPEM []byte
	// Timeout bounds each HTTP request. Default 60s.
	Timeout time.Duration
}

// NewVaultClient returns a Vault API client for addr (https://HOST:PORT)
// with no token, that verifies Vault's TLS certificate (TLS 1.2 or later)
// and never retries: a challenge is single use, so a retried login could
// only fail. Unlike the vault CLI it reads no TLS settings from the
// environment (VAULT_CACERT, VAULT_SKIP_VERIFY, ...); the Vault API library
// still applies VAULT_NAMESPACE and VAULT_HTTP_HEADERS.
func NewVaultClient(addr string, opts VaultClientOpts) (*vaultapi.Client, error) {
	if addr == "" {
		return nil, errors.New("no Vault address")
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(opts.CAPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(opts.CAPEM) {
			return nil, errors.New("the Vault CA bundle holds no PEM certificate")
		}
		tlsConf.RootCAs = pool
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = tlsConf
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	c, err := vaultapi.NewClient(&vaultapi.Config{
		Address: addr,
		HttpClient: &http.Client{
			Transport: transport,
			// The Vault API client follows redirects itself.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		Timeout:    timeout,
		MaxRetries: 0,
	})
	if err != nil {
		return nil, fmt.Errorf("unable to create the Vault client: %w", err)
	}
	c.ClearToken() // NewClient takes VAULT_TOKEN from the environment
	return c, nil
}
