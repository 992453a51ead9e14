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

// ApprovalsFile is the file, next to CacheFile, that keeps the PCR-policy
// approvals of the last attestation (AttestResponse.pcr_approvals, as
// protojson, mode 0600): Reopen opens pcr_policy "authorized" credentials
// with them. It is written at every attestation with a cache, apart from
// the credentials, so a credential cached earlier re-opens in a state
// approved since, without a new release. Approvals are signatures over
// PCR states, not secrets.
const ApprovalsFile = "pcr-approvals.json"

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

// cacheFiles are the files a cache in dir keeps of resp: its credentials
// still sealed (CacheFile, without tpm_resident ones: residentlessCache)
// and its PCR-policy approvals (ApprovalsFile).
func cacheFiles(dir string, resp *pb.AttestResponse) ([]atomicfile.File, error) {
	files, err := residentlessCache(dir, resp)
	if err != nil {
		return nil, err
	}
	approvals, err := approvalsFile(dir, resp)
	if err != nil {
		return nil, err
	}
	return append(files, approvals), nil
}

// approvalsFile is the ApprovalsFile of resp's approvals, to write in dir.
func approvalsFile(dir string, resp *pb.AttestResponse) (atomicfile.File, error) {
	kept := &pb.AttestResponse{PcrApprovals: resp.GetPcrApprovals()}
	data, err := protojson.MarshalOptions{Multiline: true}.Marshal(kept)
	if err != nil {
		return atomicfile.File{}, fmt.Errorf("unable to encode the PCR-policy approvals: %w", err)
	}
	return atomicfile.File{Path: filepath.Join(dir, ApprovalsFile), Data: append(data, '\n'), Perm: 0o600}, nil
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
	approvals, err := readApprovals(filepath.Join(cacheDir, ApprovalsFile))
	if err != nil {
		return nil, &StepError{StepOpen, err}
	}
	node.UseApprovals(approvals)
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
	resp, err := readCacheResponse(path, "the credential cache")
	if err != nil {
		return nil, err
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
	return resp, nil
}

// readApprovals reads the approvals file at path, checked as readCache
// checks the cache; none when there is no file (a cache made without
// pcr_policy "authorized" releases, or before they existed).
func readApprovals(path string) ([]*pb.PCRApproval, error) {
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	resp, err := readCacheResponse(path, "the PCR-policy approvals")
	if err != nil {
		return nil, err
	}
	if resp.GetReceiptId() != "" || len(resp.GetCredentials()) != 0 || resp.GetAttestationResult() != "" || len(resp.GetWorkloadEntries()) != 0 {
		return nil, fmt.Errorf("the PCR-policy approvals %s are malformed: want approvals only", path)
	}
	return resp.GetPcrApprovals(), nil
}

// readCacheResponse reads what, an AttestResponse kept in the cache at
// path: a regular file, not readable by others, at most maxCacheFile
// bytes, strict protojson.
func readCacheResponse(path, what string) (*pb.AttestResponse, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("unable to read %s: %w", what, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("unable to read %s: %w", what, err)
	}
	switch {
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("%s %s is not a regular file", what, path)
	case fi.Mode().Perm()&0o077 != 0:
		return nil, fmt.Errorf("%s %s has mode %v: want 0600", what, path, fi.Mode().Perm())
	}
	data, err := io.ReadAll(io.LimitReader(f, maxCacheFile+1))
	if err != nil {
		return nil, fmt.Errorf("unable to read %s: %w", what, err)
	}
	if len(data) > maxCacheFile {
		return nil, fmt.Errorf("%s %s exceeds %d bytes", what, path, maxCacheFile)
	}
	var resp pb.AttestResponse
	if err := protojson.Unmarshal(data, &resp); err != nil {
		return nil, fmt.Errorf("%s %s is malformed: %w", what, path, err)
	}
	return &resp, nil
}
