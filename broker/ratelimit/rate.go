package ratelimit

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Bounds of a Rate that ParseRate accepts.
const (
	MaxCount = 1_000_000
	MinPer   = time.Second
	MaxPer   = 24 * time.Hour
)

// Rate is a limit written as "count per period": Count requests at once
// and Count per Per afterwards. The zero Rate is no limit.
type Rate struct {
	Count int
	Per   time.Duration
}

// Off reports whether r is no limit.
func (r Rate) Off() bool { return r.Count <= 0 || r.Per <= 0 }

// String writes r as ParseRate reads it.
func (r Rate) String() string {
	if r.Off() {
		return "off"
	}
	switch r.Per {
	case time.Second:
		return fmt.Sprintf("%d/s", r.Count)
	case time.Minute:
		return fmt.Sprintf("%d/m", r.Count)
	case time.Hour:
		return fmt.Sprintf("%d/h", r.Count)
	}
	return fmt.Sprintf("%d/%s", r.Count, r.Per)
}

// Limiter returns a Limiter enforcing r for each key; nil (no limit) when r
// is off.
func (r Rate) Limiter(opts Opts) *Limiter {
	if r.Off() {
		return nil
	}
	return Budget(r.Count, r.Per, opts)
}

var errRateSyntax = errors.New(`not a rate such as "10/m" (per s, m, h or a duration such as 10m), "0" or "off"`)

// ParseRate reads "COUNT/PERIOD" where PERIOD is s, m, h or a duration
// such as "30s" or "10m"; "0" and "off" are the zero Rate (no limit).
// COUNT is 1 to MaxCount and PERIOD MinPer to MaxPer.
func ParseRate(s string) (Rate, error) {
	if s == "0" || s == "off" {
		return Rate{}, nil
	}
	count, per, ok := strings.Cut(s, "/")
	if !ok {
		return Rate{}, errRateSyntax
	}
	n, err := strconv.Atoi(count)
	if err != nil || count != strconv.Itoa(n) {
		return Rate{}, errRateSyntax
	}
	var d time.Duration
	switch per {
	case "s":
		d = time.Second
	case "m":
		d = time.Minute
	case "h":
		d = time.Hour
	default:
		if d, err = time.ParseDuration(per); err != nil {
			return Rate{}, errRateSyntax
		}
	}
	switch {
	case n == 0:
		return Rate{}, errors.New(`count cannot be 0; write "off" to switch the limit off`)
	case n < 0 || n > MaxCount:
		return Rate{}, fmt.Errorf("count must be between 1 and %d", MaxCount)
	case d < MinPer || d > MaxPer:
		return Rate{}, fmt.Errorf("period must be between %s and %s", MinPer, MaxPer)
	}
	return Rate{Count: n, Per: d}, nil
}
