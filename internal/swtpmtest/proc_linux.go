package swtpmtest

import (
	"os/exec"
	"syscall"
)

// killWithParent asks the kernel to kill swtpm if the test binary dies without
// running its cleanups (a panic or a -timeout), so no TPM outlives its test.
func killWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
