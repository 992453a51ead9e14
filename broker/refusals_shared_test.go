package broker_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/internal/brokertest"
	"github.com/keybroker/keybroker/internal/refusaltest"
)

// The broker refuses the shared table of wrong answers with the checks the
// Vault auth method names too (plugins/vaultauth TestSharedRefusals), and
// records each refusal.
func TestSharedRefusals(t *testing.T) {
	for _, c := range refusaltest.Cases() {
		t.Run(c.Name, func(t *testing.T) {
			e := brokertest.New(t, brokertest.Opts{})
			ch, nonce := e.Challenge(t)
			req := e.AttestRequest(t, ch, nonce)
			a := (&refusaltest.Answer{Quotes: req.GetQuotes(), EventLog: req.GetEventLog()}).Clone()
			c.Edit(a)
			req.Quotes, req.EventLog = a.Quotes, a.EventLog
			resp, err := e.Server.Attest(context.Background(), req)
			if resp != nil || !strings.HasPrefix(status.Convert(err).Message(), c.Check+": ") {
				t.Fatalf("Attest = %v, %v; want a refusal naming %s", resp, err, c.Check)
			}
			rs := e.Receipts(t)
			if len(rs) != 1 || rs[0].Allowed || rs[0].Check != c.Check {
				t.Fatalf("receipts %+v; want one refusal by %s", rs, c.Check)
			}
		})
	}
}
