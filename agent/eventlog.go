package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// KernelEventLog is where Linux exposes the firmware's TCG event log.
const KernelEventLog = "/sys/kernel/security/tpm0/binary_bios_measurements"

// MaxEventLogSize bounds the event log the agent sends (the broker refuses
// larger ones).
const MaxEventLogSize = 1 << 20

// ReadEventLog returns the event log named by spec:
//
//	auto   the kernel's log (KernelEventLog) if the file exists, else none
//	none   no event log
//	FILE   the TCG binary event log in FILE
//
// "none" (and "auto" without a kernel log) returns nil and no error.
func ReadEventLog(spec string) ([]byte, error) {
	switch spec {
	case "none", "":
		return nil, nil
	case "auto":
		if _, err := os.Stat(KernelEventLog); errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		spec = KernelEventLog
	}
	f, err := os.Open(spec)
	if err != nil {
		return nil, fmt.Errorf("unable to open event log: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxEventLogSize+1))
	if err != nil {
		return nil, fmt.Errorf("unable to read event log %s: %w", spec, err)
	}
	if len(b) > MaxEventLogSize {
		return nil, fmt.Errorf("event log %s exceeds %d bytes", spec, MaxEventLogSize)
	}
	return b, nil
}
