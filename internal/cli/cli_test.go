package cli

import (
	"bytes"
	"flag"
	"io"
	"strings"
	"testing"
)

func TestDispatch(t *testing.T) {
	var got []string
	cmds := map[string]Command{"a": func(args []string, _, _ io.Writer) int { got = args; return 7 }}
	for _, tt := range []struct {
		args             []string
		code             int
		wantOut, wantErr string
	}{
		{args: []string{"a", "x"}, code: 7},
		{args: nil, code: 2, wantErr: "USAGE"},
		{args: []string{"--help"}, code: 0, wantOut: "USAGE"},
		{args: []string{"b"}, code: 2, wantErr: "unknown command \"b\"\n\nUSAGE"},
	} {
		var out, errb bytes.Buffer
		if code := Dispatch("command", "USAGE", cmds, tt.args, &out, &errb); code != tt.code || out.String() != tt.wantOut || errb.String() != tt.wantErr {
			t.Errorf("Dispatch(%q) = %d, stdout %q, stderr %q", tt.args, code, out.String(), errb.String())
		}
	}
	if len(got) != 1 || got[0] != "x" {
		t.Errorf("command a got %q", got)
	}
}

func TestRequired(t *testing.T) {
	fs := flag.NewFlagSet("cmd", flag.ContinueOnError)
	var errb bytes.Buffer
	fs.SetOutput(&errb)
	fs.String("a", "", "a flag")
	fs.String("b", "", "b flag")
	if err := fs.Parse([]string{"--b", "v"}); err != nil {
		t.Fatal(err)
	}
	if Required(fs, &errb, "--b") != true || errb.Len() != 0 {
		t.Errorf("--b given: refused, %q", errb.String())
	}
	if Required(fs, &errb, "--a", "--b") || !strings.HasPrefix(errb.String(), "cmd: missing [--a]\nUsage of cmd:") {
		t.Errorf("--a missing: %q", errb.String())
	}
}
