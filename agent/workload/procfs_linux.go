package workload

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// fileKey identifies an executable's content: the same device, inode,
// size, modification and change time mean the same bytes on a local
// filesystem (a running executable cannot be written: ETXTBSY).
type fileKey struct {
	dev, ino   uint64
	size       int64
	mtime, ctm int64
}

func keyOf(fi os.FileInfo) (fileKey, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileKey{}, false
	}
	return fileKey{
		dev: uint64(st.Dev), ino: uint64(st.Ino), size: st.Size,
		mtime: st.Mtim.Nano(), ctm: st.Ctim.Nano(),
	}, true
}

// localFilesystems are the filesystems whose files the agent trusts to
// read back the bytes the kernel maps when it executes them: block-device
// and memory filesystems the kernel itself serves. FUSE, NFS, CIFS, 9p and
// other filesystems a user-space or remote server answers can serve the
// agent other bytes than the ones a process runs, so their executables are
// hashed on every connection and never get signed selectors.
var localFilesystems = map[int64]string{
	unix.EXT4_SUPER_MAGIC:      "ext2/3/4",
	unix.XFS_SUPER_MAGIC:       "xfs",
	unix.BTRFS_SUPER_MAGIC:     "btrfs",
	unix.F2FS_SUPER_MAGIC:      "f2fs",
	unix.TMPFS_MAGIC:           "tmpfs",
	unix.RAMFS_MAGIC:           "ramfs",
	unix.OVERLAYFS_SUPER_MAGIC: "overlayfs",
	unix.SQUASHFS_MAGIC:        "squashfs",
	unix.EROFS_SUPER_MAGIC_V1:  "erofs",
}

// onLocalFilesystem reports whether f is on one of localFilesystems, and
// the filesystem's type for logs.
func onLocalFilesystem(f *os.File) (bool, string, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return false, "", fmt.Errorf("unable to stat the executable's filesystem: %w", err)
	}
	if name, ok := localFilesystems[int64(st.Type)]; ok {
		return true, name, nil
	}
	return false, "0x" + strconv.FormatInt(int64(st.Type), 16), nil
}

// openedPath is the path of the file f has open, as the kernel names it.
func openedPath(f *os.File) (string, error) {
	return os.Readlink(filepath.Join("/proc/self/fd", strconv.Itoa(int(f.Fd()))))
}

// openBundleFile opens name for reading without following a symbolic link
// in its last component or any /proc magic link, and without blocking on a
// FIFO. A non-empty root is a directory (such as /proc/<pid>/root) that
// name, absolute or not, is resolved inside: absolute symbolic links on the
// way resolve inside root too, never in the agent's own filesystem.
func openBundleFile(root, name string) (*os.File, error) {
	dirfd := unix.AT_FDCWD
	how := unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_NONBLOCK | unix.O_NOFOLLOW | unix.O_NOCTTY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_NO_MAGICLINKS,
	}
	if root != "" {
		fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: root, Err: err}
		}
		defer unix.Close(fd)
		dirfd = fd
		how.Resolve |= unix.RESOLVE_IN_ROOT
	}
	var fd int
	var err error
	// RESOLVE_IN_ROOT fails with EAGAIN when a rename races the lookup.
	for range 3 {
		if fd, err = unix.Openat2(dirfd, name, &how); !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return nil, &os.PathError{Op: "openat2", Path: filepath.Join(root, name), Err: err}
	}
	return os.NewFile(uintptr(fd), filepath.Join(root, name)), nil
}
