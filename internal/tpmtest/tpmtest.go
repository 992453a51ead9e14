// Package tpmtest gives tests a real software TPM: the embedded reference
// simulator from go-tpm-tools. Only one simulator can run in a process, so
// tests that use it must not run in parallel with each other.
package tpmtest

import (
	"io"
	"testing"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/legacy/tpm2"
)

// Open starts a fresh simulator with a random seed. At cleanup it fails the
// test if transient objects were left loaded, then shuts the simulator down.
func Open(tb testing.TB) io.ReadWriteCloser {
	tb.Helper()
	sim, err := simulator.Get()
	if err != nil {
		tb.Fatalf("unable to start the TPM simulator: %v", err)
	}
	register(tb, sim)
	return sim
}

// OpenSeeded starts a simulator whose primary seeds derive from seed, so the
// same seed yields the same EK and AK: a stand-in for "the same machine".
// Insecure by construction; for tests only.
func OpenSeeded(tb testing.TB, seed int64) io.ReadWriteCloser {
	tb.Helper()
	sim, err := simulator.GetWithFixedSeedInsecure(seed)
	if err != nil {
		tb.Fatalf("unable to start the TPM simulator: %v", err)
	}
	register(tb, sim)
	return sim
}

func register(tb testing.TB, sim *simulator.Simulator) {
	tb.Cleanup(func() {
		if sim.IsClosed() {
			return
		}
		if hs, err := client.Handles(sim, tpm2.HandleTypeTransient); err != nil {
			tb.Errorf("unable to list transient handles: %v", err)
		} else if len(hs) > 0 {
			tb.Errorf("test leaked %d transient TPM object(s)", len(hs))
		}
		sim.Close()
	})
}
