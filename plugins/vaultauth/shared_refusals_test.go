package vaultauth

import (
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/internal/refusaltest"
)

// The auth method refuses the shared table of wrong answers with the
// checks the broker names too (broker TestSharedRefusals), and records each
// refusal.
func TestSharedRefusals(t *testing.T) {
	n := openNode(t, 0)
	for _, c := range refusaltest.Cases() {
		t.Run(c.Name, func(t *testing.T) {
			e := newEnv(t)
			setup(t, e, n)
			resp, err := e.request(logical.UpdateOperation, "login", n.answerEdited(e.challenge(n), "web", c.Edit))
			if resp == nil || resp.Auth != nil || resp.Error() == nil || !strings.HasPrefix(resp.Error().Error(), c.Check+": ") {
				t.Fatalf("login = %v, %v; want a refusal naming %s", resp, err, c.Check)
			}
			if err != logical.ErrPermissionDenied {
				t.Fatalf("login error %v, want permission denied", err)
			}
			rs := e.receipts()
			if len(rs) != 1 || rs[0]["allowed"] != false || rs[0]["check"] != c.Check {
				t.Fatalf("receipts %v; want one refusal by %s", rs, c.Check)
			}
		})
	}
}
