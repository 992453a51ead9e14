package policies_test

import (
	"encoding/hex"
	"fmt"
	"log"
	"strings"

	"github.com/google/go-tpm/tpm2"

	"github.com/keybroker/keybroker/policies"
)

func ExampleLoad() {
	// Every *.hcl file in the directory; names are unique across files.
	set, err := policies.Load("testdata/policies")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(set.Names())
	// Output: [db mesh web]
}

func ExampleParse() {
	_, err := policies.Parse([]byte(`policy "web" {
  select { ek_cas = ["swtpm"] }
  require = ["pcrs.sha256[7] == 7"]
  release "web-tls" {
    type = "tls_certificate"
    mode = "sealed"
    ttl  = "1y"
  }
}`), "web.hcl")
	fmt.Println(err)
	// Output:
	// web.hcl:3:14: policy "web": require[0] at expression 1:16: found no matching overload for '_==_' applied to '(string, int)'
	// web.hcl:4:3: policy "web": release "web-tls": a tls_certificate needs a common_name, dns_names or ip_addresses
	// web.hcl:6:12: policy "web": release "web-tls": mode "sealed" is not supported; use "tpm_bound", "pcr_sealed" or "tpm_resident"
	// web.hcl:7:12: policy "web": release "web-tls": ttl "1y" is not a duration such as "24h"
}

func ExampleSet_Evaluate() {
	// In the broker, v comes from verify.Quotes; here, from the simulator.
	v, err := attestNode(node{viaCA: true})
	if err != nil {
		log.Fatal(err)
	}
	pcr7 := hex.EncodeToString(v.PCRs(tpm2.TPMAlgSHA256)[7])

	set, err := policies.Parse([]byte(`
policy "web" {
  select { ek_cas = ["test-ca"] }
  require = ["ek.certified", "pcrs.sha256[7] == \"`+pcr7+`\""]
  release "web-tls" {
    type        = "tls_certificate"
    mode        = "pcr_sealed"
    pcrs        = [7, 0]
    common_name = "web-${ek_hash_short}"
  }
}
policy "db" {
  select { ek_cas = ["test-ca"] }
  require = ["pcrs.sha256[7] == \"`+strings.Repeat("0", 64)+`\""]
  release "db-tls" {
    type        = "tls_certificate"
    common_name = "db"
  }
}`), "example.hcl")
	if err != nil {
		log.Fatal(err)
	}
	d := set.Evaluate(v)
	fmt.Println("allowed:", d.Allowed, d.Policies)
	for _, r := range d.Releases {
		fmt.Println("release:", r.Name, r.Mode, r.PCRs, r.TTL, r.CommonName == "web-"+v.EKHash()[:16])
	}
	for _, f := range d.Failures {
		fmt.Println("failure:", strings.ReplaceAll(f, strings.Repeat("0", 64), "00…"))
	}
	// Output:
	// allowed: true [web]
	// release: web-tls pcr_sealed [0 7] 24h0m0s true
	// failure: policy "db": require[0] pcrs.sha256[7] == "00…" is false
}

func ExampleParseSelector() {
	for _, s := range []string{"unix:uid:1000", "unix:path:/usr/bin/web", "k8s:ns:default"} {
		sel, err := policies.ParseSelector(s)
		fmt.Printf("%q %q %v\n", sel.Type, sel.Value, err)
	}
	// Output:
	// "unix" "uid:1000" <nil>
	// "unix" "path:/usr/bin/web" <nil>
	// "" "" "k8s:ns:default" has an unknown selector type "k8s"; use "signed" or "unix"
}

func ExampleFactDocs() {
	// What `keybroker policy check --facts` lists.
	for _, f := range policies.FactDocs() {
		if strings.HasPrefix(f.Name, "history.") {
			fmt.Printf("%s (%s)\n", f.Name, f.Type)
		}
	}
	// Output:
	// history.first_seen (bool)
	// history.ak_changed (bool)
	// history.rebooted (bool)
	// history.resets (int)
	// history.restarts (int)
}
