package receiptchain_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/keybroker/keybroker/broker/receiptchain"
	"github.com/keybroker/keybroker/broker/store"
)

// A Checkpointer signs a store's chain head when it is due: here every 2
// receipts (or once a minute); force signs any head not signed yet.
func ExampleCheckpointer() {
	dir, err := os.MkdirTemp("", "keybroker-checkpoints")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	st, err := store.OpenBolt(filepath.Join(dir, "broker.db"), store.BoltOpts{})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	signer, err := receiptchain.NewSigner(key)
	if err != nil {
		log.Fatal(err)
	}

	ctx := context.Background()
	cp := receiptchain.NewCheckpointer(st, signer, 2, time.Minute)
	now := time.Now()
	for i := range 3 {
		d := &store.Decision{Receipt: &store.Receipt{EKHash: "ek", Allowed: true}}
		if err := st.Record(ctx, d); err != nil {
			log.Fatal(err)
		}
		head, signed, err := cp.Sign(ctx, now, false)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("receipt %d: head seq %d, signed %v\n", i+1, head.Seq, signed)
	}
	head, signed, err := cp.Sign(ctx, now, true)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("forced: head seq %d, signed %v\n", head.Seq, signed)
	// Output:
	// receipt 1: head seq 1, signed true
	// receipt 2: head seq 2, signed false
	// receipt 3: head seq 3, signed true
	// forced: head seq 3, signed false
}
