// Package tpmcred protects secrets to a TPM storage key, an EK in
// keybroker, the way the TPM expects to receive them (TPM 2.0 Part 1,
// §24 "Credential Protection" and §23.3.2 "Outer Duplication Wrapper",
// Annexes B and C): without go-tpm's reflection-based tpm2.Marshal, which
// tpm2.ImportEncapsulationKey, tpm2.CreateCredential and tpm2.CreateDuplicate
// run on every call.
//
// NewKey parses the key's public area once into a Key, refusing what cannot
// receive a secret: a Key is RSA (2048 to 4096 bits; the seed is encrypted
// with OAEP under the scheme's hash, else the name algorithm, and label ||
// 0) or ECC on NIST P-256, P-384 or P-521 (one-pass ECDH with an ephemeral
// key and KDFe), with an AES-128, -192 or -256 CFB symmetric definition
// (the outer wrapper's cipher). A Key is immutable and safe for concurrent
// use. From it:
//
//   - Encapsulate makes a fresh seed and its TPM2B_ENCRYPTED_SECRET
//     contents;
//   - MakeCredential is TPM2_MakeCredential: a TPM2B_ID_OBJECT's contents
//     (HMAC under KDFa(seed, "INTEGRITY") over encIdentity || name, then
//     encIdentity, the credential as a TPM2B_DIGEST in AES-CFB under
//     KDFa(seed, "STORAGE", name)), seed label "IDENTITY";
//   - Duplicate wraps an object's TPMT_SENSITIVE in an outer wrapper only,
//     as TPM2_Import under the key takes it, seed label "DUPLICATE".
//
// MakeCredential's and Duplicate's outputs are byte for byte what go-tpm's
// tpm2.CreateCredential and tpm2.CreateDuplicate return for the same key
// and randomness; the tests hold them to it, and a TPM (the simulator)
// activates and imports them.
//
// KDFa and KDFe are the TPM's key derivation functions: go-tpm's tpm2.KDFa
// and tpm2.KDFe (which do not reflect, and which the tests hold them to)
// with fewer allocations. The TPM side of internal/softtpm derives with
// them too.
//
//	key, err := tpmcred.NewKey(ekPublic) // once per node
//	idObject, encSecret, err := key.MakeCredential(rand.Reader, akName, secret)
//	dup, encSeed, err := key.Duplicate(rand.Reader, objectName, sensitive)
package tpmcred
