package main

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/internal/cli"
	"github.com/keybroker/keybroker/resident"
	"github.com/keybroker/keybroker/sealing"
)

// nodeFlags are the flags of every command that attests with the TPM.
type nodeFlags struct {
	tpm             string
	ak              string
	eventLog        string
	ekIntermediates string
	timeout         time.Duration
	counter         string
}

// nodeInputs is what nodeFlags name, read and checked.
type nodeInputs struct {
	eventLog      []byte
	intermediates [][]byte
	counter       uint32 // the policy counter's NV index; 0: none
	// residentNames and residentPCRs are --tpm-resident.
	residentNames []string
	residentPCRs  map[string]*resident.PCRs
}

func (n *nodeFlags) register(f *pflag.FlagSet, timeoutHelp string) {
	tpmFlag(f, &n.tpm)
	f.StringVar(&n.ak, "ak", "rsa", "attestation key type: rsa (RSA-2048) or ecc (P-256)")
	f.StringVar(&n.eventLog, "event-log", "auto", "TCG binary event log to send: auto (the kernel's, if present), none, or a file")
	f.StringVar(&n.ekIntermediates, "ek-intermediates", "", "PEM file with intermediate CA certificates to send with the EK certificate (at most 8)")
	f.DurationVar(&n.timeout, "timeout", time.Minute, timeoutHelp)
	f.StringVar(&n.counter, "pcr-policy-counter", "none", `the policy-version NV counter pcr_policy "authorized" releases need: none, default (NV index 0x01004b42) or an owner-range NV index in hex; defined on first use with the owner hierarchy's empty auth, reported to the broker and advanced when it revoked an approval`)
}

// check records every problem with the node flags and reads the files
// they name.
func (n *nodeFlags) check(p *cli.Problems) nodeInputs {
	var in nodeInputs
	p.Check("tpm", checkTPMSpec(n.tpm))
	if n.ak != "rsa" && n.ak != "ecc" {
		p.Addf("--ak: unknown AK type %q: want rsa or ecc", n.ak)
	}
	var err error
	if in.eventLog, err = agent.ReadEventLog(n.eventLog); err != nil {
		p.Check("event-log", err)
	}
	if n.ekIntermediates != "" {
		if in.intermediates, err = agent.ReadEKIntermediates(n.ekIntermediates); err != nil {
			p.Check("ek-intermediates", err)
		}
	}
	if n.timeout <= 0 {
		p.Addf("--timeout must be > 0, not %v", n.timeout)
	}
	in.counter, err = parseCounterIndex(n.counter)
	p.Check("pcr-policy-counter", err)
	return in
}

// parseCounterIndex reads --pcr-policy-counter: none (0), default, or an
// NV index in the owner range (0x01000000 to 0x013fffff).
func parseCounterIndex(s string) (uint32, error) {
	switch s {
	case "none":
		return 0, nil
	case "default":
		return uint32(sealing.DefaultCounterIndex), nil
	}
	n, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(s), "0x"), 16, 32)
	if err != nil || !strings.HasPrefix(strings.ToLower(s), "0x") || n < 0x01000000 || n > 0x013fffff {
		return 0, fmt.Errorf("%q: want none, default or an owner-range NV index 0x01000000..0x013fffff", s)
	}
	return uint32(n), nil
}

func tpmFlag(f *pflag.FlagSet, spec *string) {
	f.StringVar(spec, "tpm", "/dev/tpmrm0", "the TPM: a device path (/dev/tpmrm0), tcp://HOST:PORT (swtpm's data port) or simulator (embedded, for demos)")
}

// checkTPMSpec refuses a --tpm value agent.OpenTPM would not know, before
// anything is opened.
func checkTPMSpec(spec string) error {
	switch {
	case spec == "simulator", strings.HasPrefix(spec, "/"):
		return nil
	case strings.HasPrefix(spec, "tcp://"):
		if _, port, err := net.SplitHostPort(strings.TrimPrefix(spec, "tcp://")); err != nil || port == "" {
			return fmt.Errorf("%q: want tcp://HOST:PORT", spec)
		}
		return nil
	}
	return fmt.Errorf("unknown TPM %q: want simulator, tcp://HOST:PORT or a device path", spec)
}

// checkListenAddr refuses a --metrics-listen value that is not HOST:PORT
// with a numeric port; empty (off) is fine.
func checkListenAddr(addr string) error {
	if addr == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want HOST:PORT, such as 127.0.0.1:9465", addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%q: port %q is not a number from 0 to 65535", addr, port)
	}
	return nil
}

// brokerFlags name the broker and how to trust it.
type brokerFlags struct {
	addr       string
	caFile     string
	serverName string
}

