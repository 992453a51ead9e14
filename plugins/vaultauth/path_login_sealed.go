package vaultauth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"
	"google.golang.org/protobuf/encoding/protojson"

	tpmpb "github.com/google/go-tpm-tools/proto/tpm"

	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/policies"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/sealing"
)

// A role with token_envelope cannot let Vault return the token: Vault core
// creates it after the auth method answers and hands it to the caller in
// the clear. So the login that verified the node does not answer with an
// Auth. It stores a ticket (a random value, by its hash) naming the node
// and the role, presents the ticket to this mount's login path over
// Vault's own API (config vault_addr), where it is redeemed once for an
// Auth that Vault turns into a token like any login's, and returns that
// token sealed to the node's EK, in the envelope of the broker's releases.

const (
	ticketPrefix = "ticket/"
	// ticketTTL bounds how long a ticket may wait for its redemption,
	// which normally follows within milliseconds; no longer than the
	// client waits for it, so that no ticket is redeemed for a login that
	// already gave up.
	ticketTTL = selfTimeout
	// ticketSize is the ticket's entropy in bytes.
	ticketSize = 32
	// EnvelopeName names the sealed token in its envelope (JWE kid).
	EnvelopeName = "vault-token"
)

// ticketEntry is a stored ticket: who the node is, for which role, and
// the login's ID, which the redeemed token's metadata carries (sealed_login)
// so the plugin knows the token it seals is the one made for this ticket.
type ticketEntry struct {
	Role    string    `json:"role"`
	Facts   nodeFacts `json:"facts"`
	LoginID string    `json:"login_id"`
	Expires time.Time `json:"expires"`
}

// metaSealedLogin is the token metadata key holding a sealed login's ID.
const metaSealedLogin = "sealed_login"

func ticketKey(ticket string) string {
	sum := sha256.Sum256([]byte(ticket))
	return ticketPrefix + hex.EncodeToString(sum[:])
}

// loginSealed completes the login of an allowed node whose role seals
// tokens.
func (b *tpmAuthBackend) loginSealed(ctx context.Context, req *logical.Request, cfg *config, roleName string, role *roleEntry, v *verify.Verified, f nodeFacts) (*logical.Response, error) {
	log := b.Logger().With("role", roleName, "ek", f.EKHash)
	var pcrs *tpmpb.PCRs
	if role.TokenEnvelope == policies.ModePCRSealed {
		var err error
		if pcrs, err = v.SealPCRs(role.envelopeBank(), role.EnvelopePCRs); err != nil {
			log.Warn("login refused", "check", "token_envelope", "error", err)
			return logical.ErrorResponse("token_envelope: " + err.Error()), nil
		}
	}
	raw := make([]byte, ticketSize+16)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	ticket := base64.RawURLEncoding.EncodeToString(raw[:ticketSize])
	loginID := hex.EncodeToString(raw[ticketSize:])
	log = log.With("sealed_login", loginID)
	key := ticketKey(ticket)
	entry, err := logical.StorageEntryJSON(key, ticketEntry{Role: roleName, Facts: f, LoginID: loginID, Expires: b.now().Add(ticketTTL)})
	if err != nil {
		return nil, err
	}
	if err := req.Storage.Put(ctx, entry); err != nil {
		return nil, err
	}
	// Redeemed tickets are gone already; this removes one whose
	// redemption failed, under the lock redemption takes.
	defer func() {
		lock := locksutil.LockForKey(b.storageLocks, key)
		lock.Lock()
		defer lock.Unlock()
		if err := req.Storage.Delete(context.WithoutCancel(ctx), key); err != nil {
			log.Warn("unable to delete a ticket; it expires unused", "error", err)
		}
	}()

	auth, err := cfg.vault.login(ctx, req.MountPoint, roleName, ticket)
	if err != nil {
		// The cause (vault_addr's address, its TLS) is for operators.
		log.Error("sealed login: the ticket login at vault_addr failed; nothing issued", "error", err)
		return nil, errors.New("token_envelope: unable to complete the login through vault_addr; the Vault server log has the cause")
	}
	defer clear(auth.raw)
	// vault_addr must have answered with the token made for this ticket.
	if m := auth.metadata; m[metaSealedLogin] != loginID || m["ek_hash"] != f.EKHash || m["role"] != roleName {
		log.Error("sealed login: vault_addr answered with a token not made for this login; not delivered", "accessor", auth.accessor)
		if rerr := cfg.vault.revokeSelf(context.WithoutCancel(ctx), auth.clientToken); rerr != nil {
			log.Error("unable to revoke the token vault_addr returned", "accessor", auth.accessor, "error", rerr)
		}
		return nil, errors.New("token_envelope: vault_addr answered with another token; the Vault server log has the details")
	}
	cred, err := sealing.SealCredentialTo(v.Node().EKKey(), EnvelopeName, pb.CredentialType_SECRET, auth.raw, pcrs)
	if err == nil {
		var resp *logical.Response
		if resp, err = sealedResponse(cred, auth); err == nil {
			log.Info("token sealed to the node's TPM", "accessor", auth.accessor, "mode", role.TokenEnvelope)
			return resp, nil
		}
	}
	if rerr := cfg.vault.revokeSelf(context.WithoutCancel(ctx), auth.clientToken); rerr != nil {
		log.Error("sealed login: unable to seal the token, nor to revoke it", "accessor", auth.accessor, "error", err, "revoke_error", rerr)
	} else {
		log.Error("sealed login: unable to seal the token; revoked", "accessor", auth.accessor, "error", err)
	}
	return nil, errors.New("token_envelope: unable to seal the token; the Vault server log has the cause")
}

