// Package workload is the agent's SPIFFE Workload API: a gRPC server on a
// unix socket that hands local processes the X.509- and JWT-SVIDs of the
// workload entries they match, and the trust domain's bundles.
//
//	lis, err := workload.Listen(workload.DefaultSocket)   // dir 0755, socket 0777
//	srv := workload.NewServer(source, workload.WithLogger(log))
//	err = srv.Serve(ctx, lis)
//
// Workloads use any SPIFFE Workload API client, e.g. go-spiffe's
// workloadapi, with SPIFFE_ENDPOINT_SOCKET=unix:///run/keybroker/agent.sock.
//
// # Who gets what
//
// Every call must carry the gRPC metadata workload.spiffe.io: true
// (InvalidArgument otherwise). The caller is then attested from the
// socket's peer credentials: the kernel's SO_PEERCRED gives its uid, gid
// and pid when it connected, and /proc/<pid>/exe its executable, opened
// once when the connection is accepted: its path, identity (device, inode,
// size, mtime, ctime) and SHA-256 (cached by that identity on local
// filesystems; at most MaxExecutableSize bytes) all come from that open
// file. Every call and every streamed response re-checks that the pid has
// the same start time and runs the same file: a process that executed
// another program since it connected is refused (PermissionDenied "unable
// to attest the caller"). The caller's selectors are
// unix:uid:<n>, unix:gid:<n> (primary group), unix:path:<executable> and
// unix:sha256:<hex>; when the snapshot's entries use signed selectors
// (signed:key:<name>, signed:identity:<issuer>/<subject>), also those that
// the Sigstore bundles of the executable make hold, verified offline
// against the snapshot's Trust (bundles found where WithBundles says:
// beside the executable, or in directories by digest; see
// BundleLocations). A signature vouches for the executable, not for the
// process: signed selectors hold only for an executable on a local
// filesystem (see docs/workload-provenance.md), a process that is not
// traced and whose environment sets no LD_PRELOAD, LD_AUDIT or
// LD_LIBRARY_PATH. An entry matches when all of its selectors are among
// them. A caller that matches no entry gets PermissionDenied "no identity
// issued"; once the node's identity lapsed (its X.509-SVID expired, plus
// the agent's grace), SVID calls get PermissionDenied "identity expired".
//
// The socket is world-connectable (0777 in a 0755 directory) on purpose:
// identity comes from attestation, never from who can open the socket.
// Run the agent as root so that it can read every caller's executable; a
// caller whose executable it cannot read is attested by uid and gid only.
//
// The server holds no identities itself: a Source (the agent's SVID
// manager) supplies snapshots and JWT-SVIDs.
//
// With WithRecorder, every SVID is recorded before it is handed out (the
// agent's TPM-backed identity log, package idlog): a response whose SVIDs
// cannot be recorded is refused with Unavailable "unable to record the
// identity handout".
package workload
