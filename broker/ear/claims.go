package ear

import (
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/keybroker/keybroker/broker/evidence"
	"github.com/keybroker/keybroker/internal/version"
)

// Profile is the EAT profile of the results: the Veraison EAR profile.
const Profile = "tag:github.com,2023:veraison/ear"

// Submod is the name of the results' one submodule: the node's TPM.
const Submod = "tpm"

// Developer is the ear.verifier-id developer of the results.
const Developer = "https://github.com/keybroker/keybroker"

// PolicyIDPrefix prefixes the policy set's hash in ear.appraisal-policy-id.
const PolicyIDPrefix = "keybroker:policy-set:"

// The bounds of a relying party's nonce (eat_nonce), as EAT (RFC 9711)
// bounds a nonce.
const (
	MinNonceSize = 8
	MaxNonceSize = 64
)

// The trust tiers of ear.status.
const (
	StatusNone            = "none"
	StatusAffirming       = "affirming"
	StatusWarning         = "warning"
	StatusContraindicated = "contraindicated"
)

// AR4SI trustworthiness claim values the broker makes.
const (
	NoClaim             int8 = 0
	TrustworthyInstance int8 = 2 // instance-identity: recognized, not known to be compromised
	ApprovedConfig      int8 = 2 // configuration: a known and approved configuration
	ApprovedBoot        int8 = 3 // executables: only approved executables loaded during boot
	GenuineHardware     int8 = 2 // hardware: genuine, supported hardware
)

// Result is an attestation result's claims set.
type Result struct {
	Profile    string               `json:"eat_profile"`
	IssuedAt   int64                `json:"iat"`
	Expiry     int64                `json:"exp"`
	VerifierID VerifierID           `json:"ear.verifier-id"`
	Nonce      string               `json:"eat_nonce,omitempty"`
	Submods    map[string]Appraisal `json:"submods"`
	// ReceiptID and EKHash are keybroker's own claims: the decision's
	// receipt and the node's EK identity hash.
	ReceiptID string `json:"keybroker.receipt-id"`
	EKHash    string `json:"keybroker.ek-hash"`
}

// VerifierID is ear.verifier-id: who appraised the evidence.
type VerifierID struct {
	Build     string `json:"build"`
	Developer string `json:"developer"`
}

// Appraisal is one submodule's appraisal.
type Appraisal struct {
	Status      string       `json:"ear.status"`
	TrustVector *TrustVector `json:"ear.trustworthiness-vector,omitempty"`
	PolicyID    string       `json:"ear.appraisal-policy-id,omitempty"`
}

// TrustVector is the AR4SI trustworthiness vector; a zero claim (no claim)
// is left out.
type TrustVector struct {
	InstanceIdentity int8 `json:"instance-identity,omitempty"`
	Configuration    int8 `json:"configuration,omitempty"`
	Executables      int8 `json:"executables,omitempty"`
	FileSystem       int8 `json:"file-system,omitempty"`
	Hardware         int8 `json:"hardware,omitempty"`
	RuntimeOpaque    int8 `json:"runtime-opaque,omitempty"`
	StorageOpaque    int8 `json:"storage-opaque,omitempty"`
	SourcedData      int8 `json:"sourced-data,omitempty"`
}

// claims returns the vector's claims, for the status.
func (v *TrustVector) claims() []int8 {
	return []int8{v.InstanceIdentity, v.Configuration, v.Executables, v.FileSystem, v.Hardware,
		v.RuntimeOpaque, v.StorageOpaque, v.SourcedData}
}

// Tier is the trust tier of an AR4SI claim value: none (-1 to 1),
// affirming (2 to 31), warning (32 to 95) or contraindicated (the rest).
func Tier(claim int8) string {
	switch {
	case claim >= -1 && claim <= 1:
		return StatusNone
	case claim >= 2 && claim <= 31:
		return StatusAffirming
	case claim >= 32 && claim <= 95:
		return StatusWarning
	}
	return StatusContraindicated
}

// tierRank orders the tiers, worst last; a status is the worst tier of
// its claims.
var tierRank = map[string]int{StatusNone: 0, StatusAffirming: 1, StatusWarning: 2, StatusContraindicated: 3}

// status is the tier of v: the worst of its claims' tiers, "none" when it
// claims nothing.
func status(v *TrustVector) string {
	out := StatusNone
	for _, c := range v.claims() {
		if t := Tier(c); tierRank[t] > tierRank[out] {
			out = t
		}
	}
	return out
}

// Vector is the trustworthiness vector of an allowed decision (see the
// package documentation for what each claim means).
func Vector(o *evidence.Outcome) TrustVector {
	v := o.Verified
	tv := TrustVector{InstanceIdentity: TrustworthyInstance}
	if v.EKCA() != "" {
		tv.Hardware = GenuineHardware
	}
	if slices.Contains(o.Decision.Appraised, "pcrs") {
		tv.Configuration = ApprovedConfig
	}
	if v.EventLog() != nil && slices.Contains(o.Decision.Appraised, "eventlog") {
		tv.Executables = ApprovedBoot
	}
	return tv
}

// FromOutcome returns the claims of the result of an allowed decision o,
// recorded under receiptID, issued at now and valid for ttl. nonce is the
// relying party's (MinNonceSize to MaxNonceSize bytes), or empty.
func FromOutcome(o *evidence.Outcome, receiptID string, nonce []byte, now time.Time, ttl time.Duration) (*Result, error) {
	switch {
	case o == nil || o.Refusal != nil || o.Verified == nil || !o.Decision.Allowed:
		return nil, errors.New("no attestation result for a decision that allows nothing")
	case receiptID == "":
		return nil, errors.New("no attestation result without a receipt")
	case ttl <= 0:
		return nil, errors.New("attestation result ttl must be positive")
	}
	if err := CheckNonce(nonce); err != nil {
		return nil, err
	}
	tv := Vector(o)
	r := &Result{
		Profile:    Profile,
		IssuedAt:   now.Unix(),
		Expiry:     now.Add(ttl).Unix(),
		VerifierID: VerifierID{Build: "keybroker " + version.String(), Developer: Developer},
		Submods: map[string]Appraisal{Submod: {
			Status:      status(&tv),
			TrustVector: &tv,
			PolicyID:    PolicyIDPrefix + o.Decision.PolicyHash,
		}},
		ReceiptID: receiptID,
		EKHash:    o.Verified.EKHash(),
	}
	if len(nonce) > 0 {
		r.Nonce = base64.RawURLEncoding.EncodeToString(nonce)
	}
	return r, nil
}

// CheckNonce checks that a relying party's nonce, when given (not empty),
// has MinNonceSize to MaxNonceSize bytes.
func CheckNonce(nonce []byte) error {
	if len(nonce) > 0 && (len(nonce) < MinNonceSize || len(nonce) > MaxNonceSize) {
		return fmt.Errorf("relying_party_nonce must be %d to %d bytes, not %d", MinNonceSize, MaxNonceSize, len(nonce))
	}
	return nil
}