// sealedResponse is a sealed login's answer: the envelope, and Vault's
// auth object without its token so the node (and the audit log) can see
// what it is before opening it.
func sealedResponse(cred *pb.Credential, auth *selfAuth) (*logical.Response, error) {
	js, err := protojson.Marshal(cred)
	if err != nil {
		return nil, err
	}
	var env map[string]any
	if err := json.Unmarshal(js, &env); err != nil {
		return nil, err
	}
	var info map[string]any
	if err := json.Unmarshal(auth.raw, &info); err != nil {
		return nil, err
	}
	delete(info, "client_token")
	return &logical.Response{Data: map[string]any{
		"token_envelope": env,
		"auth":           info,
	}}, nil
}

// pathLoginTicket redeems a ticket: once, before it expires, for the role
// it names, while the role still seals tokens with the same policy.
func (b *tpmAuthBackend) pathLoginTicket(ctx context.Context, req *logical.Request, d *framework.FieldData, roleName string, role *roleEntry, ticket string) (*logical.Response, error) {
	for _, f := range []string{"challenge_id", "quotes", "event_log", "identity_log", "ek_public", "ek_certificate", "ek_intermediates", "ak_public"} {
		if _, ok := d.GetOk(f); ok {
			return logical.ErrorResponse("ticket cannot be combined with %s", f), nil
		}
	}
	if len(ticket) > 2*ticketSize {
		return logical.ErrorResponse("ticket is too long"), logical.ErrPermissionDenied
	}
	key := ticketKey(ticket)
	lock := locksutil.LockForKey(b.storageLocks, key)
	lock.Lock()
	raw, err := req.Storage.Get(ctx, key)
	if err == nil && raw != nil {
		err = req.Storage.Delete(ctx, key)
	}
	lock.Unlock()
	if err != nil {
		return nil, err
	}
	if raw == nil {
		b.Logger().Warn("ticket login refused: unknown or used ticket", "role", roleName)
		return logical.ErrorResponse("ticket: unknown or already used"), logical.ErrPermissionDenied
	}
	var t ticketEntry
	if err := raw.DecodeJSON(&t); err != nil {
		return nil, fmt.Errorf("unable to decode a ticket: %w", err)
	}
	set, err := b.policy(roleName, role)
	if err != nil {
		return nil, fmt.Errorf("stored role %q is invalid: %w", roleName, err)
	}
	var why error
	switch {
	case !b.now().Before(t.Expires):
		why = errors.New("ticket: expired")
	case t.Role != roleName:
		why = errors.New("ticket: issued for another role")
	case role.TokenEnvelope == "":
		why = errors.New("ticket: the role no longer seals tokens")
	case set.Hash() != t.Facts.PolicyHash:
		why = errors.New("ticket: the role's policy changed since the attestation")
	}
	if why != nil {
		b.Logger().Warn("ticket login refused", "role", roleName, "ek", t.Facts.EKHash, "error", why)
		return logical.ErrorResponse(why.Error()), logical.ErrPermissionDenied
	}
	auth := newAuth(roleName, role, t.Facts)
	auth.Metadata[metaSealedLogin] = t.LoginID
	return &logical.Response{Auth: auth}, nil
}

// purgeTickets deletes tickets whose redemption never came.
func (b *tpmAuthBackend) purgeTickets(ctx context.Context, s logical.Storage, now time.Time) (int, error) {
	keys, err := s.List(ctx, ticketPrefix)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, k := range keys {
		raw, err := s.Get(ctx, ticketPrefix+k)
		if err != nil {
			return n, err
		}
		var t ticketEntry
		if raw != nil && raw.DecodeJSON(&t) == nil && now.Before(t.Expires) {
			continue
		}
		if err := s.Delete(ctx, ticketPrefix+k); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}