func (b *brokerFlags) register(f *pflag.FlagSet) {
	f.StringVar(&b.addr, "broker", "", "broker address HOST:PORT (required)")
	f.StringVar(&b.caFile, "ca", "", "PEM file with the broker's CA bundle, pinned for TLS (required)")
	f.StringVar(&b.serverName, "server-name", "", "name to verify in the broker's certificate (default: the host in --broker)")
}

// check records every problem with the broker flags and returns the CA
// bundle read from --ca.
func (b *brokerFlags) check(p *cli.Problems) []byte {
	if b.addr == "" {
		p.Addf("missing required flag --broker")
	} else if _, _, err := net.SplitHostPort(b.addr); err != nil {
		p.Addf("--broker %q: want HOST:PORT", b.addr)
	}
	if b.caFile == "" {
		p.Addf("missing required flag --ca")
		return nil
	}
	caPEM, err := readPEMCerts(b.caFile, "broker CA bundle")
	p.Check("ca", err)
	return caPEM
}

// maxCAFile bounds a CA bundle file read from a flag.
const maxCAFile = 1 << 20

// readPEMCerts reads a CA bundle file that must hold a PEM certificate.
func readPEMCerts(path, what string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("unable to read the %s: %w", what, err)
	}
	if fi.Size() > maxCAFile {
		return nil, fmt.Errorf("the %s %s exceeds %d bytes", what, path, maxCAFile)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("unable to read the %s: %w", what, err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("the %s %s holds no PEM certificate", what, path)
	}
	return b, nil
}

// resultFlags ask the broker for an attestation result for a relying
// party.
type resultFlags struct {
	out   string
	nonce string
}

// The bounds of a relying party's nonce (AttestRequest.relying_party_nonce).
const (
	minResultNonce = 8
	maxResultNonce = 64
)

func (r *resultFlags) register(f *pflag.FlagSet) {
	f.StringVar(&r.out, "ear-out", "", "file for the broker's attestation result (EAR JWT, 0600; its directory is created if missing; the broker needs an attestation_results block)")
	f.StringVar(&r.nonce, "ear-nonce", "", "the relying party's nonce for the attestation result, hex (8 to 64 bytes; needs --ear-out)")
}

// check records every problem with the result flags and returns the
// decoded nonce.
func (r *resultFlags) check(p *cli.Problems) []byte {
	if r.nonce == "" {
		return nil
	}
	if r.out == "" {
		p.Addf("--ear-nonce needs --ear-out: the nonce goes only into the attestation result")
	}
	nonce, err := hex.DecodeString(r.nonce)
	switch {
	case err != nil:
		p.Addf("--ear-nonce: not hex: %v", err)
	case len(nonce) < minResultNonce || len(nonce) > maxResultNonce:
		p.Addf("--ear-nonce must be %d to %d bytes (%d to %d hex digits), not %d bytes", minResultNonce, maxResultNonce, 2*minResultNonce, 2*maxResultNonce, len(nonce))
	}
	return nonce
}

// residentFlags are the repeated --tpm-resident NAME[=BANK:PCRS] of the
// commands that attest.
type residentFlags struct{ specs []string }

func (r *residentFlags) register(f *pflag.FlagSet, use string) {
	f.StringArrayVar(&r.specs, "tpm-resident", nil, "name of a tpm_resident release (repeat for each, at most 8): create its key inside the TPM, have the AK certify it, "+
		"and let the broker sign only its certificate; "+use+". NAME=BANK:PCRS (e.g. node-svid=sha256:0,7) binds the key to the values those PCRs hold now "+
		"(PolicyPCR: the TPM signs with it only in this boot state), for an x509_svid release whose pcrs ask for it (PCRs 16 and 23 are refused: software can reset them); OpenSSL's tpm2 provider cannot use such a key")
}

// check records every problem with --tpm-resident and returns the release
// names and the PCRs their keys are bound to.
func (r *residentFlags) check(p *cli.Problems) ([]string, map[string]*resident.PCRs) {
	var names []string
	var pcrs map[string]*resident.PCRs
	for _, spec := range r.specs {
		name, sel, bound := strings.Cut(spec, "=")
		names = append(names, name)
		if !bound {
			continue
		}
		s, err := resident.ParsePCRs(sel)
		if err != nil {
			p.Addf("--tpm-resident %s: %v", spec, err)
			continue
		}
		if pcrs == nil {
			pcrs = map[string]*resident.PCRs{}
		}
		pcrs[name] = s
	}
	return names, pcrs
}

// runOnChange runs the --on-change shell command after the credentials in
// out changed, with KEYBROKER_OUT and KEYBROKER_SERIAL in its environment.
func runOnChange(ctx context.Context, command, out, serial string, stdout, stderr io.Writer) error {
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.Env = append(os.Environ(), "KEYBROKER_OUT="+out, "KEYBROKER_SERIAL="+serial)
	return cmd.Run()
}
