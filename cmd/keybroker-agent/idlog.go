package main

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/pflag"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/agent/workload"
	"github.com/keybroker/keybroker/idlog"
	"github.com/keybroker/keybroker/internal/cli"
)

// identityFlags are the identity record of run and vault-login
// (docs/identities.md).
type identityFlags struct {
	dir string
	pcr int
}

func (f *identityFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.dir, "identity-log-dir", "", "run: record every SVID the Workload API hands out in DIR/"+idlog.FileName+
		" (0600, fsync'd, then extended into --identity-log-pcr); run and vault-login: send the current boot's record with each attestation; default: no record")
	fs.IntVar(&f.pcr, "identity-log-pcr", idlog.DefaultPCR, "with --identity-log-dir: the PCR (SHA-256 bank) the record extends: 10-15, one nothing else on the machine extends "+
		"(not 10 where IMA runs; systemd may measure into 15); the broker's identity_log_pcr must name the same")
}

func (f *identityFlags) check(p *cli.Problems) {
	if f.dir == "" {
		return
	}
	p.Check("identity-log-pcr", idlog.ValidPCR(f.pcr))
}

// openIdentityLog opens the identity record (nil without --identity-log-dir)
// and has the node send it with each attestation.
func openIdentityLog(f identityFlags, tpm *tpmSession, log *slog.Logger) (*idlog.File, error) {
	if f.dir == "" {
		return nil, nil
	}
	var lf *idlog.File
	err := tpm.withRW(func(rw io.ReadWriter) error {
		var err error
		lf, err = idlog.Open(f.dir, idlog.Opts{PCR: f.pcr, BootID: agent.BootID()}, agent.TPMPCR{RW: rw, Index: f.pcr})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("identity log: %w", err)
	}
	if w := idlog.PCRWarning(f.pcr); w != "" {
		log.Warn(w, "pcr", f.pcr)
	}
	if lf.DroppedLast {
		log.Warn("dropped the identity log's last record: it was written but never extended into the PCR (the agent stopped before the extend); the workload did not receive it",
			"pcr", f.pcr, "dir", f.dir)
	}
	if lf.Mismatch {
		log.Error("the identity log does not replay to its PCR (extended by something else, or the file was edited): the broker will refuse attestations until the next boot",
			"pcr", f.pcr, "dir", f.dir)
	}
	tpm.opts.IdentityLog = lf.Segment
	return lf, nil
}

// readIdentityLog reads the current boot's identity record for a one-shot
// attestation (nil without --identity-log-dir), leaving the file to the
// agent that keeps it.
func readIdentityLog(f identityFlags, rw io.ReadWriter) ([]byte, error) {
	if f.dir == "" {
		return nil, nil
	}
	seg, err := idlog.ReadSegment(f.dir, f.pcr, agent.TPMPCR{RW: rw, Index: f.pcr})
	if err != nil {
		return nil, fmt.Errorf("identity log: %w", err)
	}
	return seg, nil
}

// recorderOption has the Workload API record its handouts in lf, if set.
func recorderOption(lf *idlog.File, tpm *tpmSession) []workload.Option {
	if lf == nil {
		return nil
	}
	return []workload.Option{workload.WithRecorder(&agent.IdentityRecorder{Log: lf, WithTPM: tpm.withRW})}
}
