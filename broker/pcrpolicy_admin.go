package broker

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/evidence"
	"github.com/keybroker/keybroker/broker/pcrpolicy"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/policies"
)

// PCRStateAction is an operator's approval or revocation of a PCR state
// (`keybroker pcr-policy approve|revoke`), as the admin socket takes it.
type PCRStateAction struct {
	// ID names a stored approval to revoke (revoke only).
	ID string `json:"id,omitempty"`
	// Node names a node (EK hash or a unique prefix) whose last verified
	// attestation gives the values of PCRs in Bank.
	Node string   `json:"node,omitempty"`
	PCRs []uint32 `json:"pcrs,omitempty"`
	// Values gives the state explicitly, PCR index to hex value.
	Values map[uint32]string `json:"values,omitempty"`
	// Bank is "sha256" (default), "sha384" or "sha512".
	Bank string `json:"bank,omitempty"`
	// Releases scopes an approval to the pcr_policy "authorized" releases
	// of those names (approve only); empty: every such release.
	Releases []string `json:"releases,omitempty"`
	// Note is the operator's comment; Operator who ran the command.
	Note     string `json:"note,omitempty"`
	Operator string `json:"operator,omitempty"`
}

// ApprovePCRState approves the state a names for every node's pcr_policy
// "authorized" releases (pcrpolicy.Approve): through the running bolt
// broker's admin socket, or on the store (always for etcd).
func ApprovePCRState(ctx context.Context, cfg *Config, a PCRStateAction) (store.PCRApproval, error) {
	return pcrStateAction(ctx, cfg, "approve", a)
}

// RevokePCRState revokes the approval a.ID, or the state a names
// (pcrpolicy.Revoke, pcrpolicy.RevokeState), as ApprovePCRState goes.
func RevokePCRState(ctx context.Context, cfg *Config, a PCRStateAction) (store.PCRApproval, error) {
	return pcrStateAction(ctx, cfg, "revoke", a)
}

// ListPCRApprovals returns the stored approvals and revocations, oldest
// first, as ListReceipts reads.
func ListPCRApprovals(ctx context.Context, cfg *Config) ([]store.PCRApproval, error) {
	var out []store.PCRApproval
	err := query(ctx, cfg, "/v1/pcr-approvals", &out, func(st store.Backend) (err error) {
		out, _, err = st.PCRApprovals(ctx)
		return err
	})
	return out, err
}

func pcrStateAction(ctx context.Context, cfg *Config, verb string, a PCRStateAction) (store.PCRApproval, error) {
	var out store.PCRApproval
	if sock, ok := liveSocket(cfg); ok {
		err := postViaSocket(ctx, sock, "/v1/pcr-approvals/"+verb, a, &out)
		return out, err
	}
	st, err := OpenStore(ctx, cfg, StoreOpts{LockTimeout: 2 * time.Second})
	if err != nil {
		return out, err
	}
	defer st.Close()
	return pcrStateOn(ctx, st, verb, a, time.Now())
}

// pcrStateOn runs the approval or revocation a on st.
func pcrStateOn(ctx context.Context, st store.Backend, verb string, a PCRStateAction, now time.Time) (store.PCRApproval, error) {
	note := a.Note
	if a.Operator != "" {
		note = fmt.Sprintf("%s (by %s)", a.Note, a.Operator)
	}
	if verb == "revoke" && len(a.Releases) > 0 {
		return store.PCRApproval{}, fmt.Errorf("%w: a revocation applies to every release; --release is for approve", ErrInvalidAction)
	}
	if verb == "revoke" && a.ID != "" {
		if a.Node != "" || len(a.Values) > 0 {
			return store.PCRApproval{}, fmt.Errorf("%w: an approval ID, or a state, not both", ErrInvalidAction)
		}
		return pcrpolicy.Revoke(ctx, st, a.ID, note, now)
	}
	bank, pcrs, source, err := pcrState(ctx, st, a)
	if err != nil {
		return store.PCRApproval{}, err
	}
	if verb == "revoke" {
		return pcrpolicy.RevokeState(ctx, st, bank, pcrs, source, note, now)
	}
	return pcrpolicy.Approve(ctx, st, bank, pcrs, a.Releases, source, note, now)
}

