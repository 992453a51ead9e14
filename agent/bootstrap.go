package agent

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/agent/metrics"
	"github.com/keybroker/keybroker/agent/workload"
	"github.com/keybroker/keybroker/internal/atomicfile"
	"github.com/keybroker/keybroker/internal/provenance"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// The files Bootstrap writes in OutDir.
const (
	KeyFile   = "key.pem"   // PKCS#8 private key, mode 0600
	CertFile  = "cert.pem"  // leaf certificate
	ChainFile = "chain.pem" // issuing CA certificates
	// SVIDFile and SVIDKeyFile are a tpm_resident node X.509-SVID: its
	// certificates (the SVID first) and its key as a TSS2 key file (mode
	// 0600; no private key: the TPM's blob, loadable only in that TPM).
	// A node SVID whose key the broker made is never written.
	SVIDFile    = "svid.pem"
	SVIDKeyFile = "svid_key.pem"
	// SecretFileExt ends the file of each SECRET credential (a vault_kv
	// release): <release name>.json, mode 0600, a SecretFile.
	SecretFileExt = ".json"
	// TokenFileExt ends the file of each VAULT_TOKEN credential (a
	// vault_token release): <release name>.token, mode 0600, the token
	// alone without a newline, as ~/.vault-token holds it (VAULT_TOKEN=$(cat
	// F), or the vault CLI's token helper).
	TokenFileExt = ".token"
)

// SecretFile is the JSON document Bootstrap writes for a SECRET credential.
type SecretFile struct {
	Path    string            `json:"path"`
	Version int64             `json:"version"`
	Data    map[string]string `json:"data"`
}

// Step names one stage of a bootstrap, for progress output and errors.
type Step string

// The stages of a bootstrap, in order.
const (
	StepChallenge Step = "challenge"
	StepActivate  Step = "activate"
	StepQuote     Step = "quote"
	StepAttest    Step = "attest"
	StepOpen      Step = "open"
	StepWrite     Step = "write"
)

// StepError is a failed bootstrap stage.
type StepError struct {
	Step Step
	Err  error
}

func (e *StepError) Error() string { return string(e.Step) + ": " + e.Err.Error() }
func (e *StepError) Unwrap() error { return e.Err }

// BootstrapOpts tune Bootstrap.
type BootstrapOpts struct {
	// OutDir receives key.pem, cert.pem and chain.pem. Required.
	OutDir string
	// Progress, if set, is called after each stage with its duration.
	Progress func(step Step, took time.Duration, detail string)
	// EventLog is the TCG binary event log behind the quoted PCRs, sent
	// with the quotes (see ReadEventLog). Nil sends none.
	EventLog []byte
	// Metrics, if set, counts the attestation by outcome and observes its
	// time (up to the credentials opened).
	Metrics *metrics.Agent
	// Kubeconfig is where the kubeconfig of a kubelet credential is
	// written; empty: OutDir/KubeconfigFile.
	Kubeconfig string
	// BootstrapKubeconfig is where the bootstrap kubeconfig of a kubelet
	// credential in bootstrap_token mode is written; empty:
	// OutDir/BootstrapKubeconfigFile.
	BootstrapKubeconfig string
	// RelyingPartyNonce, if set (8 to 64 bytes), is sent as the relying
	// party's nonce: the broker's attestation result carries it.
	RelyingPartyNonce []byte
	// ResultFile, if set, receives the broker's attestation result (an EAR
	// JWT, for a relying party), 0600, written atomically with the
	// credentials; a broker that returns none (no attestation_results
	// block) fails the bootstrap at StepAttest, before anything is written.
	ResultFile string
	// CacheDir, if set, receives CacheFile (0600, written atomically with
	// the credentials): what the broker released, still sealed, for Reopen
	// after a reboot without the broker. It holds only TPM-bound blobs; whoever
	// has the disk and this TPM in the same boot state opens them until they
	// expire, as the running node does.
	CacheDir string
}

// Result describes a successful bootstrap.
type Result struct {
	ReceiptID string
	Files     []string
	NotAfter  time.Time
	Serial    string
	Changed   bool // the written set differs from what OutDir held before
	// NodeSVID is the node's X.509-SVID when the broker released one
	// (an x509_svid release), else nil. Bootstrap writes no file for it.
	NodeSVID *NodeSVID
	// Entries are the workload entries the broker returned.
	Entries []workload.Entry
	// WorkloadTrust verifies the signed selectors of Entries; nil when
	// they have none.
	WorkloadTrust *provenance.Trust
	// KubeletNode is the node name of the kubelet credential written, if
	// the broker released one.
	KubeletNode string
	// AttestationResult is the broker's attestation result (an EAR JWT),
	// empty when it issues none.
	AttestationResult string
}

