// Package issue is the broker's certificate authority: it keeps the CA key
// and certificate on disk and issues X.509 credentials from them.
//
// It decides nothing: what to issue, to whom and for how long comes from the
// policy that released it. IssueTLS turns a TLSTemplate into a fresh key and
// a certificate signed by the CA; ServingCertificate makes the broker's own
// listener certificate; BundlePEM is what agents pin.
//
//	ca, err := issue.LoadOrCreateCA("/var/lib/keybroker/ca", issue.CAOpts{})
//	if err != nil {
//		return err
//	}
//	cred, err := ca.IssueTLS(issue.TLSTemplate{
//		CommonName: "node-17",
//		DNSNames:   []string{"node-17.example.internal"},
//		TTL:        24 * time.Hour,
//		Server:     true,
//	})
//
// The CA is created on first use as a self-signed ECDSA P-256 root valid for
// ten years, with its key written atomically with mode 0600.
//
// Leaf certificates (TLS certificates and X.509-SVIDs) from a P-256 CA for
// P-256, P-384 and RSA keys are encoded by this package with cryptobyte,
// byte for byte as x509.CreateCertificate would encode them but without
// encoding/asn1's reflection, which was a third of a release's issuing
// cost; anything else (another CA key, a string x509 would refuse) goes to
// x509.CreateCertificate. Either way the CA's signature is verified before
// a certificate is returned.
package issue
