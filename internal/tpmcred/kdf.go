package tpmcred

import (
	"crypto"
	"crypto/hmac"
	"encoding/binary"
	"hash"
)

// KDFa is TPM 2.0's KDFa (Part 1, §11.4.10.2, SP 800-108 counter mode with
// HMAC): bits bits derived from key for label (written with its
// terminating zero) and the contexts. It gives what go-tpm's tpm2.KDFa
// gives, with fewer allocations.
func KDFa(h crypto.Hash, key []byte, label string, contextU, contextV []byte, bits int) []byte {
	return kdfa(hmac.New(h.New, key), label, contextU, contextV, bits)
}

// KDFe is TPM 2.0's KDFe (Part 1, §11.4.10.3, SP 800-56A's concatenation
// KDF): bits bits derived from the ECDH secret z for label (with its
// terminating zero) and the parties' x coordinates. It gives what go-tpm's
// tpm2.KDFe gives, with fewer allocations.
func KDFe(h crypto.Hash, z []byte, label string, partyUInfo, partyVInfo []byte, bits int) []byte {
	// counter || Z || label || 0 || partyUInfo || partyVInfo
	msg := make([]byte, 0, 4+len(z)+len(label)+1+len(partyUInfo)+len(partyVInfo))
	msg = append(msg, 0, 0, 0, 0)
	msg = append(msg, z...)
	msg = append(append(msg, label...), 0)
	msg = append(append(msg, partyUInfo...), partyVInfo...)
	defer clear(msg)
	return kdf(h.New(), msg, bits)
}

// kdfa is KDFa with mac, an HMAC keyed with the key, not yet written to.
func kdfa(mac hash.Hash, label string, contextU, contextV []byte, bits int) []byte {
	// counter || label || 0 || contextU || contextV || bits
	msg := make([]byte, 0, 4+len(label)+1+len(contextU)+len(contextV)+4)
	msg = append(msg, 0, 0, 0, 0)
	msg = append(append(msg, label...), 0)
	msg = append(append(msg, contextU...), contextV...)
	msg = binary.BigEndian.AppendUint32(msg, uint32(bits))
	return kdf(mac, msg, bits)
}

// kdf hashes msg, whose first four bytes it sets to the counter, with h
// for counter = 1, 2, … until bits bits are derived, and masks the unused
// high bits of the first byte off. h must not have been written to.
func kdf(h hash.Hash, msg []byte, bits int) []byte {
	if bits <= 0 {
		return []byte{}
	}
	n := (bits + 7) / 8
	size := h.Size()
	out := make([]byte, 0, (n+size-1)/size*size)
	for counter := uint32(1); len(out) < n; counter++ {
		if counter > 1 {
			h.Reset()
		}
		binary.BigEndian.PutUint32(msg, counter)
		h.Write(msg)
		out = h.Sum(out)
	}
	clear(out[n:]) // derived bits beyond the key
	out = out[:n]
	if rem := bits % 8; rem != 0 {
		out[0] &= 1<<rem - 1
	}
	return out
}
