package cli

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/internal/version"
)

// testRoot is a small tree: "tool greet --name N [--loud]", "tool fail"
// (a runtime failure), "tool code" (a command that reported its own
// failure and exits 3), and a group "tool things list".
func testRoot() *cobra.Command {
	var name string
	var loud bool
	var count int
	greet := &cobra.Command{
		Use:  "greet --name NAME",
		Args: NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var p Problems
			p.Required(cmd, "name")
			if count < 1 {
				p.Addf("--count must be ≥ 1, not %d", count)
			}
			if err := p.Err(); err != nil {
				return err
			}
			cmd.Printf("hello %s loud=%v\n", name, loud)
			return nil
		},
	}
	greet.Flags().StringVar(&name, "name", "", "who")
	greet.Flags().BoolVar(&loud, "loud", false, "shout")
	greet.Flags().IntVar(&count, "count", 1, "how often")
	fail := &cobra.Command{Use: "fail", RunE: func(*cobra.Command, []string) error { return errors.New("fail: the thing broke") }}
	code := &cobra.Command{Use: "code", RunE: func(*cobra.Command, []string) error { return Code(3) }}
	list := &cobra.Command{Use: "list", RunE: func(cmd *cobra.Command, _ []string) error { cmd.Println("listed"); return nil }}
	return NewRoot("tool", "a tool", "A tool for tests.", greet, fail, code, NewGroup("things", "things", list))
}

func TestExecute(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string // in stdout
		wantErr  string // in stderr; stderr must be empty when ""
	}{
		{name: "runs", args: []string{"greet", "--name", "ann"}, wantOut: "hello ann loud=false"},
		{name: "single-dash long flags", args: []string{"greet", "-name=ann", "-loud"}, wantOut: "hello ann loud=true"},
		{name: "after -- left alone", args: []string{"greet", "--name", "ann", "--", "-loud"}, wantCode: 2, wantErr: `unexpected arguments ["-loud"]`},
		{name: "help once on stdout", args: []string{"greet", "--help"}, wantOut: "tool greet --name NAME [flags]"},
		{name: "single-dash help", args: []string{"greet", "-help"}, wantOut: "tool greet --name NAME [flags]"},
		{name: "help command", args: []string{"help", "greet"}, wantOut: "tool greet --name NAME [flags]"},
		{name: "group help", args: []string{"things", "--help"}, wantOut: "Available Commands:"},
		{name: "group subcommand", args: []string{"things", "list"}, wantOut: "listed"},
		{name: "version flag", args: []string{"--version"}, wantOut: "tool " + version.String() + "\n"},
		{name: "version command", args: []string{"version"}, wantOut: "tool " + version.String() + "\n"},
		{name: "unknown flag", args: []string{"greet", "--frob"}, wantCode: 2,
			wantErr: "tool greet: unknown flag: --frob\nRun 'tool greet --help' for usage.\n"},
		{name: "bad flag value", args: []string{"greet", "--loud=maybe"}, wantCode: 2, wantErr: `invalid argument "maybe" for "--loud"`},
		{name: "extra argument", args: []string{"greet", "--name", "ann", "extra"}, wantCode: 2, wantErr: `tool greet: unexpected arguments ["extra"]`},
		{name: "empty required flag", args: []string{"greet", "--name", ""}, wantCode: 2,
			wantErr: "tool greet: missing required flag --name\nRun 'tool greet --help' for usage.\n"},
		{name: "no command", args: nil, wantCode: 2, wantErr: "tool: missing command\n\nUsage:"},
		{name: "unknown command", args: []string{"gret"}, wantCode: 2, wantErr: `tool: unknown command "gret" (did you mean "greet"?)`},
		{name: "group without subcommand", args: []string{"things"}, wantCode: 2, wantErr: "tool things: missing command"},
		{name: "group with unknown subcommand", args: []string{"things", "lost"}, wantCode: 2, wantErr: `tool things: unknown command "lost"`},
		{name: "help on an unknown topic", args: []string{"help", "things", "lost"}, wantCode: 2, wantErr: `tool help: unknown help topic "things lost"`},
		{name: "completion for an unknown shell", args: []string{"completion", "tcsh"}, wantCode: 2, wantErr: `tool completion: unknown command "tcsh"`},
		{name: "runtime failure", args: []string{"fail"}, wantCode: 1, wantErr: "fail: the thing broke\n"},
		{name: "reported failure", args: []string{"code"}, wantCode: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Execute(testRoot(), tt.args, &out, &errOut)
			if code != tt.wantCode {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.wantCode, out.String(), errOut.String())
			}
			if !strings.Contains(out.String(), tt.wantOut) {
				t.Errorf("stdout %q, want it to contain %q", out.String(), tt.wantOut)
			}
			if tt.wantErr == "" && errOut.Len() > 0 || !strings.Contains(errOut.String(), tt.wantErr) {
				t.Errorf("stderr %q, want %q", errOut.String(), tt.wantErr)
			}
			if tt.wantCode != 0 && strings.Contains(out.String(), "Usage:") {
				t.Errorf("a failure printed usage to stdout: %q", out.String())
			}
			if strings.Contains(tt.wantOut, "Usage:") || strings.Contains(tt.wantOut, "[flags]") {
				if n := strings.Count(out.String(), "Usage:"); n != 1 {
					t.Errorf("help printed %d times, want once:\n%s", n, out.String())
				}
			}
		})
	}
}

// Problems lists every problem of one command line, one a line.
func TestProblemsAllListed(t *testing.T) {
	var out, errOut bytes.Buffer
	code := Execute(testRoot(), []string{"greet", "--count", "0"}, &out, &errOut)
	want := "tool greet: missing required flag --name\ntool greet: --count must be ≥ 1, not 0\nRun 'tool greet --help' for usage.\n"
	if code != 2 || errOut.String() != want {
		t.Errorf("exit %d, stderr %q; want 2 and %q", code, errOut.String(), want)
	}
	var p Problems
	p.Addf("one")
	p.Check("two", errors.New("bad"))
	p.Check("three", nil)
	var ue *UsageError
	if err := p.Err(); !errors.As(err, &ue) || strings.Join(ue.Problems, "|") != "one|--two: bad" {
		t.Errorf("Problems.Err() = %v, want the two problems", err)
	}
}

func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh"} {
		t.Run(shell, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := Execute(testRoot(), []string{"completion", shell}, &out, &errOut); code != 0 {
				t.Fatalf("exit %d: %s", code, errOut.String())
			}
			if !strings.Contains(out.String(), "tool") || !strings.Contains(out.String(), "__complete") {
				t.Errorf("%s completion does not complete tool:\n%.300s", shell, out.String())
			}
			path, err := exec.LookPath(shell)
			if err != nil {
				t.Skipf("no %s to check the script's syntax", shell)
			}
			file := filepath.Join(t.TempDir(), "completion")
			if err := os.WriteFile(file, out.Bytes(), 0o600); err != nil {
				t.Fatal(err)
			}
			if b, err := exec.Command(path, "-n", file).CombinedOutput(); err != nil {
				t.Errorf("%s -n: %v\n%s", shell, err, b)
			}
		})
	}
}
