// Package cli holds what keybroker's commands share: running the
// subcommand the first argument names, and refusing missing required flags.
package cli

import (
	"flag"
	"fmt"
	"io"
)

// Command runs a subcommand with its arguments and returns the exit code.
type Command func(args []string, stdout, stderr io.Writer) int

// Dispatch runs the command of cmds that args[0] names. Without arguments
// it prints usage to stderr and returns 2; "help", "-h" and "--help" print
// usage to stdout; an unknown name is an error naming it ("unknown <what>
// %q"), followed by usage.
func Dispatch(what, usage string, cmds map[string]Command, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	if cmd, ok := cmds[args[0]]; ok {
		return cmd(args[1:], stdout, stderr)
	}
	switch args[0] {
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "unknown %s %q\n\n%s", what, args[0], usage)
	return 2
}

// Required reports whether the flags names of fs (as "--name") were given
// a value. If not, it writes "<fs name>: missing [--a --b]" and fs's usage
// to stderr and returns false: the command then exits 2.
func Required(fs *flag.FlagSet, stderr io.Writer, names ...string) bool {
	var missing []string
	for _, n := range names {
		if f := fs.Lookup(n[2:]); f == nil || f.Value.String() == "" {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return true
	}
	fmt.Fprintf(stderr, "%s: missing %v\n", fs.Name(), missing)
	fs.Usage()
	return false
}
