package loadgen

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"runtime"
	"slices"
	"time"

	"github.com/google/go-tpm/tpm2"
	"golang.org/x/sys/unix"

	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/internal/softtpm"
	"github.com/keybroker/keybroker/internal/tpmcred"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/sealing"
)

// Floor is the crypto floor of one release, in ms per operation: what no
// broker can avoid for a node of this key type connecting fresh, each
// step done by the broker's own code for it alone (MakeCredential, the
// import blob, the TLS certificate, the serving certificate's handshake),
// so that work cut from a step lowers the floor with it. The steps are
// those of the broker's BenchmarkCryptoFloor plus the server's side of one
// TLS 1.3 handshake and, for nodes with EK certificates, one EK
// certificate chain verification.
type Floor struct {
	// AKVerifyMs: one quote signature verified with the AK.
	AKVerifyMs float64 `json:"ak_verify_ms"`
	// MakeCredentialMs: one challenge secret encrypted to the EK (parsed
	// once, as verify.NodeIdentity.EKKey).
	MakeCredentialMs float64 `json:"make_credential_ms"`
	// ImportBlobMs: sealing.SealCredentialTo of a 32-byte payload to the
	// EK (parsed once).
	ImportBlobMs float64 `json:"import_blob_ms"`
	// CertificateMs: one P-256 key and its certificate signed by a CA, as
	// the broker issues a tls_certificate release (issue.CA.IssueTLS).
	CertificateMs float64 `json:"certificate_ms"`
	// TLSHandshakeMs: the server's side of a TLS 1.3 handshake with a
	// serving certificate and chain as the broker's (issue.CA
	// ServingCertificate), time blocked reading the client excluded.
	TLSHandshakeMs float64 `json:"tls_handshake_ms"`
	// EKChainMs, for nodes with EK certificates (Opts.EKCA): one node's
	// EK certificate and intermediate parsed and its chain verified to the
	// CA's root (x509 Certificate.Verify), as the broker does once per
	// node. Absent otherwise.
	EKChainMs float64 `json:"ek_chain_ms,omitempty"`
	TotalMs   float64 `json:"total_ms"`
}

// floorBudget is how long each operation is repeated (at least
// floorMinRuns times); the fastest mean is not sought, the typical one is.
const (
	floorBudget  = 300 * time.Millisecond
	floorMinRuns = 20
)

// MeasureFloor times each floor operation in a loop, in process, with
// node's keys and, with ekCA (nil: none), its EK certificate, one
// operation at a time: the floor of a broker with the machine to itself.
func MeasureFloor(node *softtpm.Node, ekCA *softtpm.EKCA) (Floor, error) {
	return measureFloor(node, ekCA, 1)
}

// MeasureFloorSaturated is MeasureFloor with procs operations at once,
// each on its own thread: the floor when every CPU is busy, as the
// broker's are during a boot storm. On CPUs whose hardware threads share
// a core (SMT) and its caches, the same operation then costs more CPU
// time than it does alone.
func MeasureFloorSaturated(node *softtpm.Node, ekCA *softtpm.EKCA, procs int) (Floor, error) {
	return measureFloor(node, ekCA, max(procs, 1))
}

func measureFloor(node *softtpm.Node, ekCA *softtpm.EKCA, procs int) (Floor, error) {
	ops, err := floorSteps(node, ekCA)
	if err != nil {
		return Floor{}, err
	}
	ms, err := timeSteps(ops, procs)
	if err != nil {
		return Floor{}, fmt.Errorf("unable to measure the crypto floor: %w", err)
	}
	var f Floor
	f.set(ms)
	return f, nil
}

// timeSteps is the mean cost in ms of each of ops, one after the other,
// each on procs threads at once.
func timeSteps(ops []func() (time.Duration, error), procs int) ([]float64, error) {
	ms := make([]float64, len(ops))
	for i, op := range ops {
		// Collect what came before (the fleet's keys: thousands of
		// them) now, not with background mark workers during the
		// measurement.
		runtime.GC()
		var err error
		if ms[i], err = timeOpOn(op, procs); err != nil {
			return nil, err
		}
	}
	return ms, nil
}

// floorSteps are the floor's operations for node, and with ekCA (nil:
// none) its EK chain verification, in Floor's field order.
func floorSteps(node *softtpm.Node, ekCA *softtpm.EKCA) ([]func() (time.Duration, error), error) {
	ops, err := floorOps(node)
	if err != nil {
		return nil, err
	}
	if ekCA != nil {
		verify, err := ekChainVerifier(node, ekCA)
		if err != nil {
			return nil, err
		}
		ops = append(ops, cpuTimed(verify))
	}
	return ops, nil
}

// set fills f from the costs of floorSteps' operations, in ms, in order.
func (f *Floor) set(ms []float64) {
	*f = Floor{}
	out := []*float64{&f.AKVerifyMs, &f.MakeCredentialMs, &f.ImportBlobMs, &f.CertificateMs, &f.TLSHandshakeMs, &f.EKChainMs}
	for i, v := range ms {
		*out[i] = v
		f.TotalMs += v
	}
}

