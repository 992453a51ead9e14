package vaulte2e

import (
	"os/exec"
	"syscall"
)

// killWithParent asks the kernel to kill a child if the test binary dies
// without running its cleanups (a panic or a -timeout).
func killWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
