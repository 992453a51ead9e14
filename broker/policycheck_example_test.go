package broker_test

import (
	"fmt"
	"strings"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/policies"
)

// A policy that selects an ek_ca the configuration does not define and
// releases an x509_svid from a broker without a spiffe block is refused
// before it serves, each problem at its position in the policy file.
func ExampleConfig_CheckPolicies() {
	cfg, err := broker.ParseConfig([]byte(`data_dir = "data"
policies = ["web.hcl"]
ek_allow = ["`+strings.Repeat("ab", 32)+`"]
`), "broker.hcl")
	if err != nil {
		fmt.Println(err)
		return
	}
	set, err := policies.Parse([]byte(`policy "web" {
  select { ek_cas = ["swtpm"] }
  release "svid" {
    type      = "x509_svid"
    spiffe_id = "spiffe://example.org/web"
  }
}
`), "web.hcl")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(cfg.CheckPolicies(set))
	// Output:
	// web.hcl:2:22: policy "web": ek_ca "swtpm" is not defined: broker.hcl has no ek_ca block
	// web.hcl:4:17: policy "web": release "svid" is an x509_svid, but broker.hcl has no spiffe block
}
