package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/agent/metrics"
	"github.com/keybroker/keybroker/agent/workload"
	"github.com/keybroker/keybroker/internal/atomicfile"
	"github.com/keybroker/keybroker/internal/provenance"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/resident"
)

// NodeSVID is the node's X.509-SVID, released by an attestation (an
// x509_svid release) and opened inside the TPM. The agent authenticates to
// the broker with it to get workload SVIDs; it is never served to
// workloads.
type NodeSVID struct {
	SVID *x509svid.SVID
	// Bundle is the trust domain's bundle the broker sent with it.
	Bundle *spiffebundle.Bundle
	Mode   pb.ReleaseMode
	// Key is, for a TPM_RESIDENT node SVID, its key in the TPM (what
	// the TSS2 key file holds); SVID.PrivateKey then signs through the
	// TPM (NodeOpts.TPM). Nil otherwise.
	Key *resident.Key
}

// Attestation is what one attestation released for the Workload API,
// and with AttestOpts.Out the credentials to write as files.
type Attestation struct {
	ReceiptID string
	// NodeSVID is nil only with AttestOpts.Out, when the broker released
	// none.
	NodeSVID *NodeSVID
	Entries  []workload.Entry
	// WorkloadTrust verifies the signed selectors of Entries; nil when
	// they have none.
	WorkloadTrust *provenance.Trust
	// Files are the file credentials to write (AttestOpts.Out), and Result
	// what Bootstrap would say of them; NotAfter is Result's validity.
	Files  []atomicfile.File
	Result *Result
	// cache is the credential cache to write with Files
	// (AttestOpts.CacheDir), if any.
	cache []atomicfile.File
}

// renewBy is when the attestation's credentials are half through their
// life: the node SVID's, and the files' if any.
func (a *Attestation) renewBy(at time.Time) time.Time {
	var t time.Time
	if a.NodeSVID != nil {
		t = renewAt(at, a.NodeSVID.SVID.Certificates[0].NotAfter)
	}
	if a.Result != nil && !a.Result.NotAfter.IsZero() {
		if f := renewAt(at, a.Result.NotAfter); t.IsZero() || f.Before(t) {
			t = f
		}
	}
	return t
}

// AttestOpts tune Attest.
type AttestOpts struct {
	// Progress, if set, is called after each stage with its duration.
	Progress func(step Step, took time.Duration, detail string)
	// EventLog is the TCG binary event log sent with the quotes (see
	// ReadEventLog). Nil sends none.
	EventLog []byte
	// Metrics, if set, counts the attestation by outcome and observes its
	// time (up to the node SVID opened).
	Metrics *metrics.Agent
	// Out, if set, also opens the credentials released as files (TLS,
	// kubelet, Vault secrets and tokens) into Attestation.Files, and makes
	// the node SVID optional.
	Out *FileOut
	// CacheDir, with Out, has WriteFiles also write CacheFile there, as
	// BootstrapOpts.CacheDir does: the credentials still sealed, for
	// Reopen after a reboot without the broker.
	CacheDir string
}

// Attest attests the node to the broker, as Bootstrap does, and opens the
// node X.509-SVID the broker released, with the workload entries this node
// may hand out. Other credentials are left sealed and no file is written.
// On failure it returns a *StepError naming the stage.
func Attest(ctx context.Context, broker pb.BrokerClient, node *Node, opts AttestOpts) (*Attestation, error) {
	start := time.Now()
	att, err := attestSPIFFE(ctx, broker, node, opts)
	opts.Metrics.Attestation(err, time.Since(start))
	return att, err
}

