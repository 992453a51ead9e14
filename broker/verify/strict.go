package verify

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// Strict decoding of the TPM structures a node presents, and checks of what
// they claim that go-tpm leaves to its callers.

var (
	errTrailingBytes = errors.New("trailing bytes")
	errNotCanonical  = errors.New("not a canonical encoding")
)

// exactFailure is the refusal of a structure a decoder (tpmwire.go) did
// not accept: what names the field and structure, as in "ek_public" and
// "TPMT_PUBLIC".
func exactFailure(c Check, what, structure string, err error) error {
	switch {
	case errors.Is(err, errTrailingBytes):
		return fail(c, what+" has trailing bytes", nil)
	case errors.Is(err, errNotCanonical):
		return fail(c, fmt.Sprintf("%s is not a canonical %s", what, structure), nil)
	}
	return fail(c, fmt.Sprintf("%s is not a %s", what, structure), err)
}

// onCurve reports whether the ECC public key that tpm2.Pub read from pub
// is a point on its curve, with coordinates no longer than the curve's
// size. tpm2.Pub does not check: it builds an ecdsa.PublicKey from any two
// numbers.
func onCurve(pub *tpm2.TPMTPublic, key *ecdsa.PublicKey) bool {
	pt, err := pub.Unique.ECC()
	if err != nil {
		return false
	}
	size := (key.Curve.Params().BitSize + 7) / 8
	if len(pt.X.Buffer) > size || len(pt.Y.Buffer) > size {
		return false
	}
	_, err = key.ECDH() // refuses points off the curve and the point at infinity
	return err == nil
}

// curveName names an ECC public key's curve for messages ("P-256").
func curveName(key *ecdsa.PublicKey) string { return key.Curve.Params().Name }

// qualifiedNames lists the qualified names (TPM 2.0 Part 1, 16.6: QN(B) =
// nameAlg(B) || H_nameAlg(B)(QN(parent) || Name(B)), QN of a hierarchy its
// handle) that a quote by the node's AK may carry as qualifiedSigner: the
// AK as a primary key of the owner, endorsement, platform or null
// hierarchy (go-tpm-tools' AKs are owner primaries), or as a child of the
// EK, itself an endorsement primary (tpm2-tools' tpm2_createak). An AK
// elsewhere, such as under a storage root key, cannot be checked from its
// public area and the EK alone.
func qualifiedNames(ekName []byte, akNameAlg tpm2.TPMIAlgHash, akName []byte) ([][]byte, error) {
	ekNameAlg := tpm2.TPMIAlgHash(binary.BigEndian.Uint16(ekName))
	var ekQNBuf [2 + 64]byte
	ekQN, err := appendQualifiedName(ekQNBuf[:0], ekNameAlg, hierarchyNames[1], ekName)
	if err != nil {
		return nil, err
	}
	h, err := akNameAlg.Hash()
	if err != nil {
		return nil, err
	}
	parents := [...][]byte{hierarchyNames[0], hierarchyNames[1], hierarchyNames[2], hierarchyNames[3], ekQN}
	// One backing array for the five names.
	size := 2 + h.Size()
	buf := make([]byte, 0, len(parents)*size)
	out := make([][]byte, 0, len(parents))
	for _, parent := range parents {
		start := len(buf)
		if buf, err = appendQualifiedName(buf, akNameAlg, parent, akName); err != nil {
			return nil, err
		}
		out = append(out, buf[start:len(buf):len(buf)])
	}
	return out, nil
}

// hierarchyNames are the names of the owner, endorsement, platform and null
// hierarchies, in the order qualifiedNames lists them.
var hierarchyNames = [][]byte{
	tpm2.PrimaryHandleName(tpm2.TPMRHOwner), tpm2.PrimaryHandleName(tpm2.TPMRHEndorsement),
	tpm2.PrimaryHandleName(tpm2.TPMRHPlatform), tpm2.PrimaryHandleName(tpm2.TPMRHNull),
}

// appendQualifiedName appends nameAlg || H_nameAlg(parentQN || name) to dst.
func appendQualifiedName(dst []byte, nameAlg tpm2.TPMIAlgHash, parentQN, name []byte) ([]byte, error) {
	h, err := nameAlg.Hash()
	if err != nil {
		return nil, err
	}
	// Names are at most 2 + 64 bytes: parentQN || name fits on the stack.
	var in [2 * (2 + 64)]byte
	dst = binary.BigEndian.AppendUint16(dst, uint16(nameAlg))
	return appendDigest(dst, h, append(append(in[:0], parentQN...), name...)), nil
}

// appendDigest appends the h digest of data to dst, without allocating
// for the hashes TPM names use (SHA-1, SHA-256, SHA-384, SHA-512), so that
// callers may hash from and into buffers on their stack.
func appendDigest(dst []byte, h crypto.Hash, data []byte) []byte {
	switch h {
	case crypto.SHA1:
		sum := sha1.Sum(data)
		return append(dst, sum[:]...)
	case crypto.SHA256:
		sum := sha256.Sum256(data)
		return append(dst, sum[:]...)
	case crypto.SHA384:
		sum := sha512.Sum384(data)
		return append(dst, sum[:]...)
	case crypto.SHA512:
		sum := sha512.Sum512(data)
		return append(dst, sum[:]...)
	}
	// Another hash: data is copied, so that it does not escape.
	d := h.New()
	d.Write(bytes.Clone(data))
	return d.Sum(dst)
}

// checkQualifiedSigner refuses a quote whose qualifiedSigner is none of the
// AK's qualified names.
func checkQualifiedSigner(node *NodeIdentity, signer []byte) error {
	ok := 0
	for _, qn := range node.akQNs {
		ok |= subtle.ConstantTimeCompare(qn, signer)
	}
	if ok != 1 {
		return fail(CheckSignature, "quote qualifiedSigner is not the AK's qualified name (the AK as a primary key or a child of the EK)", nil)
	}
	return nil
}