// Bootstrap attests the node to the broker and writes the released TLS
// credential. On any failure it returns a *StepError naming the stage and
// leaves OutDir as it was.
func Bootstrap(ctx context.Context, broker pb.BrokerClient, node *Node, opts BootstrapOpts) (*Result, error) {
	if opts.OutDir == "" {
		return nil, errors.New("no output directory")
	}
	lap := newLap(opts.Progress)
	start := time.Now()
	res, files, extra, err := attestAndOpen(ctx, broker, node, opts, lap)
	opts.Metrics.Attestation(err, time.Since(start))
	if err != nil {
		return nil, err
	}
	if opts.ResultFile != "" {
		// A fresh result each time: not a change of the credentials.
		extra = append(extra, atomicfile.File{Path: opts.ResultFile, Data: []byte(res.AttestationResult + "\n"), Perm: 0o600})
	}
	if err := writeFiles(res, opts.OutDir, files, extra); err != nil {
		return nil, err
	}
	detail := "wrote " + opts.OutDir
	switch {
	case res.Serial != "":
		detail += fmt.Sprintf(" (serial %s, valid until %s)", res.Serial, res.NotAfter.UTC().Format(time.RFC3339))
	case !res.NotAfter.IsZero():
		detail += fmt.Sprintf(" (valid until %s)", res.NotAfter.UTC().Format(time.RFC3339))
	}
	lap(StepWrite, detail)
	return res, nil
}

// WriteFiles writes the file credentials of att (AttestOpts.Out) as
// Bootstrap does — atomically, all or none, with the credential cache of
// AttestOpts.CacheDir — and reports whether they changed (a new cache
// alone is no change).
func WriteFiles(att *Attestation, out FileOut) (changed bool, err error) {
	if att == nil || att.Result == nil {
		return false, errors.New("the attestation holds no file credentials")
	}
	res := *att.Result
	if err := writeFiles(&res, out.OutDir, att.Files, att.cache); err != nil {
		return false, err
	}
	return res.Changed, nil
}

// writeFiles writes files and extra (whose content does not count as a
// change) atomically, all or none, creating their directories, and notes
// in res which files it wrote and whether the credentials changed.
func writeFiles(res *Result, outDir string, files, extra []atomicfile.File) error {
	for _, f := range files {
		old, err := os.ReadFile(f.Path)
		if err != nil || string(old) != string(f.Data) {
			res.Changed = true
		}
		res.Files = append(res.Files, f.Path)
	}
	for _, f := range extra {
		res.Files = append(res.Files, f.Path)
	}
	all := append(slices.Clone(files), extra...)
	for _, dir := range outDirs(outDir, all) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return &StepError{StepWrite, fmt.Errorf("unable to create %s: %w", dir, err)}
		}
	}
	if err := atomicfile.WriteSet(all); err != nil {
		return &StepError{StepWrite, err}
	}
	return nil
}

