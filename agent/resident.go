package agent

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/keybroker/keybroker/internal/atomicfile"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/resident"
)

// MaxTPMResident bounds NodeOpts.TPMResident (the broker takes at most as
// many resident keys in one attestation).
const MaxTPMResident = 8

// checkTPMResident checks the release names of NodeOpts.TPMResident and
// that NodeOpts.TPMResidentPCRs binds only those.
func checkTPMResident(names []string, pcrs map[string]*resident.PCRs) error {
	if len(names) > MaxTPMResident {
		return fmt.Errorf("at most %d tpm_resident releases", MaxTPMResident)
	}
	for i, name := range names {
		if name == "" || len(name) > resident.MaxNameSize || strings.ContainsAny(name, "\x00\n") {
			return fmt.Errorf("tpm_resident release name %q must be 1 to %d bytes", name, resident.MaxNameSize)
		}
		if slices.Contains(names[:i], name) {
			return fmt.Errorf("tpm_resident release %q is listed twice", name)
		}
	}
	for name, sel := range pcrs {
		switch {
		case !slices.Contains(names, name):
			return fmt.Errorf("tpm_resident release %q is bound to PCRs but not listed", name)
		case sel == nil || len(sel.PCRs) == 0:
			return fmt.Errorf("tpm_resident release %q is bound to no PCR", name)
		}
	}
	return nil
}

// residentKeys creates a key inside the TPM for each tpm_resident release
// the node was told of (bound to the PCRs NodeOpts.TPMResidentPCRs names
// for it), certified by the AK for the challenge whose activated secret is
// secret, keeps them for residentKeyFor and returns them for the
// AttestRequest. Nothing private leaves the TPM: the private part the TPM
// returns is encrypted to its parent storage key.
func (n *Node) residentKeys(secret []byte) ([]*pb.ResidentKey, error) {
	n.resident = nil
	var out []*pb.ResidentKey
	for _, name := range n.residentNames {
		k, err := resident.CreateWith(n.rw, uint32(n.ak.Handle()), secret, name, resident.CreateOpts{PCRs: n.residentPCRs[name]})
		if err != nil {
			return nil, fmt.Errorf("tpm_resident release %q: %w", name, err)
		}
		n.resident = append(n.resident, k)
		out = append(out, &pb.ResidentKey{Name: name, Public: k.Public, CertifyInfo: k.CertifyInfo, Signature: k.Signature})
	}
	return out, nil
}

// residentKeyFor returns the key created for release name in the last
// attestation, once leaf, the certificate the broker released for it, is
// known to certify that key. Errors do not name the credential.
func (n *Node) residentKeyFor(name string, leaf *x509.Certificate) (*resident.Key, error) {
	i := slices.IndexFunc(n.resident, func(k *resident.Key) bool { return k.Name == name })
	if i < 0 {
		return nil, fmt.Errorf("tpm_resident, and this agent created no key for it (--tpm-resident %s)", name)
	}
	k := n.resident[i]
	pub, err := k.PublicKey()
	if err != nil {
		return nil, err
	}
	want, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(leaf.RawSubjectPublicKeyInfo, want) {
		return nil, errors.New("the certificate is not for the key created in the TPM")
	}
	return k, nil
}

// residentKeyPEM returns the TSS2 PEM key file of the key created for
// release name in the last attestation, once certPEM, the certificate the
// broker released for it, is known to certify that key.
func (n *Node) residentKeyPEM(name string, certPEM []byte) ([]byte, error) {
	leaf, err := parseLeaf(certPEM)
	if err != nil {
		return nil, fmt.Errorf("credential %q: %w", name, err)
	}
	k, err := n.residentKeyFor(name, leaf)
	if err != nil {
		return nil, fmt.Errorf("credential %q: %w", name, err)
	}
	return k.PEM()
}

// residentlessCache is the credential cache of resp in dir (cacheFile)
// without its tpm_resident credentials, or none when nothing else is
// left. Reopen could not use them: their keys are created anew at each
// attestation and not kept (the key files written with them stay loadable
// in this TPM).
func residentlessCache(dir string, resp *pb.AttestResponse) ([]atomicfile.File, error) {
	kept := &pb.AttestResponse{ReceiptId: resp.GetReceiptId()}
	for _, c := range resp.GetCredentials() {
		if c.GetMode() != pb.ReleaseMode_TPM_RESIDENT {
			kept.Credentials = append(kept.Credentials, c)
		}
	}
	if len(kept.Credentials) == 0 {
		return nil, nil
	}
	f, err := cacheFile(dir, kept)
	if err != nil {
		return nil, err
	}
	return []atomicfile.File{f}, nil
}
