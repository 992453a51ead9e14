package softtpm

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"

	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/broker/challenge"
	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/tpmtest"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
	"github.com/keybroker/keybroker/sealing"
)

var keyTypes = []KeyType{ECC, RSA}

func newNode(t testing.TB, key KeyType) *Node {
	t.Helper()
	n, err := New(Opts{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func random(t testing.TB, size int) []byte {
	t.Helper()
	b := make([]byte, size)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func makeCredential(t *testing.T, ek *tpm2.TPMTPublic, akName, secret []byte) *pb.ChallengeResponse {
	t.Helper()
	blob, enc, err := challenge.MakeCredential(ek, akName, secret)
	if err != nil {
		t.Fatal(err)
	}
	return &pb.ChallengeResponse{CredentialBlob: blob, EncryptedSecret: enc}
}

// The EK and AK publics are the simulator's, but for the key itself: the
// same templates, encoded the same way.
func TestPublicAreasMatchSimulator(t *testing.T) {
	rw := tpmtest.Open(t)
	for _, key := range keyTypes {
		t.Run(key.String(), func(t *testing.T) {
			sim, node := newSimNode(t, rw, key), newNode(t, key)
			req := node.ChallengeRequest()
			for _, c := range []struct {
				what string
				sim  *tpm2.TPMTPublic
				node []byte
			}{
				{"EK", sim.ekPublic(t), req.GetEkPublic()},
				{"AK", public(t, sim.ak), req.GetAkPublic()},
			} {
				got, err := tpm2.Unmarshal[tpm2.TPMTPublic](c.node)
				if err != nil {
					t.Fatalf("%s: %v", c.what, err)
				}
				want := *c.sim
				want.Unique = got.Unique
				if !bytes.Equal(tpm2.Marshal(want), c.node) {
					t.Errorf("%s public area differs from the simulator's beyond its key:\n got %x\nwant %x", c.what, c.node, tpm2.Marshal(want))
				}
			}
		})
	}
}

// A credential made by the broker's MakeCredential is activated by the
// simulator for its EK and AK, and by softtpm for its own, to the same
// secret; a credential for another EK or another AK name is refused by both.
func TestActivateAgreesWithSimulator(t *testing.T) {
	rw := tpmtest.Open(t)
	for _, key := range keyTypes {
		t.Run(key.String(), func(t *testing.T) {
			sim, node, other := newSimNode(t, rw, key), newNode(t, key), newNode(t, key)
			secret := random(t, challenge.SecretSize)

			got, err := sim.activate(makeCredential(t, sim.ekPublic(t), sim.akName(t), secret))
			if err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("simulator: activated %x, %v; want the secret", got, err)
			}
			got, err = node.Activate(makeCredential(t, node.EKPublic(), node.AKName(), secret))
			if err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("softtpm: activated %x, %v; want the secret", got, err)
			}

			// For another AK name.
			if _, err := sim.activate(makeCredential(t, sim.ekPublic(t), node.AKName(), secret)); err == nil {
				t.Error("simulator activated a credential made for another AK")
			}
			if _, err := node.Activate(makeCredential(t, node.EKPublic(), sim.akName(t), secret)); !errors.Is(err, ErrIntegrity) {
				t.Errorf("softtpm activated a credential made for another AK: %v", err)
			}
			// For another EK.
			if _, err := sim.activate(makeCredential(t, node.EKPublic(), sim.akName(t), secret)); err == nil {
				t.Error("simulator activated a credential made for another EK")
			}
			if _, err := node.Activate(makeCredential(t, other.EKPublic(), node.AKName(), secret)); err == nil {
				t.Error("softtpm activated a credential made for another EK")
			}
			// Altered: one bit of the encrypted credential.
			resp := makeCredential(t, node.EKPublic(), node.AKName(), secret)
			resp.CredentialBlob[len(resp.CredentialBlob)-1] ^= 1
			if _, err := node.Activate(resp); !errors.Is(err, ErrIntegrity) {
				t.Errorf("softtpm activated an altered credential: %v", err)
			}
			// Not one TPM2B.
			resp = makeCredential(t, node.EKPublic(), node.AKName(), secret)
			resp.EncryptedSecret = append(resp.EncryptedSecret, 0)
			if _, err := node.Activate(resp); err == nil {
				t.Error("softtpm accepted an encrypted secret with a trailing byte")
			}
		})
	}
}

func seal(t *testing.T, ek *tpm2.TPMTPublic, payload []byte, pcrs map[uint32][]byte) *pb.Credential {
	t.Helper()
	var sel *tpmpb.PCRs
	if pcrs != nil {
		sel = &tpmpb.PCRs{Hash: tpmpb.HashAlgo_SHA256, Pcrs: pcrs}
	}
	c, err := sealing.SealCredential(ek, "test", pb.CredentialType_SECRET, payload, sel)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func pick(all map[uint32][]byte, idx ...uint32) map[uint32][]byte {
	out := map[uint32][]byte{}
	for _, i := range idx {
		out[i] = all[i]
	}
	return out
}

// An envelope sealed by sealing.SealCredential opens on the TPM it was
// made for — simulator or softtpm — and on no other; a PCR-sealed one opens
// only while the sealed PCRs hold, on both.
func TestOpenAgreesWithSimulator(t *testing.T) {
	rw := tpmtest.Open(t)
	for _, key := range keyTypes {
		t.Run(key.String(), func(t *testing.T) {
			sim, node, other := newSimNode(t, rw, key), newNode(t, key), newNode(t, key)
			payload := random(t, 100)

			if got, err := sim.open(seal(t, sim.ekPublic(t), payload, nil)); err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("simulator: opened %x, %v", got, err)
			}
			if got, err := node.Open(seal(t, node.EKPublic(), payload, nil)); err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("softtpm: opened %x, %v", got, err)
			}
			if _, err := sim.open(seal(t, node.EKPublic(), payload, nil)); err == nil {
				t.Error("simulator opened an envelope sealed to another EK")
			}
			if _, err := node.Open(seal(t, sim.ekPublic(t), payload, nil)); !errors.Is(err, sealing.ErrImport) {
				t.Errorf("softtpm opened an envelope sealed to the simulator's EK: %v", err)
			}
			if _, err := node.Open(seal(t, other.EKPublic(), payload, nil)); err == nil {
				t.Error("softtpm opened an envelope sealed to another node's EK")
			}

			// PCR-sealed to the current PCRs 0 and 7, then PCR 7 changes.
			simSealed := seal(t, sim.ekPublic(t), payload, sim.pcrs(t, 0, 7))
			cur, err := node.PCRs(tpm2.TPMAlgSHA256)
			if err != nil {
				t.Fatal(err)
			}
			nodeSealed := seal(t, node.EKPublic(), payload, pick(cur, 0, 7))
			if got, err := sim.open(simSealed); err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("simulator: opened sealed %x, %v", got, err)
			}
			if got, err := node.Open(nodeSealed); err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("softtpm: opened sealed %x, %v", got, err)
			}
			ev := sha256.Sum256([]byte("boot loader replaced"))
			sim.extend(t, 7, ev[:])
			if err := node.Extend(tpm2.TPMAlgSHA256, 7, ev[:]); err != nil {
				t.Fatal(err)
			}
			if _, err := sim.open(simSealed); err == nil {
				t.Error("simulator opened a sealed envelope after PCR 7 changed")
			}
			if _, err := node.Open(nodeSealed); !errors.Is(err, ErrPolicy) {
				t.Errorf("softtpm opened a sealed envelope after PCR 7 changed: %v", err)
			}
			// A PCR outside the sealed set changes nothing.
			if err := node.Extend(tpm2.TPMAlgSHA256, 7, ev[:]); err != nil {
				t.Fatal(err)
			}
			node.Reboot()
			if err := node.Extend(tpm2.TPMAlgSHA256, 9, ev[:]); err != nil {
				t.Fatal(err)
			}
			if got, err := node.Open(nodeSealed); err != nil || !bytes.Equal(got, payload) {
				t.Errorf("softtpm after reboot, PCR 9 extended: opened %x, %v", got, err)
			}
		})
	}
}

