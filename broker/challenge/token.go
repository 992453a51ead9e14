package challenge

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
)

// A challenge token is the challenge ID a node receives and sends back:
//
//	version (1 byte, 2) || key ID (4 bytes) || nonce (12 bytes) ||
//	AES-256-GCM(key, nonce, plaintext, additional data = version || key ID)
//
// encoded as unpadded base64url, where the plaintext is the SHA-256 of the
// activation secret (32 bytes), the digest of the EK and AK material the
// node presented (32 bytes, evidenceDigest), the expiry (unix nanoseconds,
// 8 bytes, big-endian), and the issuer's vouch for the node: the epoch of
// the Trust it verified the node under (16 bytes, zero for none), the
// vouch's CA (1 byte) and its chain expiry (unix nanoseconds, 8 bytes, 0
// for none). Only holders of a challenge key can make one; the secret
// itself is never in it. Version 1 tokens (no vouch; 72-byte plaintext)
// still open.
const (
	tokenVersion   = 2
	tokenHeader    = 1 + 4
	tokenNonce     = 12
	tokenPlaintext = 32 + 32 + 8 + 16 + 1 + 8
	tokenSize      = tokenHeader + tokenNonce + tokenPlaintext + 16

	tokenV1Plaintext = 32 + 32 + 8
	tokenV1Size      = tokenHeader + tokenNonce + tokenV1Plaintext + 16
)

// MaxTokenLength is the length of an encoded challenge token.
var MaxTokenLength = base64.RawURLEncoding.EncodedLen(tokenSize)

var tokenV1Length = base64.RawURLEncoding.EncodedLen(tokenV1Size)

// claims is what a token says.
type claims struct {
	secretHash     [32]byte
	evidenceDigest [32]byte
	expiresAt      time.Time
	epoch          [16]byte // zero: no vouch
	vouch          verify.Vouch
}

func seal(k store.ChallengeKey, c claims) (string, error) {
	aead, err := newAEAD(k.Secret)
	if err != nil {
		return "", err
	}
	id, err := hex.DecodeString(k.ID)
	if err != nil || len(id) != 4 {
		return "", errors.New("challenge key id is not 4 bytes of hex")
	}
	out := make([]byte, tokenHeader+tokenNonce, tokenSize)
	out[0] = tokenVersion
	copy(out[1:5], id)
	if _, err := rand.Read(out[tokenHeader:]); err != nil {
		return "", fmt.Errorf("unable to generate a nonce: %w", err)
	}
	pt := make([]byte, 0, tokenPlaintext)
	pt = append(pt, c.secretHash[:]...)
	pt = append(pt, c.evidenceDigest[:]...)
	pt = binary.BigEndian.AppendUint64(pt, uint64(c.expiresAt.UnixNano()))
	pt = append(pt, c.epoch[:]...)
	pt = append(pt, c.vouch.CA)
	var notAfter uint64
	switch maxNano := time.Unix(0, math.MaxInt64); {
	case c.vouch.NotAfter.IsZero():
	case c.vouch.NotAfter.After(maxNano):
		// Past 2262 (EK certificates valid until 9999): the latest time
		// the token can say, still no later than the chain's expiry.
		notAfter = math.MaxInt64
	default:
		notAfter = uint64(c.vouch.NotAfter.UnixNano())
	}
	pt = binary.BigEndian.AppendUint64(pt, notAfter)
	out = aead.Seal(out, out[tokenHeader:], pt, out[:tokenHeader])
	return base64.RawURLEncoding.EncodeToString(out), nil
}

// tokenKeyID returns the key ID a token names, or false if it is not a
// token of a version this broker reads.
func tokenKeyID(token string) ([]byte, string, bool) {
	var version byte
	var size int
	switch len(token) {
	case MaxTokenLength:
		version, size = tokenVersion, tokenSize
	case tokenV1Length:
		version, size = 1, tokenV1Size
	default:
		return nil, "", false
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(token)
	if err != nil || len(raw) != size || raw[0] != version {
		return nil, "", false
	}
	return raw, hex.EncodeToString(raw[1:5]), true
}

// open authenticates and decrypts a raw token with k.
func open(k store.ChallengeKey, raw []byte) (claims, bool) {
	aead, err := newAEAD(k.Secret)
	if err != nil {
		return claims{}, false
	}
	pt, err := aead.Open(nil, raw[tokenHeader:tokenHeader+tokenNonce], raw[tokenHeader+tokenNonce:], raw[:tokenHeader])
	if err != nil {
		return claims{}, false
	}
	want := tokenPlaintext
	if raw[0] == 1 {
		want = tokenV1Plaintext
	}
	if len(pt) != want {
		return claims{}, false
	}
	var c claims
	copy(c.secretHash[:], pt[:32])
	copy(c.evidenceDigest[:], pt[32:64])
	c.expiresAt = time.Unix(0, int64(binary.BigEndian.Uint64(pt[64:72])))
	if raw[0] == 1 {
		return c, true
	}
	copy(c.epoch[:], pt[72:88])
	c.vouch.CA = pt[88]
	if n := binary.BigEndian.Uint64(pt[89:97]); n != 0 {
		c.vouch.NotAfter = time.Unix(0, int64(n))
	}
	return c, true
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("unable to use challenge key: %w", err)
	}
	return cipher.NewGCM(block)
}

// evidenceDigest is the SHA-256 over what the node presented, each field
// length-prefixed so that no two presentations share a digest.
func evidenceDigest(ev Evidence) [32]byte {
	h := sha256.New()
	h.Write([]byte("keybroker challenge evidence v1"))
	field := func(b []byte) {
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(b))))
		h.Write(b)
	}
	field(ev.EKPublic)
	field(ev.EKCertificate)
	h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(ev.EKIntermediates))))
	for _, c := range ev.EKIntermediates {
		field(c)
	}
	field(ev.AKPublic)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// IDOf returns the ID under which the challenge of token is recorded as
// used and named in receipts: a digest of the token. A token cannot be
// changed without failing authentication, and the broker seals one token
// per secret, so one challenge has one ID.
func IDOf(token string) string {
	h := sha256.New()
	h.Write([]byte("keybroker challenge id v1"))
	h.Write([]byte(token))
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:16])
}
