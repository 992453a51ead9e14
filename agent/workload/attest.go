package workload

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
)

// DefaultProcDir is where the agent reads callers' executables.
const DefaultProcDir = "/proc"

// maxHashCache bounds the executable hash cache; when full it starts over.
const maxHashCache = 1024

// MaxExecutableSize bounds the executables the agent hashes: a caller
// whose executable is larger is attested by uid and gid only.
const MaxExecutableSize = 1 << 30

// attestor turns a connection's peer credentials into a Caller.
type attestor struct {
	procDir string
	bundles BundleLocations
	log     *slog.Logger

	mu     sync.Mutex
	hashes map[fileKey]string
}

func newAttestor(procDir string, bundles BundleLocations, log *slog.Logger) *attestor {
	return &attestor{procDir: procDir, bundles: bundles, log: log, hashes: map[fileKey]string{}}
}

// errCallerGone means the process that connected is no longer the one
// holding its PID.
var errCallerGone = errors.New("the calling process exited")

// errExecChanged means the process that connected runs another executable
// than the one it ran when it connected: it called execve since, or the
// file changed.
var errExecChanged = errors.New("the calling process runs another executable than when it connected")

// executable is what the agent learned about a caller's executable when
// the caller connected, all through one open file of /proc/<pid>/exe.
type executable struct {
	path   string
	sha256 string
	key    fileKey
	// local is true when the file is on a filesystem of localFilesystems:
	// only then may signed selectors hold.
	local bool
	// err is why the executable could not be read; then the caller is
	// described by uid and gid only.
	err error
}

// connected completes p, the peer credentials of a new connection, with
// the process's start time and its executable as they are now. Every call
// on the connection is checked against them (recheck).
func (a *attestor) connected(p PeerInfo) (PeerInfo, error) {
	st, err := processStartTime(a.procDir, p.PID)
	if err != nil {
		return PeerInfo{}, err
	}
	p.StartTime = st
	p.exe = a.executable(p.PID)
	// Checked after reading the executable: if the PID was reused in the
	// meantime, what was read may be another program's.
	if st, err := processStartTime(a.procDir, p.PID); err != nil || st != p.StartTime {
		return PeerInfo{}, errCallerGone
	}
	return p, nil
}

// attest describes the caller of a call on p's connection: uid and gid
// from the kernel, the executable as it was when the caller connected. It
// fails if the PID now belongs to another process than the one that
// connected, or if that process runs another executable now (recheck). An
// executable the agent could not read leaves Path and SHA256 empty (and is
// logged), so only entries selecting on uid and gid alone can match.
func (a *attestor) attest(p PeerInfo) (Caller, error) {
	c := Caller{PID: p.PID, UID: p.UID, GID: p.GID, startTime: p.StartTime, exe: p.exe}
	if err := a.recheck(c); err != nil {
		return Caller{}, err
	}
	if p.exe.err != nil {
		a.log.Warn("caller attested without its executable", "pid", p.PID, "uid", p.UID, "error", p.exe.err)
		return c, nil
	}
	c.Path, c.SHA256 = p.exe.path, p.exe.sha256
	return c, nil
}

// recheck fails if c's process is gone or its executable is not the file
// it ran when it connected (device, inode, size, modification and change
// time). It is done at every call and before every streamed response.
func (a *attestor) recheck(c Caller) error {
	exe := filepath.Join(a.procDir, strconv.Itoa(int(c.PID)), "exe")
	fi, statErr := os.Stat(exe)
	if st, err := processStartTime(a.procDir, c.PID); err != nil || st != c.startTime {
		return errCallerGone
	}
	if c.exe.err != nil {
		return nil
	}
	if statErr != nil {
		return fmt.Errorf("%w: %w", errExecChanged, statErr)
	}
	if key, ok := keyOf(fi); !ok || key != c.exe.key {
		return errExecChanged
	}
	return nil
}

