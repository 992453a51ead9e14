package verify

import "github.com/google/go-tpm/tpm2"

// Hooks for verify_test: the reflection-free decoders, their results as
// go-tpm structures so that tests can encode them with tpm2.Marshal.

// DecodePublic is decodePublic.
func DecodePublic(b []byte) (*tpm2.TPMTPublic, error) { return decodePublic(b) }

// DecodeQuoteAttest decodes b with decodeQuoteAttest and returns it as a
// go-tpm TPMS_ATTEST.
func DecodeQuoteAttest(b []byte) (*tpm2.TPMSAttest, error) {
	a, err := decodeQuoteAttest(b)
	if err != nil {
		return nil, err
	}
	return &tpm2.TPMSAttest{
		Magic:           tpm2.TPMGeneratedValue,
		Type:            tpm2.TPMSTAttestQuote,
		QualifiedSigner: tpm2.TPM2BName{Buffer: a.qualifiedSigner},
		ExtraData:       tpm2.TPM2BData{Buffer: a.extraData},
		ClockInfo:       a.clock,
		FirmwareVersion: a.firmware,
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
			PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: a.selections},
			PCRDigest: tpm2.TPM2BDigest{Buffer: a.pcrDigest},
		}),
	}, nil
}

// DecodeSignature decodes b with decodeSignature and returns it as a go-tpm
// TPMT_SIGNATURE.
func DecodeSignature(b []byte) (*tpm2.TPMTSignature, error) {
	s, err := decodeSignature(b)
	if err != nil {
		return nil, err
	}
	out := &tpm2.TPMTSignature{SigAlg: s.alg}
	switch s.alg {
	case tpm2.TPMAlgRSASSA, tpm2.TPMAlgRSAPSS:
		out.Signature = tpm2.NewTPMUSignature(s.alg, &tpm2.TPMSSignatureRSA{Hash: s.hash, Sig: tpm2.TPM2BPublicKeyRSA{Buffer: s.sig}})
	case tpm2.TPMAlgECDSA, tpm2.TPMAlgECDAA:
		out.Signature = tpm2.NewTPMUSignature(s.alg, &tpm2.TPMSSignatureECC{Hash: s.hash,
			SignatureR: tpm2.TPM2BECCParameter{Buffer: s.r}, SignatureS: tpm2.TPM2BECCParameter{Buffer: s.s}})
	case tpm2.TPMAlgHMAC:
		out.Signature = tpm2.NewTPMUSignature(s.alg, &tpm2.TPMTHA{HashAlg: s.hash, Digest: s.sig})
	}
	return out, nil
}

// EventLogCached reports whether the check of raw against the PCRs v
// quoted is remembered (eventlog_cache.go).
func EventLogCached(v *Verified, raw []byte) bool {
	_, ok := eventLogCache.get(eventLogKey(raw, v.pcrs))
	return ok
}

// VerifyECDSA is verifyECDSA.
var VerifyECDSA = verifyECDSA
