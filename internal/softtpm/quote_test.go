package softtpm

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/tpmtest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

func toVerify(q *pb.Quote) verify.Quote {
	return verify.Quote{Attest: q.GetAttest(), Signature: q.GetSignature(),
		Bank: tpm2.TPMAlgID(q.GetPcrs().GetHashAlg()), PCRs: q.GetPcrs().GetValues()}
}

// checkOf runs the broker's quote verification and returns the failed
// check, or "" when the quote verifies.
func checkOf(t *testing.T, req *pb.ChallengeRequest, secret []byte, q *pb.Quote) verify.Check {
	t.Helper()
	key, err := tpm2.Unmarshal[tpm2.TPMTPublic](req.GetEkPublic())
	if err != nil {
		t.Fatal(err)
	}
	pub, err := tpm2.Pub(*key)
	if err != nil {
		t.Fatal(err)
	}
	hash, err := verify.EKHash(pub)
	if err != nil {
		t.Fatal(err)
	}
	node, err := verify.Node(req.GetEkPublic(), nil, nil, req.GetAkPublic(), verify.Opts{Trust: verify.Trust{EKHashes: []string{hash}}})
	if err != nil {
		t.Fatalf("verify.Node: %v", err)
	}
	_, err = verify.Quotes(node, sha256.Sum256(secret), []verify.Quote{toVerify(q)}, verify.Opts{})
	if err == nil {
		return ""
	}
	var ce *verify.CheckError
	if !errors.As(err, &ce) {
		t.Fatalf("verify.Quotes: %v is not a CheckError", err)
	}
	return ce.Check
}

// A softtpm quote verifies with the broker's verify.Quotes as a simulator
// quote does, and each tampering is refused by the same check for both.
func TestQuoteVerifiesLikeSimulator(t *testing.T) {
	rw := tpmtest.Open(t)
	tampers := []struct {
		name   string
		secret bool // quote another secret than the one verified
		edit   func(q *pb.Quote)
		want   verify.Check
	}{
		{name: "untouched", want: ""},
		{name: "signature", edit: func(q *pb.Quote) { q.Signature[len(q.Signature)-1] ^= 1 }, want: verify.CheckSignature},
		{name: "extraData", edit: func(q *pb.Quote) { q.Attest[extraDataOffset(q.Attest)] ^= 1 }, want: verify.CheckSignature},
		{name: "another secret", secret: true, want: verify.CheckNonce},
		{name: "reported PCR", edit: func(q *pb.Quote) { q.Pcrs.Values[7][0] ^= 1 }, want: verify.CheckPCRDigest},
		{name: "PCR left out", edit: func(q *pb.Quote) { delete(q.Pcrs.Values, 23) }, want: verify.CheckPCRDigest},
		{name: "trailing byte", edit: func(q *pb.Quote) { q.Signature = append(q.Signature, 0) }, want: verify.CheckInput},
	}
	for _, key := range keyTypes {
		t.Run(key.String(), func(t *testing.T) {
			sim, node := newSimNode(t, rw, key), newNode(t, key)
			secret, other := random(t, 32), random(t, 32)
			for _, tc := range tampers {
				t.Run(tc.name, func(t *testing.T) {
					quoted := secret
					if tc.secret {
						quoted = other
					}
					qs, err := node.Quote(quoted)
					if err != nil || len(qs) != 1 {
						t.Fatalf("Quote: %d quotes, %v", len(qs), err)
					}
					for _, side := range []struct {
						name string
						req  *pb.ChallengeRequest
						q    *pb.Quote
					}{
						{"simulator", sim.challengeRequest(t), sim.quote(t, quoted)},
						{"softtpm", node.ChallengeRequest(), qs[0]},
					} {
						q := proto.Clone(side.q).(*pb.Quote)
						if tc.edit != nil {
							tc.edit(q)
						}
						if got := checkOf(t, side.req, secret, q); got != tc.want {
							t.Errorf("%s quote: check %q, want %q", side.name, got, tc.want)
						}
					}
				})
			}
		})
	}
}

// extraDataOffset is where a TPMS_ATTEST's extraData bytes start: after
// magic, type and the qualifiedSigner TPM2B, and the extraData size.
func extraDataOffset(attest []byte) int {
	signer := int(attest[6])<<8 | int(attest[7])
	return 4 + 2 + 2 + signer + 2
}

// The clock only advances; a reboot raises the reset count; PCR values
// are the node's, and the verified quote carries them.
func TestQuoteCounters(t *testing.T) {
	node := newNode(t, ECC)
	secret := random(t, 32)
	clock := func() tpm2.TPMSClockInfo {
		qs, err := node.Quote(secret)
		if err != nil {
			t.Fatal(err)
		}
		a, err := tpm2.Unmarshal[tpm2.TPMSAttest](qs[0].GetAttest())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a.ExtraData.Buffer, secret) {
			t.Fatalf("extraData %x, want the secret", a.ExtraData.Buffer)
		}
		return a.ClockInfo
	}
	first, second := clock(), clock()
	if second.Clock <= first.Clock || second.ResetCount != first.ResetCount || !bool(second.Safe) {
		t.Errorf("clock went from %+v to %+v: want it to advance, same reset count, safe", first, second)
	}
	node.Reboot()
	if third := clock(); third.ResetCount != second.ResetCount+1 || third.RestartCount != 0 || third.Clock <= second.Clock {
		t.Errorf("after a reboot %+v, before %+v: want reset count +1, restart 0, clock advancing", third, second)
	}
	pcrs, err := DefaultPCRs(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	zero := make([]byte, sha256.Size)
	for i := range uint32(8) {
		if bytes.Equal(pcrs[i], zero) {
			t.Errorf("default PCR %d is zero, want a measured boot", i)
		}
	}
	if _, err := node.Quote(make([]byte, MaxQualifyingData+1)); err == nil {
		t.Error("Quote took more qualifying data than a TPM accepts")
	}
	if _, err := node.Quote(secret, tpm2.TPMAlgSHA384, tpm2.TPMAlgSHA256); err != nil {
		t.Errorf("two banks: %v", err)
	}
}

func TestOptsPCRs(t *testing.T) {
	want := bytes.Repeat([]byte{7}, sha256.Size)
	node, err := New(Opts{PCRs: map[tpm2.TPMAlgID]map[uint32][]byte{tpm2.TPMAlgSHA256: {7: want}}})
	if err != nil {
		t.Fatal(err)
	}
	qs, err := node.Quote(random(t, 32))
	if err != nil {
		t.Fatal(err)
	}
	def, _ := DefaultPCRs(tpm2.TPMAlgSHA256)
	got := qs[0].GetPcrs().GetValues()
	if !bytes.Equal(got[7], want) || !bytes.Equal(got[0], def[0]) || len(got) != NumPCRs {
		t.Errorf("quoted PCRs %x: want PCR 7 from Opts, the others default", got)
	}
	for name, bad := range map[string]map[tpm2.TPMAlgID]map[uint32][]byte{
		"PCR 24":       {tpm2.TPMAlgSHA256: {24: want}},
		"short value":  {tpm2.TPMAlgSHA256: {0: want[:20]}},
		"unknown bank": {tpm2.TPMAlgID(0x99): {0: want}},
	} {
		if _, err := New(Opts{PCRs: bad}); err == nil {
			t.Errorf("New accepted Opts.PCRs with a %s", name)
		}
	}
}
