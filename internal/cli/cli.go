// Package cli runs keybroker's command trees (spf13/cobra) with one set of
// conventions: --help prints once, to stdout, and exits 0; usage errors
// (unknown command or flag, missing or bad flag value) go to stderr with a
// hint and exit 2; runtime failures exit 1. Every root gets --version, a
// version command and bash/zsh completion.
package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/keybroker/keybroker/internal/version"
)

// Exit codes.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
)

// NewRoot returns a root command named name: with --version and a version
// subcommand printing "<name> <version.String()>", and commands added.
func NewRoot(name, short, long string, cmds ...*cobra.Command) *cobra.Command {
	root := &cobra.Command{
		Use:     name,
		Short:   short,
		Long:    long,
		Version: version.String(),
		Args:    cobra.ArbitraryArgs,
		RunE:    missingCommand,
	}
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	root.AddCommand(cmds...)
	root.SetHelpCommand(&cobra.Command{
		Use:   "help [command]",
		Short: "Help about any command",
		RunE: func(c *cobra.Command, args []string) error {
			cmd, rest, err := c.Root().Find(args)
			if err != nil || len(rest) > 0 {
				return &UsageError{Problems: []string{fmt.Sprintf("unknown help topic %q", strings.Join(args, " "))}}
			}
			cmd.InitDefaultHelpFlag()
			cmd.InitDefaultVersionFlag()
			return cmd.Help()
		},
	})
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version and VCS revision of this binary",
		Args:  NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", name, version.String())
			return err
		},
	})
	return root
}

// NewGroup returns a command that only holds subcommands (`keybroker
// policy`): run alone or with an unknown subcommand, it is a usage error.
func NewGroup(use, short string, cmds ...*cobra.Command) *cobra.Command {
	g := &cobra.Command{Use: use, Short: short, Args: cobra.ArbitraryArgs, RunE: missingCommand}
	g.AddCommand(cmds...)
	return g
}

// NoArgs is the Args of commands that take only flags.
func NoArgs(_ *cobra.Command, args []string) error {
	if len(args) > 0 {
		return Usagef("unexpected arguments %q", args)
	}
	return nil
}

// missingCommand is the RunE of roots and groups: they need a subcommand.
func missingCommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return &UsageError{Problems: []string{"missing command"}, ShowUsage: true}
	}
	msg := fmt.Sprintf("unknown command %q", args[0])
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %q?)", s[0])
	}
	return &UsageError{Problems: []string{msg}, ShowUsage: true}
}

// UsageError is a command line that cannot run: it exits 2 after its
// problems, one a line, and a hint (or the usage) on stderr.
type UsageError struct {
	Problems  []string
	ShowUsage bool // print the command's usage instead of the hint
}

func (e *UsageError) Error() string { return strings.Join(e.Problems, "; ") }

// Usagef returns a UsageError with one problem.
func Usagef(format string, args ...any) error {
	return &UsageError{Problems: []string{fmt.Sprintf(format, args...)}}
}

// exitError ends a command that has already reported its failure.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// Code turns the exit code of a command that wrote its own messages into
// what RunE returns: nil for 0, else an error that Execute does not print.
func Code(code int) error {
	if code == ExitOK {
		return nil
	}
	return &exitError{code: code}
}

// runtimeError marks an error returned by a command's RunE, as opposed to
// one cobra returns before running it (flag parsing, arguments).
type runtimeError struct{ err error }

func (e *runtimeError) Error() string { return e.err.Error() }
func (e *runtimeError) Unwrap() error { return e.err }

// Execute runs root with args and returns the exit code: 0, 1 for runtime
// failures (their message on stderr) and 2 for usage errors. Single-dash
// long flags (-format=json) are accepted as the Go flag package did.
func Execute(root *cobra.Command, args []string, stdout, stderr io.Writer) int {
	root.SetArgs(normalizeArgs(root, args))
	root.SetOut(stdout)
	root.SetErr(stderr)
	// After SetOut: the completion commands write where root writes then.
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == "completion" && c.RunE == nil && c.Run == nil {
			c.Args, c.RunE = cobra.ArbitraryArgs, missingCommand
		}
	}
	root.SilenceErrors = true
	root.SilenceUsage = true
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &UsageError{Problems: []string{err.Error()}}
	})
	markRuntime(root)
	cmd, err := root.ExecuteC()
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var ue *UsageError
	var re *runtimeError
	switch {
	case errors.As(err, &ue):
	case errors.As(err, &re):
		fmt.Fprintln(stderr, err)
		return ExitFailure
	default: // cobra's own: unknown command, bad arguments, required flags
		ue = &UsageError{Problems: strings.Split(strings.TrimSpace(err.Error()), "\n")}
	}
	if cmd == nil {
		cmd = root
	}
	for _, p := range ue.Problems {
		if p = strings.TrimSpace(p); p != "" {
			fmt.Fprintf(stderr, "%s: %s\n", cmd.CommandPath(), p)
		}
	}
	if ue.ShowUsage {
		fmt.Fprintf(stderr, "\n%s", cmd.UsageString())
	} else {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return ExitUsage
}

// markRuntime wraps the RunE of every command under c so that the errors
// they return are told apart from cobra's usage errors.
func markRuntime(c *cobra.Command) {
	if run := c.RunE; run != nil {
		c.RunE = func(cmd *cobra.Command, args []string) error {
			err := run(cmd, args)
			var ue *UsageError
			var ee *exitError
			var re *runtimeError
			if err == nil || errors.As(err, &ue) || errors.As(err, &ee) || errors.As(err, &re) {
				return err
			}
			return &runtimeError{err: err}
		}
	}
	for _, sub := range c.Commands() {
		markRuntime(sub)
	}
}

// normalizeArgs rewrites "-name" and "-name=value" to "--name…" where name
// is a long flag of some command under root (Go's flag package accepted
// both spellings; pflag reads "-name" as shorthands). Arguments after "--"
// are left alone.
func normalizeArgs(root *cobra.Command, args []string) []string {
	names := map[string]bool{"help": true, "version": true}
	var collect func(c *cobra.Command)
	collect = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) { names[f.Name] = true })
		c.PersistentFlags().VisitAll(func(f *pflag.Flag) { names[f.Name] = true })
		for _, sub := range c.Commands() {
			collect(sub)
		}
	}
	collect(root)
	out := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if len(a) > 2 && a[0] == '-' && a[1] != '-' {
			name, _, _ := strings.Cut(a[1:], "=")
			if len(name) > 1 && names[name] {
				a = "-" + a
			}
		}
		out = append(out, a)
	}
	return out
}