func attestSPIFFE(ctx context.Context, broker pb.BrokerClient, node *Node, opts AttestOpts) (*Attestation, error) {
	lap := newLap(opts.Progress)
	resp, err := attest(ctx, broker, node, opts.EventLog, nil, opts.CacheDir, lap)
	if err != nil {
		return nil, err
	}
	if opts.Out != nil {
		res, files, err := openFiles(node, resp, *opts.Out, false, lap)
		if err != nil {
			return nil, err
		}
		att := &Attestation{ReceiptID: resp.GetReceiptId(), NodeSVID: res.NodeSVID, Entries: res.Entries, WorkloadTrust: res.WorkloadTrust, Files: files, Result: res}
		if opts.CacheDir != "" {
			if att.cache, err = cacheFiles(opts.CacheDir, resp); err != nil {
				return nil, &StepError{StepWrite, err}
			}
		}
		return att, nil
	}
	svid, entries, trust, err := openSPIFFE(node, resp)
	if err != nil {
		return nil, &StepError{StepOpen, err}
	}
	if svid == nil {
		return nil, &StepError{StepOpen, errors.New("the broker released no X.509-SVID (no x509_svid release in the policies that allow this node)")}
	}
	lap(StepOpen, fmt.Sprintf("node SVID %s opened inside the TPM (%s), valid until %s; workload entries: %d",
		svid.SVID.ID, svid.Mode, svid.SVID.Certificates[0].NotAfter.UTC().Format(time.RFC3339), len(entries)))
	return &Attestation{ReceiptID: resp.GetReceiptId(), NodeSVID: svid, Entries: entries, WorkloadTrust: trust}, nil
}

// openSPIFFE opens the first X509_SVID credential of resp (nil if there is
// none) and converts the workload entries, which must belong to its trust
// domain.
func openSPIFFE(node *Node, resp *pb.AttestResponse) (*NodeSVID, []workload.Entry, *provenance.Trust, error) {
	var svid *NodeSVID
	for _, c := range resp.GetCredentials() {
		if c.GetType() != pb.CredentialType_X509_SVID {
			continue
		}
		payload, err := node.openSealed(c)
		if err != nil {
			return nil, nil, nil, err
		}
		if c.GetMode() == pb.ReleaseMode_TPM_RESIDENT {
			svid, err = node.residentNodeSVID(c.GetName(), payload)
		} else {
			svid, err = parseNodeSVID(payload)
		}
		clear(payload)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("credential %q: %w", c.GetName(), err)
		}
		svid.Mode = c.GetMode()
		break
	}
	var td spiffeid.TrustDomain
	if svid != nil {
		td = svid.SVID.ID.TrustDomain()
	}
	entries, err := entriesFromProto(td, resp.GetWorkloadEntries())
	if err != nil {
		return nil, nil, nil, err
	}
	trust, err := provenance.TrustFromProto(resp.GetWorkloadTrust())
	if err != nil {
		return nil, nil, nil, fmt.Errorf("workload trust: %w", err)
	}
	return svid, entries, trust, nil
}

// parseNodeSVID decodes an X509SVIDCredential payload and checks that the
// SVID names the ID it claims, matches its key and chains to the bundle.
func parseNodeSVID(payload []byte) (*NodeSVID, error) {
	var cred pb.X509SVIDCredential
	if err := proto.Unmarshal(payload, &cred); err != nil {
		return nil, fmt.Errorf("malformed payload: %w", err)
	}
	defer clear(cred.KeyPem)
	svid, err := x509svid.Parse(cred.GetCertificatesPem(), cred.GetKeyPem())
	if err != nil {
		return nil, fmt.Errorf("unable to parse the node X.509-SVID: %w", err)
	}
	return checkNodeSVID(svid, &cred)
}

// residentNodeSVID decodes the X509SVIDCredential payload of the
// tpm_resident release name: the SVID must certify the key this node
// created in its TPM for the release, and its private key is a signer
// through the TPM. The payload must carry no key.
func (n *Node) residentNodeSVID(name string, payload []byte) (*NodeSVID, error) {
	var cred pb.X509SVIDCredential
	if err := proto.Unmarshal(payload, &cred); err != nil {
		return nil, fmt.Errorf("malformed payload: %w", err)
	}
	if len(cred.GetKeyPem()) != 0 {
		clear(cred.KeyPem)
		return nil, errors.New("a tpm_resident node X.509-SVID carries a private key")
	}
	certs, err := parseCertificatesPEM(cred.GetCertificatesPem())
	if err != nil {
		return nil, fmt.Errorf("unable to parse the node X.509-SVID: %w", err)
	}
	k, err := n.residentKeyFor(name, certs[0])
	if err != nil {
		return nil, err
	}
	signer, err := k.Signer(n.tpm)
	if err != nil {
		return nil, err
	}
	id, err := x509svid.IDFromCert(certs[0])
	if err != nil {
		return nil, fmt.Errorf("unable to parse the node X.509-SVID: %w", err)
	}
	svid, err := checkNodeSVID(&x509svid.SVID{ID: id, Certificates: certs, PrivateKey: signer}, &cred)
	if err != nil {
		return nil, err
	}
	svid.Key = k
	return svid, nil
}

