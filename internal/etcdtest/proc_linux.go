package etcdtest

import (
	"os/exec"
	"syscall"
)

// killWithParent asks the kernel to kill etcd if the test binary dies without
// running its cleanups (a panic or a -timeout), so no member outlives its test.
func killWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
