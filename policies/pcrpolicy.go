package policies

import (
	"encoding/hex"
	"fmt"
	"math/big"
	"slices"
	"strconv"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// PCRPolicy says what a pcr_sealed release's import blob is bound to.
type PCRPolicy string

const (
	// PCRPolicyLiteral (the default) binds the blob with PolicyPCR to the
	// values the node attested: any change of those PCRs (a firmware,
	// kernel or dbx update) leaves the release unopenable until the node
	// attests again.
	PCRPolicyLiteral PCRPolicy = "literal"
	// PCRPolicyAuthorized binds the blob with PolicyAuthorize to the
	// broker's PCR-policy signing key: it opens in any state the broker
	// approved for the node — the attested state, the release's
	// expected_states and the states approved with `keybroker pcr-policy
	// approve` — and in no other. Approvals reach the node at each
	// attestation; a cached credential re-opens in a newly approved state
	// without a new release.
	PCRPolicyAuthorized PCRPolicy = "authorized"
)

// MaxExpectedStates bounds a release's expected_states.
const MaxExpectedStates = 64

// pcrPolicy validates pcr_policy and expected_states: pcr_policy only with
// mode pcr_sealed, expected_states only with pcr_policy "authorized", each
// state giving a value of the release's bank for exactly its pcrs.
func (c *compiler) pcrPolicy(r *release, raw *releaseHCL, where string, modeKnown bool) {
	r.pcrPolicy = PCRPolicyLiteral
	if raw.PCRPolicy != nil {
		if s, ok := c.str(raw.PCRPolicy.Expr, "%s: pcr_policy", where); ok {
			switch p := PCRPolicy(s); p {
			case PCRPolicyLiteral, PCRPolicyAuthorized:
				r.pcrPolicy = p
			default:
				c.errorf(raw.PCRPolicy.Expr.Range(), "%s: pcr_policy %q is not supported; use %q or %q", where, s, PCRPolicyLiteral, PCRPolicyAuthorized)
			}
		}
		if modeKnown && r.mode != ModePCRSealed {
			c.errorf(raw.PCRPolicy.NameRange, "%s: pcr_policy is only allowed with mode %q", where, ModePCRSealed)
		}
	}
	if raw.ExpectedStates == nil {
		return
	}
	if r.pcrPolicy != PCRPolicyAuthorized {
		c.errorf(raw.ExpectedStates.NameRange, "%s: expected_states is only allowed with pcr_policy %q", where, PCRPolicyAuthorized)
		return
	}
	states := c.list(raw.ExpectedStates, where)
	if len(states) > MaxExpectedStates {
		c.errorf(raw.ExpectedStates.Expr.Range(), "%s: expected_states lists %d states, at most %d allowed", where, len(states), MaxExpectedStates)
		return
	}
	h, err := r.bank.Hash()
	if err != nil || len(r.pcrs) == 0 {
		return // reported with pcr_bank or pcrs
	}
	for i, e := range states {
		if s, ok := c.expectedState(e, fmt.Sprintf("%s: expected_states[%d]", where, i), r.pcrs, h.Size()); ok {
			r.expectedStates = append(r.expectedStates, s)
		}
	}
}

// expectedState parses one state: an object from PCR index to the value's
// hex digest, giving exactly pcrs, each of size bytes.
func (c *compiler) expectedState(e hcl.Expression, where string, pcrs []uint32, size int) (map[uint32][]byte, bool) {
	pairs, diags := hcl.ExprMap(e)
	if diags.HasErrors() {
		c.errorf(e.Range(), "%s must be an object of PCR index = hex value", where)
		return nil, false
	}
	out := map[uint32][]byte{}
	ok := true
	for _, kv := range pairs {
		k, kd := kv.Key.Value(nil)
		if kd.HasErrors() || k.IsNull() || (k.Type() != cty.String && k.Type() != cty.Number) {
			c.errorf(kv.Key.Range(), "%s: a key must be a PCR index", where)
			ok = false
			continue
		}
		var idx int64 = -1
		text := ""
		if k.Type() == cty.Number {
			text = k.AsBigFloat().Text('g', 10)
			if n, acc := k.AsBigFloat().Int64(); acc == big.Exact {
				idx = n
			}
		} else {
			text = strconv.Quote(k.AsString())
			if n, err := strconv.ParseInt(k.AsString(), 10, 8); err == nil {
				idx = n
			}
		}
		if idx < 0 || idx > maxPCR || !slices.Contains(pcrs, uint32(idx)) {
			c.errorf(kv.Key.Range(), "%s: PCR %s is not one of the release's pcrs %v", where, text, pcrs)
			ok = false
			continue
		}
		s, sok := c.str(kv.Value, "%s: PCR %d", where, idx)
		if !sok {
			ok = false
			continue
		}
		v, err := hex.DecodeString(s)
		if err != nil || len(v) != size {
			c.errorf(kv.Value.Range(), "%s: PCR %d must be %d bytes in hex", where, idx, size)
			ok = false
			continue
		}
		if _, dup := out[uint32(idx)]; dup {
			c.errorf(kv.Key.Range(), "%s: PCR %d is given twice", where, idx)
			ok = false
			continue
		}
		out[uint32(idx)] = v
	}
	if ok && len(out) != len(pcrs) {
		c.errorf(e.Range(), "%s gives %d of the release's %d pcrs %v: a state gives them all", where, len(out), len(pcrs), pcrs)
		ok = false
	}
	return out, ok
}

// cloneStates copies expected states for a rendered Release.
func cloneStates(in []map[uint32][]byte) []map[uint32][]byte {
	if in == nil {
		return nil
	}
	out := make([]map[uint32][]byte, len(in))
	for i, s := range in {
		out[i] = make(map[uint32][]byte, len(s))
		for k, v := range s {
			out[i][k] = slices.Clone(v)
		}
	}
	return out
}
