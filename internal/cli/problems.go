package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

// Problems collects everything wrong with a command line, so that one run
// reports all of it.
type Problems struct {
	list []string
}

// Addf records a problem.
func (p *Problems) Addf(format string, args ...any) {
	p.list = append(p.list, fmt.Sprintf(format, args...))
}

// Check records err, if not nil, as a problem with the flag name.
func (p *Problems) Check(name string, err error) {
	if err != nil {
		p.Addf("--%s: %v", name, err)
	}
}

// Required records a problem for each flag of cmd named in names that has
// no value: not given, or given as "".
func (p *Problems) Required(cmd *cobra.Command, names ...string) {
	for _, n := range names {
		if f := cmd.Flags().Lookup(n); f == nil || f.Value.String() == "" {
			p.Addf("missing required flag --%s", n)
		}
	}
}

// Err returns a UsageError listing the problems, or nil if there are none.
func (p *Problems) Err() error {
	if len(p.list) == 0 {
		return nil
	}
	return &UsageError{Problems: append([]string(nil), p.list...)}
}
