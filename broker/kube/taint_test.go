package kube

import (
	"strings"
	"testing"
)

func TestParseTaint(t *testing.T) {
	for _, tt := range []struct {
		in, want, err string
	}{
		{in: DefaultTaint, want: DefaultTaint},
		{in: "example.com/x:NoSchedule", want: "example.com/x:NoSchedule"},
		{in: "quarantined=yes:PreferNoSchedule", want: "quarantined=yes:PreferNoSchedule"},
		{in: "keybroker.io/attestation=failed", err: "is not key[=value]:Effect"},
		{in: "k=v:Evict", err: `effect "Evict" is not NoSchedule, PreferNoSchedule or NoExecute`},
		{in: "Bad_Prefix.io/x=v:NoExecute", err: "is not a qualified name"},
		{in: "k=not a value:NoExecute", err: "is not a label value"},
		{in: ":NoExecute", err: "is not a qualified name"},
	} {
		got, err := ParseTaint(tt.in)
		switch {
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("ParseTaint(%q) = %v, %v; want error %q", tt.in, got, err, tt.err)
		case tt.err == "" && (err != nil || got.String() != tt.want):
			t.Errorf("ParseTaint(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
		}
	}
}
