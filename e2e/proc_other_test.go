//go:build !linux

package e2e

import "os/exec"

// killWithParent is a no-op where the kernel cannot tie a child's life to its
// parent; t.Cleanup still stops the broker on normal test exit.
func killWithParent(*exec.Cmd) {}