// parseCertificatesPEM reads PEM data holding only CERTIFICATE blocks, at
// least one.
func parseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := bytes.TrimSpace(data); len(rest) > 0; rest = bytes.TrimSpace(rest) {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil || block.Type != "CERTIFICATE" {
			return nil, errors.New("not a sequence of PEM certificates")
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificate")
	}
	return certs, nil
}

// checkNodeSVID checks that svid names the ID cred claims and chains to
// the bundle cred carries.
func checkNodeSVID(svid *x509svid.SVID, cred *pb.X509SVIDCredential) (*NodeSVID, error) {
	if svid.ID.String() != cred.GetSpiffeId() {
		return nil, fmt.Errorf("the node X.509-SVID names %s, the credential %q", svid.ID, cred.GetSpiffeId())
	}
	bundle, err := spiffebundle.Parse(svid.ID.TrustDomain(), cred.GetSpiffeBundle())
	if err != nil {
		return nil, fmt.Errorf("unable to parse the trust domain bundle: %w", err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
		return nil, fmt.Errorf("the node X.509-SVID does not verify against its bundle: %w", err)
	}
	return &NodeSVID{SVID: svid, Bundle: bundle}, nil
}

// entriesFromProto converts and validates workload entries. With a
// non-zero td every entry's ID must be in it. Any invalid entry fails all:
// the broker validates them, so one that is not valid means something is
// wrong between it and the agent.
func entriesFromProto(td spiffeid.TrustDomain, in []*pb.WorkloadEntry) ([]workload.Entry, error) {
	if len(in) > MaxWorkloadEntries {
		return nil, fmt.Errorf("%d workload entries, at most %d allowed", len(in), MaxWorkloadEntries)
	}
	var out []workload.Entry
	var errs []error
	for _, e := range in {
		id, err := spiffeid.FromString(e.GetSpiffeId())
		if err != nil {
			errs = append(errs, fmt.Errorf("workload entry %q: invalid SPIFFE ID %q: %w", e.GetName(), e.GetSpiffeId(), err))
			continue
		}
		if !td.IsZero() && !id.MemberOf(td) {
			errs = append(errs, fmt.Errorf("workload entry %q: %s is not in trust domain %s", e.GetName(), id, td.Name()))
			continue
		}
		we := workload.Entry{Name: e.GetName(), ID: id, TTL: time.Duration(e.GetTtlSeconds()) * time.Second}
		for _, s := range e.GetSelectors() {
			we.Selectors = append(we.Selectors, workload.Selector{Type: s.GetType(), Value: s.GetValue()})
		}
		if err := we.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("workload %w", err))
			continue
		}
		out = append(out, we)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// residentFiles are the files of a tpm_resident node SVID in outDir:
// SVIDFile (the certificates, the SVID first) and SVIDKeyFile (the TSS2
// key file).
func (s *NodeSVID) residentFiles(outDir string) ([]atomicfile.File, error) {
	key, err := s.Key.PEM()
	if err != nil {
		return nil, fmt.Errorf("node X.509-SVID %s: %w", s.SVID.ID, err)
	}
	var certs []byte
	for _, c := range s.SVID.Certificates {
		certs = append(certs, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return []atomicfile.File{
		{Path: filepath.Join(outDir, SVIDFile), Data: certs, Perm: 0o644},
		{Path: filepath.Join(outDir, SVIDKeyFile), Data: key, Perm: 0o600},
	}, nil
}
