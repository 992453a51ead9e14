package vaultauth

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/hashicorp/vault/sdk/framework"

	"github.com/keybroker/keybroker/broker/attestation"
	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/idlog"
)

// Decoding of the challenge and login requests: every problem is reported
// at once, sizes are checked before decoding, and what the bytes mean is
// verify's to check.

// evidenceFields are the node's EK and AK material, which the challenge
// request carries and the login presents again, in the same encodings.
// required completes the descriptions of ek_public and ak_public.
func evidenceFields(required string) map[string]*framework.FieldSchema {
	return map[string]*framework.FieldSchema{
		"ek_public": {
			Type:        framework.TypeString,
			Description: "The EK public area (TPMT_PUBLIC), base64. " + required,
		},
		"ek_certificate": {
			Type:        framework.TypeString,
			Description: "The EK certificate (DER), base64, as the TPM holds it. Needed when the EK is trusted through ek_ca.",
		},
		"ek_intermediates": {
			Type: framework.TypeStringSlice,
			Description: fmt.Sprintf("Intermediate CA certificates (DER, base64 each) that issued the EK certificate, "+
				"to chain it to an ek_ca root; at most %d.", verify.MaxIntermediates),
		},
		"ak_public": {
			Type: framework.TypeString,
			Description: "The AK public area (TPMT_PUBLIC), base64: a restricted signing key " +
				"(fixedTPM, fixedParent, sensitiveDataOrigin), RSA-2048+ or ECC P-256/P-384. " + required,
		},
	}
}

// decodeEvidence decodes the fields of evidenceFields, recording every
// problem in in. Sizes are checked before decoding, with verify's limits;
// what the bytes mean is verify's to check.
func decodeEvidence(in *inputErrors, d *framework.FieldData) challenge.Evidence {
	ev := challenge.Evidence{
		EKPublic:      in.bounded(d, "ek_public", true, verify.MaxPublicSize),
		EKCertificate: in.bounded(d, "ek_certificate", false, verify.MaxCertSize),
		AKPublic:      in.bounded(d, "ak_public", true, verify.MaxPublicSize),
	}
	inter := d.Get("ek_intermediates").([]string)
	if len(inter) > verify.MaxIntermediates {
		in.add("ek_intermediates holds more than %d certificates", verify.MaxIntermediates)
		return ev
	}
	for i, s := range inter {
		what := fmt.Sprintf("ek_intermediates[%d]", i)
		if base64.StdEncoding.DecodedLen(len(s)) > verify.MaxCertSize+2 {
			in.add("%s exceeds %d bytes", what, verify.MaxCertSize)
			continue
		}
		ev.EKIntermediates = append(ev.EKIntermediates, in.decode(what, s))
	}
	return ev
}

// bounded is base64 for a field of at most max decoded bytes.
func (in *inputErrors) bounded(d *framework.FieldData, field string, required bool, max int) []byte {
	if s := d.Get(field).(string); base64.StdEncoding.DecodedLen(len(s)) > max+2 {
		in.add("%s exceeds %d bytes", field, max)
		return nil
	}
	b := in.base64(d, field, required)
	if len(b) > max {
		in.add("%s exceeds %d bytes", field, max)
		return nil
	}
	return b
}

// inputErrors collects every problem with a request's fields.
type inputErrors struct{ errs []error }

// base64 returns the decoded field, recording an error if it is missing
// (and required) or not base64.
func (in *inputErrors) base64(d *framework.FieldData, field string, required bool) []byte {
	s := d.Get(field).(string)
	if s == "" {
		if required {
			in.errs = append(in.errs, fmt.Errorf("%s is required", field))
		}
		return nil
	}
	return in.decode(field, s)
}

func (in *inputErrors) decode(what, s string) []byte {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		in.errs = append(in.errs, fmt.Errorf("%s is not base64: %w", what, err))
		return nil
	}
	return b
}

func (in *inputErrors) add(format string, args ...any) {
	in.errs = append(in.errs, fmt.Errorf(format, args...))
}

func (in *inputErrors) err() error { return errors.Join(in.errs...) }

// quoteJSON is one element of the quotes field.
type quoteJSON struct {
	Attest    string `json:"attest"`
	Signature string `json:"signature"`
	PCRs      struct {
		HashAlg json.RawMessage   `json:"hash_alg"`
		Values  map[string]string `json:"values"`
	} `json:"pcrs"`
}

// bankIDs are the PCR bank names hash_alg accepts besides TPM_ALG_IDs.
var bankIDs = map[string]uint16{"sha1": 0x0004, "sha256": 0x000b, "sha384": 0x000c, "sha512": 0x000d}

