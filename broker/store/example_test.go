package store_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/keybroker/keybroker/broker/store"
)

func ExampleBolt_Record() {
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
	// ... open the challenge token, verify the node's answer, decide ...
	d := &store.Decision{
		ChallengeID:     "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3Jh",
		ChallengeExpiry: time.Now().Add(time.Minute),
		Receipt:         &store.Receipt{EKHash: "ek", Allowed: true},
		Node:            &store.NodeRecord{EKHash: "ek", FirstSeen: time.Now(), LastSeen: time.Now()},
		Deny:            store.DenyRemove,
	}
	// One transaction: the challenge is used up, the receipt and the node
	// record are stored. Release only after it returned nil.
	fmt.Println("first decision:", st.Record(ctx, d))

	again := &store.Decision{
		ChallengeID:     d.ChallengeID,
		ChallengeExpiry: d.ChallengeExpiry,
		Receipt:         &store.Receipt{EKHash: "ek", Allowed: true},
	}
	err = st.Record(ctx, again)
	fmt.Println("second decision refused:", errors.Is(err, store.ErrConsumed))

	receipts, err := st.ListReceipts(ctx, store.ListOpts{EKHash: "ek"})
	if err != nil {
		log.Fatal(err)
	}
	n, err := st.GetNode(ctx, "ek")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("receipts:", len(receipts), n.LastReceiptID == d.Receipt.ID)
	// Output:
	// first decision: <nil>
	// second decision refused: true
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

	// A refusal the broker holds against the node deny-lists it, in the
	// receipt's transaction.
	refused := &store.Decision{Receipt: &store.Receipt{EKHash: "ek", Check: "policy"}, Deny: store.DenyAdd}
	if err := st.Record(ctx, refused); err != nil {
		log.Fatal(err)
	}
	d, err := st.GetDenial(ctx, "ek")
	fmt.Println("denied by:", d.Check, err)

	// An allowed attestation takes it off the list.
	allowed := &store.Decision{Receipt: &store.Receipt{EKHash: "ek", Allowed: true}, Deny: store.DenyRemove}
	if err := st.Record(ctx, allowed); err != nil {
		log.Fatal(err)
	}
	_, err = st.GetDenial(ctx, "ek")
	fmt.Println("still denied:", !errors.Is(err, store.ErrNotFound))
	// Output:
	// denied by: policy <nil>
	// still denied: false
}

// A broker replica opens the store shared through etcd. Every replica uses
// the same endpoints and prefix; calls fail after RequestTimeout while the
// cluster is unreachable and work again once it is back.
func ExampleOpenEtcd() {
	ctx := context.Background()
	st, err := store.OpenEtcd(ctx, store.EtcdOpts{
		Endpoints: []string{"https://10.0.0.1:2379", "https://10.0.0.2:2379", "https://10.0.0.3:2379"},
		CAFile:    "/etc/keybroker/etcd/ca.pem",
		CertFile:  "/etc/keybroker/etcd/client.pem",
		KeyFile:   "/etc/keybroker/etcd/client-key.pem",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	keys, err := st.ChallengeKeys(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(keys), "challenge keys")
}
