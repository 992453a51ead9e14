package sealing

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// DefaultCounterIndex is the NV index (owner range) of the node's
// policy-version counter.
const DefaultCounterIndex tpm2.TPMHandle = 0x01004B42

// MaxCounterSteps bounds the increments one AdvanceCounter makes.
const MaxCounterSteps = 64

// CounterPublic is the TPMS_NV_PUBLIC of a keybroker policy-version counter
// at index, as it is once written: a TPM_NT_COUNTER (it only ever grows,
// and a counter defined again starts at the highest count the TPM ever
// held, so deleting it cannot roll it back), read and incremented with its
// empty auth value, no dictionary-attack lockout.
func CounterPublic(index tpm2.TPMHandle) *tpm2.TPMSNVPublic {
	return &tpm2.TPMSNVPublic{
		NVIndex: index,
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{
			NT:        tpm2.TPMNTCounter,
			AuthWrite: true,
			AuthRead:  true,
			NoDA:      true,
			Written:   true,
		},
		DataSize: 8,
	}
}

// CheckCounterPublic refuses an NV public that is not a written keybroker
// policy counter in the owner range: the broker binds approvals to its name,
// so only such a counter gives revocation its meaning.
func CheckCounterPublic(p *tpm2.TPMSNVPublic) error {
	if p == nil {
		return errors.New("no policy counter")
	}
	if h := uint32(p.NVIndex); h < 0x01000000 || h > 0x013FFFFF {
		return fmt.Errorf("policy counter index 0x%08x is not in the owner NV range", h)
	}
	want := tpm2.Marshal(CounterPublic(p.NVIndex))
	if got := tpm2.Marshal(p); string(got) != string(want) {
		return fmt.Errorf("NV index 0x%08x is not a keybroker policy counter (want a written TPM_NT_COUNTER, authRead|authWrite|noDA, no policy)", uint32(p.NVIndex))
	}
	return nil
}

// EnsureCounter returns the public and the value of the policy counter at
// index, defining it (owner authorization, empty) and incrementing it once
// (a counter reads only once written) when the TPM has none. It refuses an
// index that holds anything else.
func EnsureCounter(rw io.ReadWriter, index tpm2.TPMHandle) (*tpm2.TPMSNVPublic, uint64, error) {
	tpm := transport.FromReadWriter(rw)
	if _, err := (tpm2.NVReadPublic{NVIndex: index}).Execute(tpm); err != nil {
		if !errors.Is(err, tpm2.TPMRCHandle) {
			return nil, 0, fmt.Errorf("unable to read the policy counter's public area: %w", err)
		}
		def := *CounterPublic(index)
		def.Attributes.Written = false
		if _, err := (tpm2.NVDefineSpace{
			AuthHandle: tpm2.TPMRHOwner,
			PublicInfo: tpm2.New2B(def),
		}).Execute(tpm); err != nil {
			return nil, 0, fmt.Errorf("unable to define the policy counter: %w", err)
		}
		if err := incrementCounter(tpm, &def); err != nil {
			return nil, 0, err
		}
	}
	pub, value, err := ReadCounter(rw, index)
	if err != nil {
		return nil, 0, err
	}
	return pub, value, nil
}

// ReadCounter returns the public and the value of the policy counter at
// index, refusing an index that is not one (CheckCounterPublic).
func ReadCounter(rw io.ReadWriter, index tpm2.TPMHandle) (*tpm2.TPMSNVPublic, uint64, error) {
	tpm := transport.FromReadWriter(rw)
	rp, err := (tpm2.NVReadPublic{NVIndex: index}).Execute(tpm)
	if err != nil {
		return nil, 0, fmt.Errorf("unable to read the policy counter's public area: %w", err)
	}
	pub, err := rp.NVPublic.Contents()
	if err != nil {
		return nil, 0, fmt.Errorf("unable to read the policy counter's public area: %w", err)
	}
	if err := CheckCounterPublic(pub); err != nil {
		return nil, 0, err
	}
	r, err := (tpm2.NVRead{
		AuthHandle: tpm2.AuthHandle{Handle: index, Name: rp.NVName, Auth: tpm2.PasswordAuth(nil)},
		NVIndex:    tpm2.NamedHandle{Handle: index, Name: rp.NVName},
		Size:       8,
	}).Execute(tpm)
	if err != nil {
		return nil, 0, fmt.Errorf("unable to read the policy counter: %w", err)
	}
	if len(r.Data.Buffer) != 8 {
		return nil, 0, fmt.Errorf("the policy counter holds %d bytes, want 8", len(r.Data.Buffer))
	}
	return pub, binary.BigEndian.Uint64(r.Data.Buffer), nil
}

// AdvanceCounter increments the policy counter at index until it is at
// least target, so that every approval whose version is below target stops
// opening, and returns its value. It refuses to step more than
// MaxCounterSteps at once.
func AdvanceCounter(rw io.ReadWriter, index tpm2.TPMHandle, target uint64) (uint64, error) {
	pub, value, err := ReadCounter(rw, index)
	if err != nil {
		return 0, err
	}
	if value >= target {
		return value, nil
	}
	if target-value > MaxCounterSteps {
		return 0, fmt.Errorf("the policy counter is at %d: advancing it to %d takes more than %d steps", value, target, MaxCounterSteps)
	}
	tpm := transport.FromReadWriter(rw)
	for ; value < target; value++ {
		if err := incrementCounter(tpm, pub); err != nil {
			return 0, err
		}
	}
	return value, nil
}

func incrementCounter(tpm transport.TPM, pub *tpm2.TPMSNVPublic) error {
	name, err := tpm2.NVName(pub)
	if err != nil {
		return err
	}
	if _, err := (tpm2.NVIncrement{
		AuthHandle: tpm2.AuthHandle{Handle: pub.NVIndex, Name: *name, Auth: tpm2.PasswordAuth(nil)},
		NVIndex:    tpm2.NamedHandle{Handle: pub.NVIndex, Name: *name},
	}).Execute(tpm); err != nil {
		return fmt.Errorf("unable to increment the policy counter: %w", err)
	}
	return nil
}
