package ratelimit_test

import (
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/ratelimit"
)

func TestParseRate(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    ratelimit.Rate
		wantErr string
	}{
		{name: "per second", in: "5/s", want: ratelimit.Rate{Count: 5, Per: time.Second}},
		{name: "per minute", in: "10/m", want: ratelimit.Rate{Count: 10, Per: time.Minute}},
		{name: "per hour", in: "100/h", want: ratelimit.Rate{Count: 100, Per: time.Hour}},
		{name: "per duration", in: "30/10m", want: ratelimit.Rate{Count: 30, Per: 10 * time.Minute}},
		{name: "zero is off", in: "0", want: ratelimit.Rate{}},
		{name: "off", in: "off", want: ratelimit.Rate{}},
		{name: "zero count", in: "0/m", wantErr: `count cannot be 0; write "off" to switch the limit off`},
		{name: "negative", in: "-1/m", wantErr: "count must be between 1 and 1000000"},
		{name: "too many", in: "1000001/s", wantErr: "count must be between 1 and 1000000"},
		{name: "short period", in: "10/500ms", wantErr: "period must be between 1s and 24h0m0s"},
		{name: "long period", in: "10/48h", wantErr: "period must be between 1s and 24h0m0s"},
		{name: "no period", in: "10", wantErr: `not a rate such as "10/m"`},
		{name: "bad unit", in: "10/min", wantErr: `not a rate such as "10/m"`},
		{name: "leading plus", in: "+10/m", wantErr: `not a rate such as "10/m"`},
		{name: "space", in: "10 /m", wantErr: `not a rate such as "10/m"`},
		{name: "trailing", in: "10/m/s", wantErr: `not a rate such as "10/m"`},
		{name: "empty", in: "", wantErr: `not a rate such as "10/m"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ratelimit.ParseRate(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("ParseRate(%q) = %v, %v; want error %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseRate(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
			if back, err := ratelimit.ParseRate(got.String()); err != nil || back != got {
				t.Errorf("ParseRate(%q.String() = %q) = %v, %v", tt.in, got.String(), back, err)
			}
		})
	}
}

// TestRateLimiter: "3/m" admits 3 at once, then one every 20s.
func TestRateLimiter(t *testing.T) {
	r, err := ratelimit.ParseRate("3/m")
	if err != nil {
		t.Fatal(err)
	}
	l := r.Limiter(ratelimit.Opts{})
	for range 3 {
		allow(t, l, "a", t0, true, 0)
	}
	allow(t, l, "a", t0, false, 20*time.Second)
	allow(t, l, "a", t0.Add(20*time.Second), true, 0)
}
