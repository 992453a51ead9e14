// Package brokertest sets up, for tests, a broker Server and a node on the
// embedded TPM simulator, with a policy that allows exactly that node in its
// current boot state. Tests that use it must not run in parallel (one
// simulator per process).
package brokertest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/tpmtest"
	"github.com/keybroker/keybroker/policies"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// Policy is the policy Env installs: the node's EK, its PCR 0 and 7 as
// measured at setup, and one TLS release. Arguments: EK hash, PCR 0 hex,
// PCR 7 hex, mode, extra release lines.
const Policy = `policy "nodes" {
  select {
    ek_hashes = [%q]
  }
  require = [
    "pcrs.sha256[0] == '%s'",
    "pcrs.sha256[7] == '%s'",
  ]
  release "node-tls" {
    type        = "tls_certificate"
    mode        = %q%s
    ttl         = "2h"
    common_name = "node-${ek_hash_short}"
    dns_names   = ["${ek_hash_short}.nodes.test"]
  }
}
`

// TrustDomain is the SPIFFE trust domain of Opts.SPIFFE.
const TrustDomain = "example.org"

// SPIFFEPolicy is the policy New adds with Opts.SPIFFE: for the same node
// and PCRs as Policy, the node's X.509-SVID ("node-svid", spiffe ID
// spiffe://example.org/node/<EK hash short>) and workload entries.
// Arguments: EK hash, PCR 0 hex, PCR 7 hex, mode, extra release lines,
// workload blocks.
const SPIFFEPolicy = `policy "spiffe" {
  select {
    ek_hashes = [%q]
  }
  require = [
    "pcrs.sha256[0] == '%s'",
    "pcrs.sha256[7] == '%s'",
  ]
  release "node-svid" {
    type      = "x509_svid"
    mode      = %q%s
    ttl       = "2h"
    spiffe_id = "spiffe://example.org/node/${ek_hash_short}"
  }
%s}
`

// Workloads are the workload entries of SPIFFEPolicy unless
// Opts.Workloads says otherwise: web (1h) and db (10m).
const Workloads = `  workload "web" {
    spiffe_id = "spiffe://example.org/web"
    selectors = ["unix:uid:1000"]
    ttl       = "1h"
  }
  workload "db" {
    spiffe_id = "spiffe://example.org/db"
    selectors = ["unix:uid:70", "unix:path:/usr/bin/postgres"]
    ttl       = "10m"
  }
`

// Opts tune New.
type Opts struct {
	// Mode is the release mode: "pcr_sealed" (default, over sha256 PCR 0
	// and 7), "tpm_bound" or "tpm_resident" (the TLS release only; the
	// SPIFFE policy's is then tpm_bound).
	Mode string
	// SPIFFE gives the server a SPIFFE authority for TrustDomain and adds
	// SPIFFEPolicy.
	SPIFFE bool
	// Workloads replaces the workload blocks of SPIFFEPolicy (default
	// Workloads).
	Workloads string
	// SVIDMode, if set, is the mode of SPIFFEPolicy's node-svid release
	// ("tpm_resident" for a node SVID whose key the agent creates in the
	// TPM), with SVIDExtra as its extra lines (such as "\n    pcrs = [0,
	// 7]"); default: as Mode, tpm_bound when Mode is tpm_resident.
	SVIDMode, SVIDExtra string
	// Server, if set, may change the server options before the server is
	// made.
	Server func(*broker.ServerOpts)
}

// Env is a node and a broker Server that trusts and allows it.
type Env struct {
	RW     io.ReadWriteCloser
	Node   *agent.Node
	EKHash string
	Server *broker.Server
	Store  store.Backend
	CA     *issue.CA
	// SPIFFE is the server's SPIFFE authority (Opts.SPIFFE), else nil.
	SPIFFE *issue.SPIFFE
	// PolicySource is the policy document the server was given, for
	// writing to a file (broker.Start).
	PolicySource string

	mu  sync.Mutex
	now time.Time
}

