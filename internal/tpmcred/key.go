package tpmcred

import (
	"crypto"
	"crypto/ecdh"
	"crypto/rsa"
	"errors"
	"fmt"
	"math"
	"math/big"

	// the hashes hashOf names, linked in for crypto.Hash.New
	_ "crypto/sha1"
	_ "crypto/sha256"
	_ "crypto/sha512"

	"github.com/google/go-tpm/tpm2"
)

// RSA key sizes a Key accepts, in bits.
const (
	MinRSABits = 2048
	MaxRSABits = 4096
)

// ErrUnsupported is wrapped by NewKey's refusals of a public area that
// cannot receive a protected secret.
var ErrUnsupported = errors.New("unsupported key")

// Key is a TPM storage key's public area parsed to protect secrets to it
// (see the package comment). Make one with NewKey.
type Key struct {
	nameAlg  tpm2.TPMAlgID
	nameHash crypto.Hash
	symBytes int // the outer wrapper's AES key size

	rsa      *rsa.PublicKey
	oaepHash crypto.Hash

	ecc  *ecdh.PublicKey
	eccX []byte // the key's x coordinate, the curve's full length
}

// NewKey parses pub, the public area of a TPM storage key such as an EK,
// for protecting secrets to it. It refuses, wrapping ErrUnsupported, every
// public area go-tpm's tpm2.ImportEncapsulationKey refuses, and also: RSA
// moduli outside MinRSABits..MaxRSABits, even moduli and exponents, ECC
// coordinates longer than the curve's, and symmetric definitions other than
// AES-CFB (which go-tpm refuses only when a secret is protected).
func NewKey(pub *tpm2.TPMTPublic) (*Key, error) {
	if pub == nil {
		return nil, fmt.Errorf("%w: no public area", ErrUnsupported)
	}
	nameHash, err := hashOf(pub.NameAlg)
	if err != nil {
		return nil, fmt.Errorf("%w: name algorithm: %w", ErrUnsupported, err)
	}
	k := &Key{nameAlg: pub.NameAlg, nameHash: nameHash}
	var sym *tpm2.TPMTSymDefObject
	switch pub.Type {
	case tpm2.TPMAlgRSA:
		sym, err = k.parseRSA(pub)
	case tpm2.TPMAlgECC:
		sym, err = k.parseECC(pub)
	default:
		return nil, fmt.Errorf("%w: type 0x%04x is not RSA or ECC", ErrUnsupported, uint16(pub.Type))
	}
	if err != nil {
		return nil, err
	}
	if k.symBytes, err = aesCFBKeySize(sym); err != nil {
		return nil, err
	}
	return k, nil
}

// NameAlg returns the key's name algorithm, which the seed's KDFs use.
func (k *Key) NameAlg() tpm2.TPMAlgID {
	if k == nil {
		return tpm2.TPMAlgNull
	}
	return k.nameAlg
}

func (k *Key) parseRSA(pub *tpm2.TPMTPublic) (*tpm2.TPMTSymDefObject, error) {
	parms, err := pub.Parameters.RSADetail()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	unique, err := pub.Unique.RSA()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	// OAEP's hash is the scheme's when it names one, else the name
	// algorithm's (as go-tpm and the TPM decide).
	oaepAlg := pub.NameAlg
	if parms.Scheme.Scheme == tpm2.TPMAlgOAEP {
		oaep, err := parms.Scheme.Details.OAEP()
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrUnsupported, err)
		}
		if oaep.HashAlg != tpm2.TPMAlgNull {
			oaepAlg = oaep.HashAlg
		}
	}
	if k.oaepHash, err = hashOf(oaepAlg); err != nil {
		return nil, fmt.Errorf("%w: OAEP hash: %w", ErrUnsupported, err)
	}
	n := new(big.Int).SetBytes(unique.Buffer)
	e := int(parms.Exponent)
	if e == 0 { // the TPM's default exponent
		e = 65537
	}
	switch bits := n.BitLen(); {
	case bits < MinRSABits || bits > MaxRSABits:
		return nil, fmt.Errorf("%w: RSA modulus has %d bits, want %d to %d", ErrUnsupported, bits, MinRSABits, MaxRSABits)
	case n.Bit(0) == 0:
		return nil, fmt.Errorf("%w: RSA modulus is even", ErrUnsupported)
	case e < 3 || e&1 == 0 || e > math.MaxInt32:
		// crypto/rsa refuses exponents beyond 2^31-1 when encrypting.
		return nil, fmt.Errorf("%w: RSA exponent %d is not odd, at least 3 and below 2^31", ErrUnsupported, e)
	}
	k.rsa = &rsa.PublicKey{N: n, E: e}
	return &parms.Symmetric, nil
}

