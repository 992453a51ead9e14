package agent

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/keybroker/keybroker/idlog"
)

// TPMPCR is one PCR of the TPM at RW, in the SHA-256 bank: what an
// idlog.File extends.
type TPMPCR struct {
	RW    io.ReadWriter
	Index int
}

// Read returns the PCR's SHA-256 value.
func (p TPMPCR) Read() ([32]byte, error) {
	var out [32]byte
	v, err := tpm2.ReadPCR(p.RW, p.Index, tpm2.AlgSHA256)
	if err != nil {
		return out, fmt.Errorf("unable to read sha256 PCR %d: %w", p.Index, err)
	}
	if len(v) != len(out) {
		return out, fmt.Errorf("sha256 PCR %d has %d bytes", p.Index, len(v))
	}
	copy(out[:], v)
	return out, nil
}

// Extend extends digest into the PCR's SHA-256 bank.
func (p TPMPCR) Extend(digest [32]byte) error {
	if err := tpm2.PCRExtend(p.RW, tpmutil.Handle(p.Index), tpm2.AlgSHA256, digest[:], ""); err != nil {
		return fmt.Errorf("unable to extend sha256 PCR %d: %w", p.Index, err)
	}
	return nil
}

// IdentityRecorder records the SVIDs the Workload API hands out
// (workload.Recorder) in Log, extending its PCR in the TPM that WithTPM
// lends. WithTPM must be the same exclusive access the attestations take,
// so that no record is extended between the log sent with an attestation
// and its quotes (NodeOpts.IdentityLog).
type IdentityRecorder struct {
	Log     *idlog.File
	WithTPM func(func(io.ReadWriter) error) error
}

// Record appends h to the log and extends it, unless it was recorded
// already in this boot; the SVID may be handed out only once it returns
// nil.
func (r *IdentityRecorder) Record(h idlog.Issued) error {
	if r.Log.Recorded(h) {
		return nil
	}
	return r.WithTPM(func(rw io.ReadWriter) error {
		_, err := r.Log.Append(h, TPMPCR{RW: rw, Index: r.Log.PCR()})
		return err
	})
}

// BootID returns the kernel's boot ID (a new one each boot), or "" where
// it cannot be read.
func BootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil || len(b) > 64 {
		return ""
	}
	return strings.TrimSpace(string(b))
}
