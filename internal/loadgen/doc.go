// Package loadgen drives a fleet of software TPM nodes (internal/softtpm)
// through the broker's protocol over gRPC and TLS, as a boot storm would:
// every node once through Challenge, credential activation, Quote, Attest
// and opening the released TLS credential, at a given concurrency. It
// measures what one release costs — wall time, latency percentiles, the
// broker's CPU time, peak memory and store growth per release — against
// the crypto floor measured in the same run on the same machine.
//
// Run does it all against a broker at an address, or against a broker it
// starts as a separate process (Opts.Serve) with a temporary data directory
// and a configuration that trusts every node of the fleet by EK hash or,
// with Opts.EKCA, through the fleet's EK CA (each node presenting an EK
// certificate and the CA's intermediate, as TPMs from a vendor do):
//
//	sum, err := loadgen.Run(ctx, loadgen.Opts{Nodes: 1000, Concurrency: 50, Serve: true})
//	if err != nil {
//		return err
//	}
//	sum.WriteText(os.Stdout)
package loadgen
