// Package attestation holds what a node presents in one attestation
// (Evidence), in the TPM's own encodings, as the broker keeps it in a node's
// record so that the attestation can be verified again with the same code
// (broker/evidence.Reverify). It is data only: verifying it is package
// verify's, keeping it the store's.
package attestation

import (
	"encoding/json"
	"fmt"
	"time"
)

// Evidence is everything a node presented in one attestation, in the TPM's
// own encodings, together with the challenge it answered: enough to verify
// the attestation again with the same code.
type Evidence struct {
	// Time is when the broker received it.
	Time        time.Time `json:"time"`
	ChallengeID string    `json:"challenge_id,omitempty"`
	// EKPublic, EKCertificate, EKIntermediates and AKPublic are as the node
	// sent them with its challenge request (TPMT_PUBLIC, DER).
	EKPublic        []byte   `json:"ek_public"`
	EKCertificate   []byte   `json:"ek_certificate,omitempty"`
	EKIntermediates [][]byte `json:"ek_intermediates,omitempty"`
	AKPublic        []byte   `json:"ak_public"`
	// SecretHash is the SHA-256 of the challenge's activation secret, which
	// the quotes carry as their qualifying data.
	SecretHash [32]byte `json:"-"` // encoded as secret_hash, base64 like the other bytes
	// Quotes are the quotes as sent.
	Quotes []Quote `json:"quotes"`
	// EventLog is the TCG binary event log as sent, if any.
	EventLog []byte `json:"event_log,omitempty"`
	// EventLogSHA256 is set in stored records instead of EventLog: a
	// backend keeps each distinct log once, under its SHA-256 (hex), and
	// puts it back when it reads the record.
	EventLogSHA256 string `json:"event_log_sha256,omitempty"`
	// IdentityLog is the node's record of the identities its agent handed
	// to workloads in the current boot (package idlog), as sent, if any.
	IdentityLog []byte `json:"identity_log,omitempty"`
	// ResidentKeys are the keys the node created in its TPM for
	// tpm_resident releases, with their certifies by the AK. Not kept in
	// node records: they are verified for release only.
	ResidentKeys []ResidentKey `json:"resident_keys,omitempty"`
	// Previous holds the counters of the attestation this one was compared
	// with (the node record as it was), nil if there was none: verifying
	// the evidence again reproduces the same history.
	Previous *Counters `json:"previous,omitempty"`
}

// Quote is one quote: TPMS_ATTEST, TPMT_SIGNATURE, and the reported values
// of the quoted PCR bank.
type Quote struct {
	Attest    []byte            `json:"attest"`
	Signature []byte            `json:"signature"`
	Bank      uint16            `json:"bank"` // TPM_ALG_ID of the PCR bank
	PCRs      map[uint32][]byte `json:"pcrs"`
}

// ResidentKey is one TPM-resident key and its certify: the release name,
// the key's TPMT_PUBLIC, the certify's TPMS_ATTEST and the AK's
// TPMT_SIGNATURE over it.
type ResidentKey struct {
	Name        string `json:"name"`
	Public      []byte `json:"public"`
	CertifyInfo []byte `json:"certify_info"`
	Signature   []byte `json:"signature"`
}

// Counters are a TPM's clock and reset and restart counts as a quote
// reported them, and the AK that signed it.
type Counters struct {
	AKName       []byte `json:"ak_name,omitempty"`
	Clock        uint64 `json:"clock"`
	ResetCount   uint32 `json:"reset_count"`
	RestartCount uint32 `json:"restart_count"`
}

// evidenceJSON is Evidence with SecretHash as bytes, so that it is base64
// in JSON like every other binary field.
type evidenceJSON struct {
	plainEvidence
	SecretHash []byte `json:"secret_hash"`
}

type plainEvidence Evidence

// MarshalJSON implements json.Marshaler.
func (e Evidence) MarshalJSON() ([]byte, error) {
	return json.Marshal(evidenceJSON{plainEvidence: plainEvidence(e), SecretHash: e.SecretHash[:]})
}

// UnmarshalJSON implements json.Unmarshaler.
func (e *Evidence) UnmarshalJSON(b []byte) error {
	var v evidenceJSON
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	if len(v.SecretHash) != len(e.SecretHash) {
		return fmt.Errorf("evidence secret_hash has %d bytes, want %d", len(v.SecretHash), len(e.SecretHash))
	}
	*e = Evidence(v.plainEvidence)
	copy(e.SecretHash[:], v.SecretHash)
	return nil
}