// decodeLogin decodes and size-checks a login's fields, reporting every
// problem at once. What the bytes mean is verify's to check.
func decodeLogin(d *framework.FieldData) (*loginRequest, error) {
	var in inputErrors
	out := &loginRequest{challengeID: d.Get("challenge_id").(string)}
	switch {
	case out.challengeID == "":
		in.add("challenge_id is required")
	case len(out.challengeID) > maxChallengeIDSize:
		in.add("challenge_id is longer than %d characters", maxChallengeIDSize)
	}
	out.evidence = decodeEvidence(&in, d)
	if s := d.Get("event_log").(string); s != "" {
		if base64.StdEncoding.DecodedLen(len(s)) > verify.MaxEventLogSize+2 {
			in.add("event_log exceeds %d bytes", verify.MaxEventLogSize)
		} else if out.eventLog = in.decode("event_log", s); len(out.eventLog) > verify.MaxEventLogSize {
			in.add("event_log exceeds %d bytes", verify.MaxEventLogSize)
		}
	}
	if s := d.Get("identity_log").(string); s != "" {
		if base64.StdEncoding.DecodedLen(len(s)) > idlog.MaxSize+2 {
			in.add("identity_log exceeds %d bytes", idlog.MaxSize)
		} else if out.identityLog = in.decode("identity_log", s); len(out.identityLog) > idlog.MaxSize {
			in.add("identity_log exceeds %d bytes", idlog.MaxSize)
		}
	}
	raw := d.Get("quotes").([]any)
	switch {
	case len(raw) == 0:
		in.add("quotes is required")
	case len(raw) > verify.MaxQuotes:
		in.add("at most %d quotes", verify.MaxQuotes)
	default:
		js, err := json.Marshal(raw)
		if err != nil {
			in.add("quotes: %v", err)
			break
		}
		dec := json.NewDecoder(strings.NewReader(string(js)))
		dec.DisallowUnknownFields()
		var qs []quoteJSON
		if err := dec.Decode(&qs); err != nil {
			in.add("quotes must be a list of {attest, signature, pcrs: {hash_alg, values}}: %v", err)
			break
		}
		for i, q := range qs {
			out.quotes = append(out.quotes, decodeQuote(&in, fmt.Sprintf("quotes[%d]", i), q))
		}
	}
	if err := in.err(); err != nil {
		return nil, err
	}
	return out, nil
}

func decodeQuote(in *inputErrors, where string, q quoteJSON) attestation.Quote {
	var out attestation.Quote
	switch {
	case q.Attest == "":
		in.add("%s.attest is required", where)
	case base64.StdEncoding.DecodedLen(len(q.Attest)) > verify.MaxQuoteAttestSize+2:
		in.add("%s.attest exceeds %d bytes", where, verify.MaxQuoteAttestSize)
	default:
		out.Attest = in.decode(where+".attest", q.Attest)
	}
	switch {
	case q.Signature == "":
		in.add("%s.signature is required", where)
	case base64.StdEncoding.DecodedLen(len(q.Signature)) > verify.MaxSignatureSize+2:
		in.add("%s.signature exceeds %d bytes", where, verify.MaxSignatureSize)
	default:
		out.Signature = in.decode(where+".signature", q.Signature)
	}
	out.Bank = decodeBank(in, where+".pcrs.hash_alg", q.PCRs.HashAlg)
	switch n := len(q.PCRs.Values); {
	case n == 0:
		in.add("%s.pcrs.values is required", where)
	case n > maxPCRValues:
		in.add("%s.pcrs.values holds more than %d PCRs", where, maxPCRValues)
	default:
		out.PCRs = map[uint32][]byte{}
		for k, s := range q.PCRs.Values {
			idx, err := strconv.ParseUint(k, 10, 8)
			if err != nil || idx >= maxPCRValues {
				in.add("%s.pcrs.values: %q is not a PCR index 0-23", where, k)
				continue
			}
			if base64.StdEncoding.DecodedLen(len(s)) > maxPCRValueSize+2 {
				in.add("%s.pcrs.values[%s] exceeds %d bytes", where, k, maxPCRValueSize)
				continue
			}
			out.PCRs[uint32(idx)] = in.decode(fmt.Sprintf("%s.pcrs.values[%s]", where, k), s)
		}
	}
	return out
}

// decodeBank reads hash_alg: a TPM_ALG_ID number or a bank name.
func decodeBank(in *inputErrors, where string, raw json.RawMessage) uint16 {
	if len(raw) == 0 || string(raw) == "null" {
		in.add("%s is required", where)
		return 0
	}
	var name string
	if err := json.Unmarshal(raw, &name); err == nil {
		if id, ok := bankIDs[strings.ToLower(name)]; ok {
			return id
		}
		if n, err := strconv.ParseUint(name, 10, 16); err == nil {
			return uint16(n)
		}
		in.add("%s %q is not sha1, sha256, sha384, sha512 or a TPM_ALG_ID", where, name)
		return 0
	}
	var n uint16
	if err := json.Unmarshal(raw, &n); err != nil {
		in.add("%s is not a TPM_ALG_ID or a bank name", where)
		return 0
	}
	return n
}
