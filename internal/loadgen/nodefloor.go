package loadgen

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/internal/softtpm"
	"github.com/keybroker/keybroker/internal/tpmcred"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/sealing"
)

// NodeFloor is the node's side of one release, in ms of CPU per
// operation: the crypto the load generator does for each node it drives,
// each step done by the generator's own code (the software TPM, the
// agent's TLS configuration with the chain pinned), as Floor is the
// broker's side. On the broker's machine the two floors share its CPUs:
// their sum bounds how fast a broker can serve this generator there.
// The generator's check of each released key against its certificate is
// left out: a node could skip it.
type NodeFloor struct {
	// ActivateMs: TPM2_ActivateCredential of one challenge (the EK's
	// seed decrypted, the blob's HMAC checked, the secret decrypted).
	ActivateMs float64 `json:"activate_ms"`
	// QuoteMs: the quote of the activated secret, signed with the AK.
	QuoteMs float64 `json:"quote_ms"`
	// OpenMs: the released TLS credential imported and opened with the
	// EK, and decoded.
	OpenMs float64 `json:"open_ms"`
	// TLSHandshakeMs: the client's side of a TLS 1.3 handshake with the
	// broker's serving certificate, its chain verified once and pinned
	// (as the generator does), time blocked reading the server excluded.
	TLSHandshakeMs float64 `json:"tls_handshake_ms"`
	TotalMs        float64 `json:"total_ms"`
}

// MeasureNodeFloor times each of node's steps of a release in a loop, in
// process, one operation at a time on a thread of its own.
func MeasureNodeFloor(node *softtpm.Node) (NodeFloor, error) {
	ek, err := tpmcred.NewKey(node.EKPublic())
	if err != nil {
		return NodeFloor{}, fmt.Errorf("unable to measure the generator's floor: %w", err)
	}
	return measureNodeFloor(node, ek)
}

// measureNodeFloor is MeasureNodeFloor with the challenge and credential
// made for ek, which must be node's EK for the steps to succeed.
func measureNodeFloor(node *softtpm.Node, ek *tpmcred.Key) (NodeFloor, error) {
	ops, err := nodeFloorOps(node, ek)
	if err != nil {
		return NodeFloor{}, fmt.Errorf("unable to measure the generator's floor: %w", err)
	}
	ms, err := timeSteps(ops, 1)
	if err != nil {
		return NodeFloor{}, fmt.Errorf("unable to measure the generator's floor: %w", err)
	}
	f := NodeFloor{ActivateMs: ms[0], QuoteMs: ms[1], OpenMs: ms[2], TLSHandshakeMs: ms[3]}
	for _, v := range ms {
		f.TotalMs += v
	}
	return f, nil
}

// nodeFloorOps are node's steps of a release in NodeFloor's field order,
// against a challenge and a TLS credential made for ek, each checking its
// result.
func nodeFloorOps(node *softtpm.Node, ek *tpmcred.Key) ([]func() (time.Duration, error), error) {
	secret := make([]byte, challenge.SecretSize)
	secret[0] = 1
	blob, enc, err := challenge.MakeCredentialTo(ek, node.AKName(), secret)
	if err != nil {
		return nil, fmt.Errorf("challenge: %w", err)
	}
	ch := &pb.ChallengeResponse{CredentialBlob: blob, EncryptedSecret: enc}
	cred, serverCfg, caPEM, err := floorRelease(ek)
	if err != nil {
		return nil, err
	}
	clientCfg, err := generatorTLS("127.0.0.1:0", caPEM)
	if err != nil {
		return nil, err
	}
	// The generator verifies the chain on its first handshake only.
	if _, err := loopbackHandshake(serverCfg, clientCfg, true); err != nil {
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return []func() (time.Duration, error){
		cpuTimed(func() error {
			got, err := node.Activate(ch)
			if err != nil {
				return fmt.Errorf("activate: %w", err)
			}
			if !bytes.Equal(got, secret) {
				return errors.New("activate: the secret activated is not the one sent")
			}
			return nil
		}),
		cpuTimed(func() error {
			quotes, err := node.Quote(secret)
			if err == nil && len(quotes) == 0 {
				err = errors.New("no quote")
			}
			if err != nil {
				return fmt.Errorf("quote: %w", err)
			}
			return nil
		}),
		cpuTimed(func() error { _, err := openCredential(node, []*pb.Credential{cred}); return err }),
		func() (time.Duration, error) { return loopbackHandshake(serverCfg, clientCfg, true) },
	}, nil
}

// floorRelease makes a fresh CA, the TLS credential it issues for the
// floor sealed to ek as the generator's broker releases it (tpm_bound),
// and floorCA's TLS server configuration and the CA's bundle (PEM), which
// the generator trusts.
func floorRelease(ek *tpmcred.Key) (*pb.Credential, *tls.Config, []byte, error) {
	ca, serverCfg, err := floorCA()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("CA: %w", err)
	}
	tc, err := ca.IssueTLS(floorLeaf)
	if err != nil {
		return nil, nil, nil, err
	}
	payload, err := proto.Marshal(&pb.TLSCredential{KeyPem: tc.KeyPEM, CertificatePem: tc.CertificatePEM, ChainPem: tc.ChainPEM})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("unable to encode the TLS credential: %w", err)
	}
	cred, err := sealing.SealCredentialTo(ek, "node-tls", pb.CredentialType_TLS_CERTIFICATE, payload, nil)
	if err != nil {
		return nil, nil, nil, err
	}
	return cred, serverCfg, ca.BundlePEM(), nil
}

// text is f for people.
func (f NodeFloor) text() string {
	return fmt.Sprintf("%.3f ms (activate %.3f, quote %.3f, open %.3f, TLS 1.3 client handshake %.3f)",
		f.TotalMs, f.ActivateMs, f.QuoteMs, f.OpenMs, f.TLSHandshakeMs)
}
