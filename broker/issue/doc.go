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
package issue