// executable opens /proc/<pid>/exe once and describes that open file: its
// path, identity and SHA-256. The hash is cached by device, inode, size,
// mtime and ctime for files on local filesystems only.
func (a *attestor) executable(pid int32) executable {
	f, err := os.Open(filepath.Join(a.procDir, strconv.Itoa(int(pid)), "exe"))
	if err != nil {
		return executable{err: fmt.Errorf("unable to open the caller's executable: %w", err)}
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return executable{err: fmt.Errorf("unable to stat the caller's executable: %w", err)}
	}
	if !fi.Mode().IsRegular() {
		return executable{err: errors.New("the caller's executable is not a regular file")}
	}
	if fi.Size() > MaxExecutableSize {
		return executable{err: fmt.Errorf("the caller's executable is larger than %d bytes", MaxExecutableSize)}
	}
	key, ok := keyOf(fi)
	if !ok {
		return executable{err: errors.New("unable to identify the caller's executable")}
	}
	path, err := openedPath(f)
	if err != nil {
		return executable{err: fmt.Errorf("unable to read the caller's executable's path: %w", err)}
	}
	local, fsType, err := onLocalFilesystem(f)
	if err != nil {
		return executable{err: err}
	}
	if !local {
		a.log.Debug("caller's executable is not on a local filesystem: hashed at each connection, no signed selectors", "pid", pid, "path", path, "filesystem", fsType)
	}
	exe := executable{path: path, key: key, local: local}
	if local {
		a.mu.Lock()
		sum, ok := a.hashes[key]
		a.mu.Unlock()
		if ok {
			exe.sha256 = sum
			return exe
		}
	}
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, MaxExecutableSize+1))
	switch {
	case err != nil:
		return executable{err: fmt.Errorf("unable to hash the caller's executable: %w", err)}
	case n > MaxExecutableSize:
		return executable{err: fmt.Errorf("the caller's executable is larger than %d bytes", MaxExecutableSize)}
	}
	exe.sha256 = hex.EncodeToString(h.Sum(nil))
	if local {
		a.mu.Lock()
		if len(a.hashes) >= maxHashCache {
			clear(a.hashes)
		}
		a.hashes[key] = exe.sha256
		a.mu.Unlock()
	}
	return exe
}

// processStartTime reads field 22 (starttime) of /proc/<pid>/stat.
func processStartTime(procDir string, pid int32) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(procDir, strconv.Itoa(int(pid)), "stat"))
	if err != nil {
		return 0, fmt.Errorf("unable to read process %d: %w", pid, err)
	}
	// The command name (field 2) is in parentheses and may hold anything,
	// so count fields after its closing parenthesis: state is field 3.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("process %d: malformed stat", pid)
	}
	fields := bytes.Fields(b[i+1:])
	const startTime = 22 - 3
	if len(fields) <= startTime {
		return 0, fmt.Errorf("process %d: malformed stat", pid)
	}
	v, err := strconv.ParseUint(string(fields[startTime]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("process %d: malformed stat: %w", pid, err)
	}
	return v, nil
}

// Bounds of the /proc files read to decide whether signed selectors may
// hold for a process.
const (
	maxStatusSize  = 64 << 10
	maxEnvironSize = 1 << 20
)

// loaderVariables make the dynamic loader run code the executable's
// signature does not cover.
var loaderVariables = [][]byte{[]byte("LD_PRELOAD="), []byte("LD_AUDIT="), []byte("LD_LIBRARY_PATH=")}

// signable returns why signed selectors must not hold for c's process, or
// nil: a signature vouches for the executable's bytes, so the process must
// run them from a local filesystem, not be traced (another process could
// change its memory), and not have the loader run other code first. The
// environment is the one the process was started with
// (/proc/<pid>/environ): unreadable, or larger than 1 MiB, means no.
func (a *attestor) signable(c Caller) error {
	if !c.exe.local {
		return errors.New("the executable is not on a local filesystem")
	}
	dir := filepath.Join(a.procDir, strconv.Itoa(int(c.PID)))
	status, err := readBounded(filepath.Join(dir, "status"), maxStatusSize)
	if err != nil {
		return fmt.Errorf("unable to read the caller's status: %w", err)
	}
	tracer, err := tracerPID(status)
	if err != nil {
		return err
	}
	if tracer != 0 {
		return fmt.Errorf("the process is traced by process %d", tracer)
	}
	env, err := readBounded(filepath.Join(dir, "environ"), maxEnvironSize)
	if err != nil {
		return fmt.Errorf("unable to read the caller's environment: %w", err)
	}
	for _, v := range bytes.Split(env, []byte{0}) {
		for _, l := range loaderVariables {
			if bytes.HasPrefix(v, l) {
				return fmt.Errorf("the process's environment sets %s", l[:len(l)-1])
			}
		}
	}
	// Both files were read by PID: make sure they were c's.
	if st, err := processStartTime(a.procDir, c.PID); err != nil || st != c.startTime {
		return errCallerGone
	}
	return nil
}

// tracerPID reads the TracerPid line of /proc/<pid>/status.
func tracerPID(status []byte) (int, error) {
	for line := range bytes.SplitSeq(status, []byte{'\n'}) {
		if v, ok := bytes.CutPrefix(line, []byte("TracerPid:")); ok {
			n, err := strconv.Atoi(string(bytes.TrimSpace(v)))
			if err != nil {
				return 0, fmt.Errorf("malformed TracerPid in the caller's status: %w", err)
			}
			return n, nil
		}
	}
	return 0, errors.New("no TracerPid in the caller's status")
}

// readBounded reads a file of at most limit bytes.
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readAllBounded(f, limit)
}

// readAllBounded reads r to its end, failing if it holds more than limit
// bytes.
func readAllBounded(r io.Reader, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("larger than %d bytes", limit)
	}
	return data, nil
}