// outDirs lists outDir and the other directories files go to, once each.
func outDirs(outDir string, files []atomicfile.File) []string {
	dirs := []string{outDir}
	for _, f := range files {
		if d := filepath.Dir(f.Path); !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// attestAndOpen attests and opens the released credentials inside the
// TPM: the result (without Files and Changed), the files to write and the
// credential cache to write with them (opts.CacheDir), if any.
func attestAndOpen(ctx context.Context, broker pb.BrokerClient, node *Node, opts BootstrapOpts, lap func(Step, string)) (*Result, []atomicfile.File, []atomicfile.File, error) {
	resp, err := attest(ctx, broker, node, opts.EventLog, opts.RelyingPartyNonce, opts.CacheDir, lap)
	if err != nil {
		return nil, nil, nil, err
	}
	if opts.ResultFile != "" && resp.GetAttestationResult() == "" {
		return nil, nil, nil, &StepError{StepAttest, errors.New("the broker returned no attestation result (it has no attestation_results block)")}
	}
	res, files, err := openFiles(node, resp, FileOut{OutDir: opts.OutDir, Kubeconfig: opts.Kubeconfig, BootstrapKubeconfig: opts.BootstrapKubeconfig}, true, lap)
	if err != nil || opts.CacheDir == "" {
		return res, files, nil, err
	}
	cache, err := cacheFiles(opts.CacheDir, resp)
	if err != nil {
		return nil, nil, nil, &StepError{StepWrite, err}
	}
	return res, files, cache, nil
}

// FileOut says where the credentials an attestation releases as files
// are written (Bootstrap; keybroker-agent run --out).
type FileOut struct {
	// OutDir receives key.pem, cert.pem, chain.pem, <release>.json,
	// <release>.token and kubelet-client.pem.
	OutDir string
	// Kubeconfig and BootstrapKubeconfig, if set, are where a kubelet
	// release's kubeconfigs go instead of OutDir.
	Kubeconfig, BootstrapKubeconfig string
}

// openFiles opens the credentials of resp that are written as files, and
// the node SVID and entries: the result (without Files and Changed) and
// the files. needFile refuses a response with no TLS or kubelet
// credential.
func openFiles(node *Node, resp *pb.AttestResponse, out FileOut, needFile bool, lap func(Step, string)) (*Result, []atomicfile.File, error) {
	opts := out
	var tlsCred *pb.TLSCredential
	var mode pb.ReleaseMode
	for _, c := range resp.GetCredentials() {
		if c.GetType() != pb.CredentialType_TLS_CERTIFICATE {
			continue
		}
		payload, err := node.openSealed(c)
		if err != nil {
			return nil, nil, &StepError{StepOpen, err}
		}
		tlsCred = &pb.TLSCredential{}
		if err := proto.Unmarshal(payload, tlsCred); err != nil {
			return nil, nil, &StepError{StepOpen, fmt.Errorf("credential %q: malformed payload: %w", c.GetName(), err)}
		}
		mode = c.GetMode()
		if mode == pb.ReleaseMode_TPM_RESIDENT {
			if tlsCred.KeyPem, err = node.residentKeyPEM(c.GetName(), tlsCred.GetCertificatePem()); err != nil {
				return nil, nil, &StepError{StepOpen, err}
			}
		}
		break
	}
	kube, err := openKubelet(node, resp, opts.OutDir, opts.Kubeconfig, opts.BootstrapKubeconfig)
	if err != nil {
		return nil, nil, &StepError{StepOpen, err}
	}
	var files []atomicfile.File
	var certs [][]byte // the certificates written, TLS first
	if tlsCred != nil {
		certs = append(certs, tlsCred.GetCertificatePem())
		files = []atomicfile.File{
			{Path: filepath.Join(opts.OutDir, KeyFile), Data: tlsCred.GetKeyPem(), Perm: 0o600},
			{Path: filepath.Join(opts.OutDir, CertFile), Data: tlsCred.GetCertificatePem(), Perm: 0o644},
			{Path: filepath.Join(opts.OutDir, ChainFile), Data: tlsCred.GetChainPem(), Perm: 0o644},
		}
	}
	if kube != nil {
		if c := kube.certificate(); c != nil {
			certs = append(certs, c)
		}
		files = append(files, kube.files...)
		if tlsCred == nil {
			mode = kube.mode
		}
	}
	svid, entries, trust, err := openSPIFFE(node, resp)
	if err != nil {
		return nil, nil, &StepError{StepOpen, err}
	}
	if svid != nil && svid.Key != nil {
		f, err := svid.residentFiles(opts.OutDir)
		if err != nil {
			return nil, nil, &StepError{StepOpen, err}
		}
		files = append(files, f...)
		certs = append(certs, f[0].Data)
	}
	named, err := openNamed(node, resp, opts.OutDir)
	if err != nil {
		return nil, nil, &StepError{StepOpen, err}
	}
	files = append(files, named...)
	if len(files) == 0 && needFile {
		return nil, nil, &StepError{StepOpen, errors.New("the broker released nothing written to files (no TLS, kubelet or Vault credential)")}
	}
	// The result's validity is the earliest of the files' — a certificate's,
	// a Vault token's — so that renewing at half of it renews them all. A
	// bootstrap token is used once and not renewed: it does not count.
	res := &Result{ReceiptID: resp.GetReceiptId(), NodeSVID: svid, Entries: entries, WorkloadTrust: trust, AttestationResult: resp.GetAttestationResult()}
	earliest := func(t time.Time) {
		if !t.IsZero() && (res.NotAfter.IsZero() || t.Before(res.NotAfter)) {
			res.NotAfter = t
		}
	}
	for i, c := range certs {
		leaf, err := parseLeaf(c)
		if err != nil {
			return nil, nil, &StepError{StepOpen, err}
		}
		if i == 0 {
			res.Serial = fmt.Sprintf("%x", leaf.SerialNumber)
		}
		earliest(leaf.NotAfter)
	}
	for _, c := range resp.GetCredentials() {
		if t := c.GetType(); (t == pb.CredentialType_SECRET || t == pb.CredentialType_VAULT_TOKEN) && c.GetNotAfterUnix() > 0 {
			earliest(time.Unix(c.GetNotAfterUnix(), 0))
		}
	}
	if kube != nil {
		res.KubeletNode = kube.cred.GetNodeName()
	}
	if mode == pb.ReleaseMode_RELEASE_MODE_UNSPECIFIED && len(resp.GetCredentials()) > 0 {
		mode = resp.GetCredentials()[0].GetMode()
	}
	lap(StepOpen, fmt.Sprintf("opened inside the TPM (%s)", mode))
	return res, files, nil
}

// openNamed opens the credentials of resp written to files named after
// their release, as the files to write in outDir, all 0600: SECRET as
// <name>.json, VAULT_TOKEN as <name>.token.
func openNamed(node *Node, resp *pb.AttestResponse, outDir string) ([]atomicfile.File, error) {
	var files []atomicfile.File
	for _, c := range resp.GetCredentials() {
		var f atomicfile.File
		var err error
		switch c.GetType() {
		case pb.CredentialType_SECRET:
			f, err = openSecret(node, c)
		case pb.CredentialType_VAULT_TOKEN:
			f, err = openToken(node, c)
		default:
			continue
		}
		if err != nil {
			return nil, err
		}
		f.Path, f.Perm = filepath.Join(outDir, f.Path), 0o600
		files = append(files, f)
	}
	return files, nil
}

// openFileCredential checks that c's name can name a file, opens c in the
// TPM and decodes its payload into msg.
func openFileCredential(node *Node, c *pb.Credential, msg proto.Message) error {
	name := c.GetName()
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\\\x00") || strings.HasPrefix(name, ".") {
		return fmt.Errorf("credential %q: the name cannot be a file name", name)
	}
	payload, err := node.openSealed(c)
	if err != nil {
		return err
	}
	err = proto.Unmarshal(payload, msg)
	clear(payload)
	if err != nil {
		return fmt.Errorf("credential %q: malformed payload: %w", name, err)
	}
	return nil
}

// openSecret opens a SECRET credential: the file <name>.json, a SecretFile.
func openSecret(node *Node, c *pb.Credential) (atomicfile.File, error) {
	var sc pb.SecretCredential
	if err := openFileCredential(node, c, &sc); err != nil {
		return atomicfile.File{}, err
	}
	doc, err := json.MarshalIndent(SecretFile{Path: sc.GetPath(), Version: sc.GetVersion(), Data: sc.GetData()}, "", "  ")
	if err != nil {
		return atomicfile.File{}, fmt.Errorf("credential %q: %w", c.GetName(), err)
	}
	return atomicfile.File{Path: c.GetName() + SecretFileExt, Data: append(doc, '\n')}, nil
}

// openToken opens a VAULT_TOKEN credential: the file <name>.token, the
// token alone.
func openToken(node *Node, c *pb.Credential) (atomicfile.File, error) {
	var tc pb.VaultTokenCredential
	if err := openFileCredential(node, c, &tc); err != nil {
		return atomicfile.File{}, err
	}
	if tc.GetToken() == "" || strings.ContainsAny(tc.GetToken(), " \t\r\n") {
		return atomicfile.File{}, fmt.Errorf("credential %q: the payload holds no usable token", c.GetName())
	}
	return atomicfile.File{Path: c.GetName() + TokenFileExt, Data: []byte(tc.GetToken())}, nil
}

// newLap returns a function that reports each finished stage to progress
// (if set) with the time since the previous one.
func newLap(progress func(Step, time.Duration, string)) func(Step, string) {
	if progress == nil {
		progress = func(Step, time.Duration, string) {}
	}
	start := time.Now()
	return func(s Step, detail string) {
		now := time.Now()
		progress(s, now.Sub(start), detail)
		start = now
	}
}

// attest runs the two round trips: challenge, activate, quote, attest. It
// returns the broker's response, the released credentials still sealed.
//
// With cacheDir it keeps the cache's ApprovalsFile in step with the policy
// counter: written right after the counter advanced, deleted when the
// broker refused the node (Node.takeRefusal).
func attest(ctx context.Context, broker pb.BrokerClient, node *Node, eventLog, rpNonce []byte, cacheDir string, lap func(Step, string)) (*pb.AttestResponse, error) {
	req, err := node.ChallengeRequest()
	if err != nil {
		return nil, &StepError{StepChallenge, err}
	}
	ch, err := broker.Challenge(ctx, req)
	if err != nil {
		return nil, &StepError{StepChallenge, rpcError(err)}
	}
	lap(StepChallenge, "challenge "+ch.GetChallengeId()[:min(8, len(ch.GetChallengeId()))]+"…, expires "+time.Unix(ch.GetExpiresUnix(), 0).UTC().Format(time.RFC3339))

	a, err := node.answer(ch, lap)
	if err != nil {
		return nil, err
	}
	counter, err := node.policyCounter()
	if err != nil {
		return nil, &StepError{StepAttest, err}
	}

	resp, err := broker.Attest(ctx, &pb.AttestRequest{ChallengeId: ch.GetChallengeId(), Quotes: a.quotes, EventLog: eventLog, ResidentKeys: a.keys, IdentityLog: a.identityLog,
		EkPublic: req.GetEkPublic(), EkCertificate: req.GetEkCertificate(), EkIntermediates: req.GetEkIntermediates(), AkPublic: req.GetAkPublic(),
		RelyingPartyNonce: rpNonce, PolicyCounter: counter})
	if err != nil {
		if cerr := node.takeRefusal(err, cacheDir); cerr != nil {
			err = fmt.Errorf("%w (and the policy counter: %v)", rpcError(err), cerr)
			return nil, &StepError{StepAttest, err}
		}
		return nil, &StepError{StepAttest, rpcError(err)}
	}
	if err := node.takeApprovals(resp, cacheDir); err != nil {
		return nil, &StepError{StepOpen, err}
	}
	lap(StepAttest, fmt.Sprintf("receipt %s, %d credential(s)", resp.GetReceiptId(), len(resp.GetCredentials())))
	return resp, nil
}

func parseLeaf(certPEM []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("released certificate is not PEM")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("unable to parse released certificate: %w", err)
	}
	return c, nil
}