// timeOpOn runs op on procs threads at once and returns its mean cost in
// ms over all of them.
func timeOpOn(op func() (time.Duration, error), procs int) (float64, error) {
	type result struct {
		ms  float64
		err error
	}
	results := make(chan result, procs)
	for range procs {
		go func() {
			ms, err := timeOp(op)
			results <- result{ms, err}
		}()
	}
	var sum float64
	var err error
	for range procs {
		r := <-results
		sum += r.ms
		err = errors.Join(err, r.err)
	}
	return sum / float64(procs), err
}

// timeOp is op's mean cost in ms, op running on a thread of its own and
// returning the cost of one run.
func timeOp(op func() (time.Duration, error)) (float64, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var total time.Duration
	runs := 0
	for start := time.Now(); runs < floorMinRuns || time.Since(start) < floorBudget; runs++ {
		d, err := op()
		if err != nil {
			return 0, err
		}
		total += d
	}
	return float64(total) / float64(runs) / float64(time.Millisecond), nil
}

// cpuTimed is an operation whose cost is the CPU time of the thread that
// runs it (locked to it by timeOp): time blocked on I/O, and time the
// thread waits for a CPU, does not count.
func cpuTimed(op func() error) func() (time.Duration, error) {
	return func() (time.Duration, error) {
		cpu0, err := threadCPU()
		if err != nil {
			return 0, err
		}
		if err := op(); err != nil {
			return 0, err
		}
		cpu1, err := threadCPU()
		return cpu1 - cpu0, err
	}
}

// threadCPU is the CPU time the calling thread has used.
func threadCPU() (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0, fmt.Errorf("unable to read the thread's CPU time: %w", err)
	}
	return time.Duration(ts.Nano()), nil
}

// floorOps are the floor's operations in Floor's field order.
func floorOps(node *softtpm.Node) ([]func() (time.Duration, error), error) {
	verify, err := akVerifier(node)
	if err != nil {
		return nil, err
	}
	issue, tlsCfg, err := certIssuer()
	if err != nil {
		return nil, err
	}
	ek, err := tpmcred.NewKey(node.EKPublic())
	if err != nil {
		return nil, err
	}
	akName := node.AKName()
	clientCfg := &tls.Config{RootCAs: tlsCfg.RootCAs, ServerName: tlsCfg.ServerName, MinVersion: tls.VersionTLS13}
	secret, payload := make([]byte, challenge.SecretSize), make([]byte, 32)
	return []func() (time.Duration, error){
		cpuTimed(verify),
		cpuTimed(func() error {
			_, _, err := challenge.MakeCredentialTo(ek, akName, secret)
			return err
		}),
		cpuTimed(func() error {
			_, err := sealing.SealCredentialTo(ek, "floor", pb.CredentialType_TLS_CERTIFICATE, payload, nil)
			return err
		}),
		cpuTimed(issue),
		func() (time.Duration, error) { return loopbackHandshake(tlsCfg, clientCfg, false) },
	}, nil
}

// akVerifier checks one of node's quote signatures with its AK.
func akVerifier(node *softtpm.Node) (func() error, error) {
	quotes, err := node.Quote(make([]byte, challenge.SecretSize))
	if err != nil || len(quotes) == 0 {
		return nil, fmt.Errorf("unable to quote for the crypto floor: %w", err)
	}
	akPub, err := tpm2.Unmarshal[tpm2.TPMTPublic](node.ChallengeRequest().GetAkPublic())
	if err != nil {
		return nil, err
	}
	key, err := tpm2.Pub(*akPub)
	if err != nil {
		return nil, err
	}
	sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](quotes[0].GetSignature())
	if err != nil {
		return nil, err
	}
	attest := quotes[0].GetAttest()
	bad := errors.New("quote signature does not verify")
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		s, err := sig.Signature.ECDSA()
		if err != nil {
			return nil, err
		}
		r, ss := new(big.Int).SetBytes(s.SignatureR.Buffer), new(big.Int).SetBytes(s.SignatureS.Buffer)
		return func() error {
			d := sha256.Sum256(attest)
			if !ecdsa.Verify(k, d[:], r, ss) {
				return bad
			}
			return nil
		}, nil
	case *rsa.PublicKey:
		s, err := sig.Signature.RSASSA()
		if err != nil {
			return nil, err
		}
		return func() error {
			d := sha256.Sum256(attest)
			if rsa.VerifyPKCS1v15(k, crypto.SHA256, d[:], s.Sig.Buffer) != nil {
				return bad
			}
			return nil
		}, nil
	}
	return nil, fmt.Errorf("AK key %T not supported", key)
}

