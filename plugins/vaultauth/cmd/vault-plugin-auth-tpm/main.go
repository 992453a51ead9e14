// Command vault-plugin-auth-tpm serves keybroker's TPM auth method to Vault
// as an external plugin. Vault starts it from its plugin directory once it is
// registered in the catalog; it takes no flags of its own (Vault 1.12 and
// later set up the plugin's TLS automatically).
package main

import (
	"log"
	"os"

	"github.com/hashicorp/vault/sdk/plugin"

	"github.com/keybroker/keybroker/plugins/vaultauth"
)

func main() {
	if err := plugin.ServeMultiplex(&plugin.ServeOpts{BackendFactoryFunc: vaultauth.Factory}); err != nil {
		log.Println(err)
		os.Exit(1)
	}
}