// New starts the simulator, measures a boot into PCR 0 and 7, creates the
// node's keys and a Server whose policy allows the node as measured.
func New(tb testing.TB, o Opts) *Env {
	tb.Helper()
	e := &Env{now: time.Now()}
	e.RW = tpmtest.Open(tb)
	Extend(tb, e.RW, 0, "firmware v1")
	Extend(tb, e.RW, 7, "secure boot on")
	node, err := agent.NewNode(e.RW, agent.NodeOpts{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(node.Close)
	e.Node = node
	if e.EKHash, err = node.EKHash(); err != nil {
		tb.Fatal(err)
	}
	pcrs, err := client.ReadPCRs(e.RW, tpm2.PCRSelection{Hash: tpm2.AlgSHA256, PCRs: []int{0, 7}})
	if err != nil {
		tb.Fatal(err)
	}
	mode, extra := "pcr_sealed", "\n    pcr_bank    = \"sha256\"\n    pcrs        = [0, 7]"
	switch o.Mode {
	case "tpm_bound", "tpm_resident":
		mode, extra = o.Mode, ""
	}
	pcr0, pcr7 := hex.EncodeToString(pcrs.GetPcrs()[0]), hex.EncodeToString(pcrs.GetPcrs()[7])
	src := fmt.Sprintf(Policy, e.EKHash, pcr0, pcr7, mode, extra)
	if o.SPIFFE {
		workloads := o.Workloads
		if workloads == "" {
			workloads = Workloads
		}
		svidMode, svidExtra := mode, extra
		switch {
		case o.SVIDMode != "":
			svidMode, svidExtra = o.SVIDMode, o.SVIDExtra
		case mode == "tpm_resident":
			svidMode = "tpm_bound"
		}
		src += fmt.Sprintf(SPIFFEPolicy, e.EKHash, pcr0, pcr7, svidMode, svidExtra, workloads)
	}
	e.PolicySource = src
	pol, err := policies.Parse([]byte(src), "test.hcl")
	if err != nil {
		tb.Fatalf("policy: %v", err)
	}
	st := OpenStore(tb)
	e.Store = st
	// The server's clock starts now, after the store (an etcd server for
	// the test may take seconds to start): certificates are issued on the
	// wall clock, and tests move the server's clock to their expiry.
	e.now = time.Now()
	if e.CA, err = issue.LoadOrCreateCA(tb.TempDir(), issue.CAOpts{}); err != nil {
		tb.Fatal(err)
	}
	if o.SPIFFE {
		if e.SPIFFE, err = issue.LoadOrCreateSPIFFE(tb.TempDir(), TrustDomain, issue.CAOpts{}); err != nil {
			tb.Fatal(err)
		}
	}
	opts := broker.ServerOpts{
		Verify:   verify.Opts{Trust: verify.Trust{EKHashes: []string{e.EKHash}}},
		Store:    st,
		CA:       e.CA,
		Policies: pol,
		SPIFFE:   e.SPIFFE,
		Now:      e.Clock,
	}
	if o.Server != nil {
		o.Server(&opts)
	}
	if e.Server, err = broker.NewServer(opts); err != nil {
		tb.Fatal(err)
	}
	return e
}

// Clock is the server's clock.
func (e *Env) Clock() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now
}

// Advance moves the server's clock.
func (e *Env) Advance(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.now = e.now.Add(d)
}

// Challenge asks for a challenge and activates it in the TPM.
func (e *Env) Challenge(tb testing.TB) (*pb.ChallengeResponse, []byte) {
	tb.Helper()
	req, err := e.Node.ChallengeRequest()
	if err != nil {
		tb.Fatal(err)
	}
	ch, err := e.Server.Challenge(context.Background(), req)
	if err != nil {
		tb.Fatalf("Challenge: %v", err)
	}
	secret, err := e.Node.Activate(ch)
	if err != nil {
		tb.Fatalf("Activate: %v", err)
	}
	return ch, secret
}

// AttestRequest answers a challenge with fresh quotes over nonce.
func (e *Env) AttestRequest(tb testing.TB, ch *pb.ChallengeResponse, nonce []byte) *pb.AttestRequest {
	tb.Helper()
	quotes, err := e.Node.Quote(nonce)
	if err != nil {
		tb.Fatalf("Quote: %v", err)
	}
	return e.Answer(tb, ch, quotes)
}

// Answer is the AttestRequest answering ch with quotes, presenting the
// node's EK and AK material as its challenge request did.
func (e *Env) Answer(tb testing.TB, ch *pb.ChallengeResponse, quotes []*pb.Quote) *pb.AttestRequest {
	tb.Helper()
	req, err := e.Node.ChallengeRequest()
	if err != nil {
		tb.Fatal(err)
	}
	return &pb.AttestRequest{ChallengeId: ch.GetChallengeId(), Quotes: quotes,
		EkPublic: req.GetEkPublic(), EkCertificate: req.GetEkCertificate(), EkIntermediates: req.GetEkIntermediates(), AkPublic: req.GetAkPublic()}
}

// Receipts lists the server's receipts, newest first.
func (e *Env) Receipts(tb testing.TB) []store.Receipt {
	tb.Helper()
	rs, err := e.Store.ListReceipts(context.Background(), store.ListOpts{Limit: store.MaxListLimit})
	if err != nil {
		tb.Fatal(err)
	}
	return rs
}

// Extend extends a SHA-256 PCR with the digest of event.
func Extend(tb testing.TB, rw io.ReadWriter, pcr int, event string) {
	tb.Helper()
	sum := sha256.Sum256([]byte(event))
	if err := tpm2.PCRExtend(rw, tpmutil.Handle(pcr), tpm2.AlgSHA256, sum[:], ""); err != nil {
		tb.Fatal(err)
	}
}

// OpenNodeSVID opens, in the node's TPM, the X509_SVID credential named
// name in resp and checks it: the SVID parses with its key, names the ID
// the payload claims, and verifies against the bundle sent with it.
func (e *Env) OpenNodeSVID(tb testing.TB, resp *pb.AttestResponse, name string) (*x509svid.SVID, *spiffebundle.Bundle) {
	tb.Helper()
	for _, c := range resp.GetCredentials() {
		if c.GetName() != name {
			continue
		}
		if c.GetType() != pb.CredentialType_X509_SVID {
			tb.Fatalf("credential %q has type %v, want X509_SVID", name, c.GetType())
		}
		payload, err := e.Node.Open(c)
		if err != nil {
			tb.Fatalf("Open(%s): %v", name, err)
		}
		var cred pb.X509SVIDCredential
		if err := proto.Unmarshal(payload, &cred); err != nil {
			tb.Fatalf("payload of %s: %v", name, err)
		}
		svid, err := x509svid.Parse(cred.GetCertificatesPem(), cred.GetKeyPem())
		if err != nil {
			tb.Fatalf("x509svid.Parse: %v", err)
		}
		if svid.ID.String() != cred.GetSpiffeId() {
			tb.Fatalf("SVID names %s, the payload %s", svid.ID, cred.GetSpiffeId())
		}
		bundle, err := spiffebundle.Parse(svid.ID.TrustDomain(), cred.GetSpiffeBundle())
		if err != nil {
			tb.Fatalf("spiffebundle.Parse: %v", err)
		}
		if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
			tb.Fatalf("the node SVID does not verify against its bundle: %v", err)
		}
		return svid, bundle
	}
	tb.Fatalf("no credential %q in the response", name)
	return nil, nil
}

