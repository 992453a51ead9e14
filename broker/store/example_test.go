package store_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/keybroker/keybroker/broker/store"
)

func ExampleOpenBolt() {
	dir, err := os.MkdirTemp("", "keybroker-store")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	st, err := store.OpenBolt(filepath.Join(dir, "broker.db"), store.BoltOpts{})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()

	ctx := context.Background()
	now := time.Now()
	err = st.PutChallenge(ctx, store.Challenge{
		ID:         "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3Jh",
		EKPublic:   []byte("TPMT_PUBLIC of the EK"),
		AKPublic:   []byte("TPMT_PUBLIC of the AK"),
		SecretHash: sha256.Sum256([]byte("activation secret")),
		ExpiresAt:  now.Add(time.Minute),
	})
	if err != nil {
		log.Fatal(err)
	}

	c, err := st.GetChallenge(ctx, "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3Jh", now)
	if err != nil {
		log.Fatal(err)
	}
	// ... verify the node's answer against c and decide ...
	r := &store.Receipt{ChallengeID: c.ID, EKHash: "ek", Allowed: true}
	err = st.ConsumeChallenge(ctx, c.ID, r, nil)
	fmt.Println("first consume:", err)
	err = st.ConsumeChallenge(ctx, c.ID, &store.Receipt{ChallengeID: c.ID, EKHash: "ek"}, nil)
	fmt.Println("second consume is not found:", errors.Is(err, store.ErrNotFound))

	receipts, err := st.ListReceipts(ctx, store.ListOpts{EKHash: "ek"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("receipts:", len(receipts), receipts[0].ID == r.ID)
	// Output:
	// first consume: <nil>
	// second consume is not found: true
	// receipts: 1 true
}

func ExampleBolt_GetDenial() {
	dir, err := os.MkdirTemp("", "keybroker-store")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	st, err := store.OpenBolt(filepath.Join(dir, "broker.db"), store.BoltOpts{})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()

	// A refusal that is about the node deny-lists it, in the receipt's commit.
	if err := st.PutReceipt(ctx, &store.Receipt{EKHash: "ek", Check: "policy", DenyListed: true}); err != nil {
		log.Fatal(err)
	}
	d, err := st.GetDenial(ctx, "ek")
	fmt.Println("denied by:", d.Check, err)

	// An allowed attestation takes it off the list.
	if err := st.PutReceipt(ctx, &store.Receipt{EKHash: "ek", Allowed: true}); err != nil {
		log.Fatal(err)
	}
	_, err = st.GetDenial(ctx, "ek")
	fmt.Println("still denied:", !errors.Is(err, store.ErrNotFound))
	// Output:
	// denied by: policy <nil>
	// still denied: false
}