// ekChainVerifier parses node's EK certificate and the intermediates it
// presents and verifies the chain to ekCA's root, as the broker does once
// per node (its TPM subject alternative name marked handled, as the
// broker's verify does).
func ekChainVerifier(node *softtpm.Node, ekCA *softtpm.EKCA) (func() error, error) {
	der, inters := node.EKCertificate()
	if der == nil {
		return nil, errors.New("the node has no EK certificate")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ekCA.Root())
	verify := func() error {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		for _, d := range inters {
			c, err := x509.ParseCertificate(d)
			if err != nil {
				return err
			}
			pool.AddCert(c)
		}
		cert.UnhandledCriticalExtensions = slices.DeleteFunc(cert.UnhandledCriticalExtensions,
			func(id asn1.ObjectIdentifier) bool { return id.Equal(oidSubjectAltName) })
		_, err = cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: pool,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		return err
	}
	if err := verify(); err != nil {
		return nil, fmt.Errorf("the node's EK certificate does not chain to the EK CA: %w", err)
	}
	return verify, nil
}

var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// certIssuer returns the broker's own issuance of a P-256 key and TLS
// certificate (issue.CA.IssueTLS, as for a tls_certificate release) by a
// fresh CA, and a TLS server configuration with that CA's serving
// certificate for 127.0.0.1, as the broker's listener has.
func certIssuer() (func() error, *tls.Config, error) {
	ca, cfg, err := floorCA()
	if err != nil {
		return nil, nil, err
	}
	return func() error { _, err := ca.IssueTLS(floorLeaf); return err }, cfg, nil
}

// floorLeaf is the certificate the floor issues, as the load generator's
// policy has the broker issue to each node.
var floorLeaf = issue.TLSTemplate{CommonName: "node-floor", DNSNames: []string{"floor.nodes.test"}, TTL: 2 * time.Hour}

// floorCA makes a fresh CA and a TLS server configuration with its
// serving certificate for 127.0.0.1, as the broker's listener has, which
// also trusts the CA and names 127.0.0.1 for clients made from it.
func floorCA() (*issue.CA, *tls.Config, error) {
	dir, err := os.MkdirTemp("", "keybroker-floor-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(dir)
	ca, err := issue.LoadOrCreateCA(dir, issue.CAOpts{})
	if err != nil {
		return nil, nil, err
	}
	serving, err := ca.ServingCertificate([]string{"127.0.0.1"})
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Certificate())
	return ca, &tls.Config{
		Certificates: []tls.Certificate{serving},
		RootCAs:      pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13,
	}, nil
}

// loopbackHandshake runs one TLS 1.3 handshake over loopback TCP between
// a server with serverCfg and a client with clientCfg, one of them on
// another goroutine, and returns the work of the side on the calling
// goroutine: the client's with timeClient, else the server's, as the CPU
// time of its thread (locked to it meanwhile) from the connection made to
// the handshake's end; time blocked reading the other side is not
// counted. Everything, accepting the connection included, must end
// within handshakeLimit.
func loopbackHandshake(serverCfg, clientCfg *tls.Config, timeClient bool) (time.Duration, error) {
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return 0, err
	}
	defer l.Close()
	deadline := time.Now().Add(handshakeLimit)
	if err := l.SetDeadline(deadline); err != nil {
		return 0, err
	}
	server := func(self bool) (time.Duration, error) {
		raw, err := l.Accept()
		if err != nil {
			return 0, err
		}
		defer raw.Close()
		return handshakeSide(tls.Server(raw, serverCfg), deadline, self)
	}
	client := func(self bool) (time.Duration, error) {
		raw, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			return 0, err
		}
		defer raw.Close()
		c := tls.Client(raw, clientCfg)
		if !self {
			// Wait for the server to finish reading the client's
			// Finished: the server's side is the one timed.
			defer func() { _ = c.SetReadDeadline(deadline); _, _ = c.Read(make([]byte, 1)) }()
		}
		return handshakeSide(c, deadline, self)
	}
	timed, other := server, client
	if timeClient {
		timed, other = client, server
	}
	otherErr := make(chan error, 1)
	go func() {
		_, err := other(false)
		if err != nil {
			// Unblock the timed side: its peer is gone.
			l.Close()
		}
		otherErr <- err
	}()
	d, err := timed(true)
	if err != nil {
		// Unblock the other side: its peer or its listener is gone.
		l.Close()
	}
	// Either side's failure, both when both failed: the refusal may be
	// the other side's, and the timed one only told of it.
	return d, errors.Join(err, <-otherErr)
}

// handshakeLimit bounds one of the floor's handshakes over loopback.
const handshakeLimit = 10 * time.Second

// handshakeSide runs c's handshake by deadline and, with timed, returns
// the CPU time of the calling thread it took (the goroutine locked to the
// thread meanwhile); c is closed if the handshake fails.
func handshakeSide(c *tls.Conn, deadline time.Time, timed bool) (time.Duration, error) {
	if err := c.SetDeadline(deadline); err != nil {
		return 0, err
	}
	var cpu0 time.Duration
	var err error
	if timed {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if cpu0, err = threadCPU(); err != nil {
			return 0, err
		}
	}
	err = c.HandshakeContext(context.Background())
	var took time.Duration
	if timed {
		cpu1, cpuErr := threadCPU()
		took, err = cpu1-cpu0, errors.Join(err, cpuErr)
	}
	if err != nil {
		c.Close()
		return 0, err
	}
	return took, nil
}
