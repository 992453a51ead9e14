package verify_test

import (
	"testing"
	"time"

	"github.com/google/go-tpm-tools/client"
	"github.com/keybroker/keybroker/internal/tpmtest"
)

func TestScratch(t *testing.T) {
	st := time.Now()
	rw := tpmtest.Open(t)
	t.Log("open", time.Since(st))
	sels, err := client.AllocatedPCRs(rw)
	t.Log(sels, err)
	st = time.Now()
	ek, err := client.EndorsementKeyRSA(rw)
	t.Log("ek", time.Since(st), err)
	defer ek.Close()
	st = time.Now()
	ak, err := client.AttestationKeyRSA(rw)
	t.Log("ak", time.Since(st), err)
	defer ak.Close()
	st = time.Now()
	ak2, err := client.AttestationKeyECC(rw)
	t.Log("akecc", time.Since(st), err)
	defer ak2.Close()
}
