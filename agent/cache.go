package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/keybroker/keybroker/internal/atomicfile"
	pb "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// CacheFile is the file, in BootstrapOpts.CacheDir, that keeps the
// credentials the broker released still sealed, for Reopen: the receipt ID
// and each pb.Credential as received (its TPM import blob, its JWE and its
// not_after_unix), as protojson, mode 0600. It holds no plaintext: only the
// TPM the broker sealed to opens it, and a pcr_sealed credential only while
// that TPM holds the PCR values it was sealed to.
const CacheFile = "sealed-credentials.json"

// maxCacheFile bounds the cache file Reopen reads.
const maxCacheFile = 4 << 20

// cacheFile is the cache of resp's credentials, still sealed, to write in
// dir.
func cacheFile(dir string, resp *pb.AttestResponse) (atomicfile.File, error) {
	kept := &pb.AttestResponse{ReceiptId: resp.GetReceiptId(), Credentials: resp.GetCredentials()}
	data, err := protojson.MarshalOptions{Multiline: true}.Marshal(kept)
	if err != nil {
		return atomicfile.File{}, fmt.Errorf("unable to encode the credential cache: %w", err)
	}
	return atomicfile.File{Path: filepath.Join(dir, CacheFile), Data: append(data, '\n'), Perm: 0o600}, nil
}

// Reopen opens, inside node's TPM and without contacting the broker, the
// credentials a Bootstrap with CacheDir kept sealed in cacheDir, and writes
// them to out as Bootstrap does: atomically, all or none. It refuses, and
// writes nothing, when any cached credential has expired, when a pcr_sealed
// one is sealed to PCR values the TPM no longer holds, when the cache is
// malformed or readable by others, or when a blob does not open in this
// TPM. Errors are *StepError.
//
// The expiry of a certificate is read from the opened certificate itself;
// that of a Vault secret or token only from the cache file, which nothing
// but the file's mode protects: the check keeps a node from using stale
// credentials, it does not stop whoever holds both the disk and this TPM in
// the same boot state, who can open the blobs as the node does.
func Reopen(node *Node, cacheDir string, out FileOut) (*Result, error) {
	if out.OutDir == "" {
		return nil, errors.New("no output directory")
	}
	resp, err := readCache(filepath.Join(cacheDir, CacheFile), time.Now())
	if err != nil {
		return nil, &StepError{StepOpen, err}
	}
	res, files, err := openFiles(node, resp, out, true, func(Step, string) {})
	if se := (*StepError)(nil); errors.As(err, &se) {
		return nil, &StepError{se.Step, fmt.Errorf("the cached credentials do not open in this TPM (changed, or sealed to another TPM or boot state): %w", se.Err)}
	} else if err != nil {
		return nil, err
	}
	if !res.NotAfter.IsZero() && !time.Now().Before(res.NotAfter) {
		return nil, &StepError{StepOpen, fmt.Errorf("the cached credentials expired at %s", res.NotAfter.UTC().Format(time.RFC3339))}
	}
	if err := writeFiles(res, out.OutDir, files, nil); err != nil {
		return nil, err
	}
	return res, nil
}

// readCache reads and checks a cache file: a regular file, not readable by
// others, at most maxCacheFile bytes, strict protojson, with a receipt and
// credentials none of which has expired at now.
func readCache(path string, now time.Time) (*pb.AttestResponse, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("unable to read the credential cache: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("unable to read the credential cache: %w", err)
	}
	switch {
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("the credential cache %s is not a regular file", path)
	case fi.Mode().Perm()&0o077 != 0:
		return nil, fmt.Errorf("the credential cache %s has mode %v: want 0600", path, fi.Mode().Perm())
	}
	data, err := io.ReadAll(io.LimitReader(f, maxCacheFile+1))
	if err != nil {
		return nil, fmt.Errorf("unable to read the credential cache: %w", err)
	}
	if len(data) > maxCacheFile {
		return nil, fmt.Errorf("the credential cache %s exceeds %d bytes", path, maxCacheFile)
	}
	var resp pb.AttestResponse
	if err := protojson.Unmarshal(data, &resp); err != nil {
		return nil, fmt.Errorf("the credential cache %s is malformed: %w", path, err)
	}
	if resp.GetReceiptId() == "" || len(resp.GetCredentials()) == 0 || resp.GetAttestationResult() != "" || len(resp.GetWorkloadEntries()) != 0 {
		return nil, fmt.Errorf("the credential cache %s is malformed: want a receipt ID and credentials only", path)
	}
	var errs []error
	for _, c := range resp.GetCredentials() {
		if na := c.GetNotAfterUnix(); na > 0 && !now.Before(time.Unix(na, 0)) {
			errs = append(errs, fmt.Errorf("cached credential %q expired at %s", c.GetName(), time.Unix(na, 0).UTC().Format(time.RFC3339)))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &resp, nil
}
