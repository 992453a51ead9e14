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

// attestor turns a connection's peer credentials into a Caller.
type attestor struct {
	procDir string
	log     *slog.Logger

	mu     sync.Mutex
	hashes map[fileKey]string
}

func newAttestor(procDir string, log *slog.Logger) *attestor {
	return &attestor{procDir: procDir, log: log, hashes: map[fileKey]string{}}
}

// errCallerGone means the process that connected is no longer the one
// holding its PID.
var errCallerGone = errors.New("the calling process exited")

// attest describes the caller: uid and gid from the kernel, the executable
// from /proc/<pid>/exe read now (so a process that exec'd another program
// since it connected is described as that program). It fails if the PID now
// belongs to another process than the one that connected. An executable
// the agent cannot read leaves Path and SHA256 empty (and is logged), so
// only entries selecting on uid and gid alone can match.
func (a *attestor) attest(p PeerInfo) (Caller, error) {
	c := Caller{PID: p.PID, UID: p.UID, GID: p.GID}
	exe := filepath.Join(a.procDir, strconv.Itoa(int(p.PID)), "exe")
	path, sum, exeErr := a.executable(exe)
	// Checked after reading the executable: if the PID was reused in the
	// meantime, what was read may be another program's.
	if st, err := processStartTime(a.procDir, p.PID); err != nil || st != p.StartTime {
		return Caller{}, errCallerGone
	}
	if exeErr != nil {
		a.log.Warn("caller attested without its executable", "pid", p.PID, "uid", p.UID, "error", exeErr)
		return c, nil
	}
	c.Path, c.SHA256 = path, sum
	return c, nil
}

// executable returns the path and SHA-256 of the program /proc/<pid>/exe
// points at. The hash is cached by device, inode, size, mtime and ctime.
func (a *attestor) executable(exe string) (string, string, error) {
	path, err := os.Readlink(exe)
	if err != nil {
		return "", "", fmt.Errorf("unable to read the caller's executable: %w", err)
	}
	f, err := os.Open(exe)
	if err != nil {
		return "", "", fmt.Errorf("unable to open the caller's executable: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", "", fmt.Errorf("unable to stat the caller's executable: %w", err)
	}
	key, cacheable := keyOf(fi)
	if cacheable {
		a.mu.Lock()
		sum, ok := a.hashes[key]
		a.mu.Unlock()
		if ok {
			return path, sum, nil
		}
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", "", fmt.Errorf("unable to hash the caller's executable: %w", err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if cacheable {
		a.mu.Lock()
		if len(a.hashes) >= maxHashCache {
			clear(a.hashes)
		}
		a.hashes[key] = sum
		a.mu.Unlock()
	}
	return path, sum, nil
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