// StartOpts configure Start.
type StartOpts struct {
	// Policy is the policy document the broker loads.
	Policy string
	// EKHashes are trusted by hash (ek_allow).
	EKHashes []string
	// TrustDomain, if set, configures a SPIFFE authority.
	TrustDomain string
	// PCRBanks, if set, is the broker's pcr_banks.
	PCRBanks []string
	// Config, if set, is appended to broker.hcl (paths in it are relative
	// to Dir, or absolute).
	Config string
}

// Start runs a real broker (gRPC over TLS on a loopback port chosen by the
// kernel, its data directory in a temporary directory, no policy polling)
// and stops it when the test ends.
func Start(tb testing.TB, o StartOpts) *broker.Running {
	tb.Helper()
	dir := tb.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.hcl"), []byte(o.Policy), 0o600); err != nil {
		tb.Fatal(err)
	}
	cfg := fmt.Sprintf("listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\npolicies = [\"p.hcl\"]\npolicy_poll_interval = \"0\"\nek_allow = %s\n", hclStrings(o.EKHashes))
	if o.TrustDomain != "" {
		cfg += fmt.Sprintf("spiffe {\n  trust_domain = %q\n}\n", o.TrustDomain)
	}
	if o.PCRBanks != nil {
		cfg += fmt.Sprintf("pcr_banks = %s\n", hclStrings(o.PCRBanks))
	}
	cfg += o.Config
	c, err := broker.ParseConfig([]byte(cfg), filepath.Join(dir, "broker.hcl"))
	if err != nil {
		tb.Fatal(err)
	}
	r, err := broker.Start(c, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(r.Stop)
	return r
}

func hclStrings(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