// New's spliced encodings are go-tpm's: the EK's and AK's TPMT_PUBLIC
// decode and re-encode to the same bytes, the EK's is EKPublic marshalled,
// and the names and EK hash are those the broker computes.
func TestEncodingMatchesMarshal(t *testing.T) {
	for _, key := range keyTypes {
		t.Run(key.String(), func(t *testing.T) {
			node := newNode(t, key)
			req := node.ChallengeRequest()
			if got := tpm2.Marshal(node.EKPublic()); !bytes.Equal(got, req.GetEkPublic()) {
				t.Errorf("EK public area:\n got %x\nwant %x", req.GetEkPublic(), got)
			}
			for _, enc := range [][]byte{req.GetEkPublic(), req.GetAkPublic()} {
				pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](enc)
				if err != nil || !bytes.Equal(tpm2.Marshal(pub), enc) {
					t.Errorf("public area %x does not round-trip: %v", enc, err)
				}
			}
			ak, _ := tpm2.Unmarshal[tpm2.TPMTPublic](req.GetAkPublic())
			name, err := tpm2.ObjectName(ak)
			if err != nil || !bytes.Equal(name.Buffer, node.AKName()) {
				t.Errorf("AK name %x, go-tpm's %x (%v)", node.AKName(), name.Buffer, err)
			}
			vn, err := verify.Node(req.GetEkPublic(), nil, nil, req.GetAkPublic(), verify.Opts{Trust: verify.Trust{EKHashes: []string{node.EKHash()}}})
			if err != nil {
				t.Fatalf("the broker does not trust the node by its EKHash: %v", err)
			}
			if !bytes.Equal(vn.AKName(), node.AKName()) {
				t.Errorf("broker's AK name %x, node's %x", vn.AKName(), node.AKName())
			}
		})
	}
}