func (k *Key) parseECC(pub *tpm2.TPMTPublic) (*tpm2.TPMTSymDefObject, error) {
	parms, err := pub.Parameters.ECCDetail()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	pt, err := pub.Unique.ECC()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	curve, size, name := curveOf(parms.CurveID)
	if curve == nil {
		return nil, fmt.Errorf("%w: ECC curve 0x%04x is not NIST P-256, P-384 or P-521", ErrUnsupported, uint16(parms.CurveID))
	}
	x, y := pt.X.Buffer, pt.Y.Buffer
	if len(x) > size || len(y) > size {
		return nil, fmt.Errorf("%w: ECC coordinates are longer than %s's", ErrUnsupported, name)
	}
	// The TPM may drop leading zeros; the point is read as big-endian
	// integers, as go-tpm does.
	raw := make([]byte, 1+2*size)
	raw[0] = 4 // uncompressed
	copy(raw[1+size-len(x):1+size], x)
	copy(raw[1+2*size-len(y):], y)
	if k.ecc, err = curve.NewPublicKey(raw); err != nil { // on the curve, not infinity
		return nil, fmt.Errorf("%w: ECC public key is not a point on %s", ErrUnsupported, name)
	}
	k.eccX = raw[1 : 1+size : 1+size]
	return &parms.Symmetric, nil
}

// curveOf returns the curve of id, its coordinates' size in bytes and its
// name, or a nil curve.
func curveOf(id tpm2.TPMECCCurve) (ecdh.Curve, int, string) {
	switch id {
	case tpm2.TPMECCNistP256:
		return ecdh.P256(), 32, "P-256"
	case tpm2.TPMECCNistP384:
		return ecdh.P384(), 48, "P-384"
	case tpm2.TPMECCNistP521:
		return ecdh.P521(), 66, "P-521"
	}
	return nil, 0, ""
}

// aesCFBKeySize returns the key size in bytes of sym, which must be AES in
// CFB mode (the only outer wrapper go-tpm makes).
func aesCFBKeySize(sym *tpm2.TPMTSymDefObject) (int, error) {
	if sym.Algorithm != tpm2.TPMAlgAES {
		return 0, fmt.Errorf("%w: symmetric algorithm 0x%04x is not AES", ErrUnsupported, uint16(sym.Algorithm))
	}
	mode, err := sym.Mode.AES()
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	if *mode != tpm2.TPMAlgCFB {
		return 0, fmt.Errorf("%w: symmetric mode 0x%04x is not CFB", ErrUnsupported, uint16(*mode))
	}
	bits, err := sym.KeyBits.AES()
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	switch *bits {
	case 128, 192, 256:
		return int(*bits) / 8, nil
	}
	return 0, fmt.Errorf("%w: AES key size %d is not 128, 192 or 256 bits", ErrUnsupported, *bits)
}

// hashOf returns the hash alg names: SHA-1, SHA-256, SHA-384 or SHA-512, as
// go-tpm knows them.
func hashOf(alg tpm2.TPMAlgID) (crypto.Hash, error) {
	h, err := tpm2.TPMIAlgHash(alg).Hash()
	if err != nil {
		return 0, err
	}
	if !h.Available() {
		return 0, fmt.Errorf("hash 0x%04x is not linked in", uint16(alg))
	}
	return h, nil
}
