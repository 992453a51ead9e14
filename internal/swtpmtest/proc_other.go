//go:build !linux

package swtpmtest

import "os/exec"

// killWithParent is a no-op where the kernel cannot tie a child's life to its
// parent; tb.Cleanup still stops swtpm on normal test exit.
func killWithParent(*exec.Cmd) {}
