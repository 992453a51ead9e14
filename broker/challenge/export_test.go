package challenge

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"time"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
)

// SealV1 seals a version 1 token (no vouch) with k, as brokers sealed them
// before tokens carried vouches.
func SealV1(k store.ChallengeKey, secretHash [32]byte, ev Evidence, expires time.Time) string {
	aead, err := newAEAD(k.Secret)
	if err != nil {
		panic(err)
	}
	id, _ := hex.DecodeString(k.ID)
	out := make([]byte, tokenHeader+tokenNonce, tokenV1Size)
	out[0] = 1
	copy(out[1:5], id)
	_, _ = rand.Read(out[tokenHeader:])
	d := evidenceDigest(ev)
	pt := append(append(secretHash[:0:0], secretHash[:]...), d[:]...)
	pt = binary.BigEndian.AppendUint64(pt, uint64(expires.UnixNano()))
	out = aead.Seal(out, out[tokenHeader:], pt, out[:tokenHeader])
	return base64.RawURLEncoding.EncodeToString(out)
}

// IssueVouched is Issue with the vouch v instead of the node's.
func (i *Issuer) IssueVouched(ctx context.Context, node *verify.NodeIdentity, ev Evidence, v verify.Vouch) (*Issued, error) {
	return i.issue(ctx, node, ev, v)
}
