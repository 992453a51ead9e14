package issue_test

import (
	"crypto/x509"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/keybroker/keybroker/broker/issue"
)

func ExampleLoadOrCreateCA() {
	dir, err := os.MkdirTemp("", "keybroker-ca")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// The first call creates the CA, later calls load it.
	ca, err := issue.LoadOrCreateCA(filepath.Join(dir, "ca"), issue.CAOpts{CommonName: "example CA"})
	if err != nil {
		log.Fatal(err)
	}
	again, err := issue.LoadOrCreateCA(filepath.Join(dir, "ca"), issue.CAOpts{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ca.Certificate().Subject.CommonName, ca.Certificate().IsCA)
	fmt.Println("same CA:", again.Certificate().Equal(ca.Certificate()))
	// Output:
	// example CA true
	// same CA: true
}

func ExampleCA_IssueTLS() {
	dir, err := os.MkdirTemp("", "keybroker-ca")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ca, err := issue.LoadOrCreateCA(dir, issue.CAOpts{})
	if err != nil {
		log.Fatal(err)
	}

	cred, err := ca.IssueTLS(issue.TLSTemplate{
		CommonName: "node-17",
		DNSNames:   []string{"node-17.example.internal"},
		TTL:        24 * time.Hour,
		Server:     true,
	})
	if err != nil {
		log.Fatal(err)
	}

	// A relying party that pins the CA bundle accepts the certificate.
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.BundlePEM())
	_, err = cred.Certificate.Verify(x509.VerifyOptions{
		Roots:     roots,
		DNSName:   "node-17.example.internal",
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	fmt.Println("verifies:", err == nil)
	fmt.Println("lifetime:", cred.NotAfter.Sub(cred.NotBefore))
	// Output:
	// verifies: true
	// lifetime: 24h1m0s
}

func ExampleCA_ServingCertificate() {
	dir, err := os.MkdirTemp("", "keybroker-ca")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ca, err := issue.LoadOrCreateCA(dir, issue.CAOpts{})
	if err != nil {
		log.Fatal(err)
	}
	cert, err := ca.ServingCertificate([]string{"broker.example.internal", "10.0.0.5"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(cert.Leaf.DNSNames, cert.Leaf.IPAddresses)
	// Output:
	// [broker.example.internal] [10.0.0.5]
}
