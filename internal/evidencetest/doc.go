// Package evidencetest builds TCG PC Client crypto-agile event logs for tests
// and extends the very same digests into a TPM, so that the log and the PCRs
// agree exactly — or, through the tamper helpers, disagree in a chosen way.
//
//	rw := tpmtest.Open(t)
//	l := evidencetest.Boot(evidencetest.BootOpts{
//		Banks:      []crypto.Hash{crypto.SHA1, crypto.SHA256}, // every bank the TPM allocated
//		SecureBoot: true,
//	})
//	if err := l.Extend(rw); err != nil { ... }
//	raw := l.Bytes()             // what the agent sends as the TCG event log
//	want := l.PCRs(crypto.SHA256) // what the TPM's PCRs now hold
//	bad := l.EditEvent(i, nil)    // self-consistent, but not what the TPM saw
//
// Boot logs a UEFI boot of shim, GRUB and Linux as OVMF, shim and GRUB log
// it, complete enough for go-eventlog's tpmeventlog.ReplayAndExtract (with
// extract.Opts{Loader: extract.GRUB}) to report the Secure Boot state and
// databases, the EFI applications, GRUB's commands and files, the kernel
// command line and the firmware version. A Log can also be written by hand:
// an Event without Digests is measured as the hash of its data.
//
// The package writes its own encodings from the TCG and UEFI specifications;
// it shares no code with the parsers it is used to test.
package evidencetest
