//go:build !linux

package etcdtest

import "os/exec"

// killWithParent is a no-op where the kernel cannot tie a child's life to its
// parent; tb.Cleanup still stops every member on normal test exit.
func killWithParent(*exec.Cmd) {}