// rpcError turns a gRPC status into an error carrying the broker's message
// and code; status.Code still finds the code (for metrics.Outcome).
func rpcError(err error) error {
	if s, ok := status.FromError(err); ok {
		return &brokerError{s}
	}
	return err
}

// brokerError is the broker's answer to a call that failed.
type brokerError struct{ s *status.Status }

func (e *brokerError) Error() string {
	return fmt.Sprintf("broker refused (%s): %s", e.s.Code(), e.s.Message())
}

// GRPCStatus implements the interface status.FromError looks for.
func (e *brokerError) GRPCStatus() *status.Status { return e.s }

// answer answers a challenge inside the TPM: it activates the credential
// (only the TPM holding the EK and the AK can) and quotes with the recovered
// secret, and certifies a new key for each tpm_resident release
// (NodeOpts.TPMResident) over it, reporting each stage to lap. Errors are
// *StepError.
func (n *Node) answer(ch *pb.ChallengeResponse, lap func(Step, string)) (*answered, error) {
	secret, err := n.Activate(ch)
	if err != nil {
		return nil, &StepError{StepActivate, err}
	}
	defer clear(secret)
	lap(StepActivate, "credential activated: the AK and EK share this TPM")
	a := &answered{}
	if n.identityLog != nil {
		a.identityLog = n.identityLog()
	}
	if a.quotes, err = n.QuoteFor(ch, secret); err != nil {
		return nil, &StepError{StepQuote, err}
	}
	if a.keys, err = n.residentKeys(secret); err != nil {
		return nil, &StepError{StepQuote, err}
	}
	detail := fmt.Sprintf("%d bank(s) quoted", len(a.quotes))
	if len(a.keys) > 0 {
		detail += fmt.Sprintf(", %d TPM-resident key(s) certified", len(a.keys))
	}
	if len(a.identityLog) > 0 {
		detail += fmt.Sprintf(", identity log of %d bytes", len(a.identityLog))
	}
	lap(StepQuote, detail)
	return a, nil
}

// answered is a node's answer to a challenge: its quotes, the certifies
// of its TPM-resident keys and its record of issued identities (read just
// before the quotes).
type answered struct {
	quotes      []*pb.Quote
	keys        []*pb.ResidentKey
	identityLog []byte
}
