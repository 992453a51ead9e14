package vaultauth_test

import (
	"context"
	"fmt"

	"github.com/hashicorp/vault/sdk/logical"

	"github.com/keybroker/keybroker/plugins/vaultauth"
)

// Vault calls Factory when the auth method is enabled; requests then reach
// its paths. Here an operator trusts one EK by hash and shortens challenges.
func ExampleFactory() {
	ctx := context.Background()
	conf := logical.TestBackendConfig()
	conf.StorageView = &logical.InmemStorage{}
	b, err := vaultauth.Factory(ctx, conf)
	if err != nil {
		fmt.Println(err)
		return
	}
	resp, err := b.HandleRequest(ctx, &logical.Request{
		Operation: logical.UpdateOperation,
		Path:      "config",
		Storage:   conf.StorageView,
		Data: map[string]any{
			"ek_allow":      "3d458cfe55cc03ea1f443f1562beec8df51c75e14a9fcf9a7234a13f198e7969",
			"challenge_ttl": "30s",
		},
	})
	fmt.Println(resp, err)
	resp, _ = b.HandleRequest(ctx, &logical.Request{Operation: logical.ReadOperation, Path: "config", Storage: conf.StorageView})
	fmt.Println(resp.Data["challenge_ttl"], resp.Data["challenges_per_minute"])
	// Output:
	// <nil> <nil>
	// 30 10
}