// pcrState is the state a names: the values a.Node last attested for
// a.PCRs, or a.Values.
func pcrState(ctx context.Context, st store.Backend, a PCRStateAction) (uint32, map[uint32][]byte, string, error) {
	name := a.Bank
	if name == "" {
		name = "sha256"
	}
	b, ok := policies.SealBank(name)
	if !ok {
		return 0, nil, "", fmt.Errorf("%w: bank %q is not sha256, sha384 or sha512", ErrInvalidAction, name)
	}
	bank := uint32(b)
	switch {
	case (a.Node == "") == (len(a.Values) == 0):
		return 0, nil, "", fmt.Errorf("%w: name a state by a node and its PCRs, or by its values", ErrInvalidAction)
	case len(a.Values) > 0:
		pcrs := make(map[uint32][]byte, len(a.Values))
		for i, h := range a.Values {
			v, err := hex.DecodeString(h)
			if err != nil {
				return 0, nil, "", fmt.Errorf("%w: PCR %d is not hex", ErrInvalidAction, i)
			}
			pcrs[i] = v
		}
		return bank, pcrs, "explicit", wrapInvalid(pcrpolicy.CheckState(bank, pcrs))
	}
	ref, err := parseEKHashRef(a.Node)
	if err != nil {
		return 0, nil, "", err
	}
	ek, rec, _, err := resolveNode(ctx, st, ref)
	if err != nil {
		return 0, nil, "", err
	}
	if rec == nil {
		return 0, nil, "", fmt.Errorf("node %s has no verified attestation: %w", ek, store.ErrNotFound)
	}
	if len(a.PCRs) == 0 {
		return 0, nil, "", fmt.Errorf("%w: name the PCRs to take from node %s", ErrInvalidAction, ek)
	}
	pcrs, err := attestedState(ctx, st, ek, rec, b, a.PCRs)
	if err != nil {
		return 0, nil, "", err
	}
	return bank, pcrs, "node " + ek, wrapInvalid(pcrpolicy.CheckState(bank, pcrs))
}

// ErrNotAllowedNode refuses to take a state from a node whose last
// attestation was refused: its state is not one the policy accepted.
var ErrNotAllowedNode = errors.New("the node's last attestation was refused")

// attestedState is the values of pcrs in bank that node ek's last
// attestation (rec) proved, taken only when that attestation was allowed
// (its receipt) and its stored evidence verifies again: the quotes'
// signatures by the stored AK over the stored PCR values and the
// challenge's secret (evidence.Reverify, with the node's own EK hash as
// the trust: what is re-checked is the stored evidence, not the EK's
// trust, which the allowed decision already decided).
func attestedState(ctx context.Context, st store.Backend, ek string, rec *store.NodeRecord, bank tpm2.TPMAlgID, pcrs []uint32) (map[uint32][]byte, error) {
	if rec.LastReceiptID == "" {
		return nil, fmt.Errorf("%w: node %s has no receipt of its last attestation", ErrInvalidAction, ek)
	}
	r, err := st.GetReceipt(ctx, rec.LastReceiptID)
	if err != nil {
		return nil, fmt.Errorf("unable to read node %s's last receipt: %w", ek, err)
	}
	if !r.Allowed {
		return nil, fmt.Errorf("%w: node %s (receipt %s, check %s): %w", ErrInvalidAction, ek, r.ID, r.Check, ErrNotAllowedNode)
	}
	v, err := evidence.Reverify(rec.Evidence, verify.Opts{Trust: verify.Trust{EKHashes: []string{ek}}})
	if err != nil {
		return nil, fmt.Errorf("%w: node %s's stored evidence does not verify: %w", ErrInvalidAction, ek, err)
	}
	got, err := v.SealPCRs(bank, pcrs)
	if err != nil {
		return nil, fmt.Errorf("%w: node %s: %w", ErrInvalidAction, ek, err)
	}
	return got.GetPcrs(), nil
}

func wrapInvalid(err error) error {
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidAction, err)
	}
	return nil
}

// handlePCRApprovals adds the PCR-policy approvals to the admin socket's
// mux:
//
//	GET  /v1/pcr-approvals           stored approvals and revocations, oldest first
//	POST /v1/pcr-approvals/approve   body PCRStateAction   the approval stored
//	POST /v1/pcr-approvals/revoke    body PCRStateAction   the revocation stored
//
// Errors: 400 malformed or refused (a revoked state), 404 unknown node or
// approval, 409 ambiguous node prefix.
func handlePCRApprovals(mux *http.ServeMux, st store.Backend) {
	mux.HandleFunc("GET /v1/pcr-approvals", func(w http.ResponseWriter, r *http.Request) {
		out, _, err := st.PCRApprovals(r.Context())
		if err != nil {
			http.Error(w, "unable to list PCR approvals", http.StatusInternalServerError)
			return
		}
		writeJSON(w, out)
	})
	for _, verb := range []string{"approve", "revoke"} {
		mux.HandleFunc("POST /v1/pcr-approvals/"+verb, func(w http.ResponseWriter, r *http.Request) {
			var a PCRStateAction
			if err := decodeStrict(http.MaxBytesReader(w, r.Body, maxActionBody), &a); err != nil {
				http.Error(w, fmt.Sprintf("%v: %v", ErrInvalidAction, err), http.StatusBadRequest)
				return
			}
			out, err := pcrStateOn(r.Context(), st, verb, a, time.Now())
			switch {
			case errors.Is(err, pcrpolicy.ErrRevoked):
				http.Error(w, err.Error(), http.StatusBadRequest)
			case errors.Is(err, pcrpolicy.ErrUnknownApproval):
				http.Error(w, err.Error(), http.StatusNotFound)
			case err != nil:
				writeNodeError(w, err, "unable to "+verb+" the PCR state")
			default:
				writeJSON(w, out)
			}
		})
	}
}
