// Package agent is keybroker's node side: it talks to the TPM, proves to the
// broker what the node booted, opens released credentials inside the TPM and
// writes them out.
//
// A bootstrap is two round trips:
//
//	rw, _ := agent.OpenTPM("simulator")        // or "/dev/tpmrm0", "tcp://127.0.0.1:2321"
//	node, _ := agent.NewNode(rw, agent.NodeOpts{})
//	res, err := agent.Bootstrap(ctx, brokerClient, node, agent.BootstrapOpts{OutDir: "/etc/keybroker"})
//
// With NodeOpts.TPMResident the node creates, before each Attest, one
// signing key per named tpm_resident release inside the TPM, certified by
// the AK for the challenge (package resident), and Bootstrap writes the
// released certificate with that key as a TSS2 key file instead of a
// PKCS#8 key. For a tpm_resident x509_svid release the node SVID's key is
// such a key: NodeSVID.SVID.PrivateKey signs through the TPM
// (resident.Key.Signer, reaching it through NodeOpts.TPM), so the
// SVIDManager's mutual TLS with the broker never holds a private key, and
// NodeOpts.TPMResidentPCRs binds it to the current PCR values (PolicyPCR):
// after they change, the TPM refuses to sign.
//
// With BootstrapOpts.CacheDir, Bootstrap also keeps the released
// credentials still sealed (CacheFile); Reopen opens them in the TPM and
// writes them as Bootstrap does, without the broker, after a reboot into
// the same boot state and until they expire.
//
// For SPIFFE, Attest opens the node X.509-SVID and workload entries an
// attestation released; an SVIDManager gets the workload SVIDs with it and
// keeps them current (Run re-attests at half the node SVID's life), and
// package workload serves them on the SPIFFE Workload API.
//
// The agent never imports broker internals; it speaks only the gRPC API.
package agent
