// Package atomicfile writes files so that readers see either the old content
// or the new, never a partial file: data goes to a temporary file in the same
// directory, which is synced, given its mode and renamed over the target.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// File is one file of a set.
type File struct {
	Path string
	Data []byte
	Perm os.FileMode
}

// Write writes one file atomically. perm is applied exactly, whatever the
// umask.
func Write(path string, data []byte, perm os.FileMode) error {
	return WriteSet([]File{{Path: path, Data: data, Perm: perm}})
}

// WriteNew writes one file atomically but never replaces an existing one: it
// fails with an error wrapping fs.ErrExist instead, so two processes creating
// the same file cannot clobber each other.
func WriteNew(path string, data []byte, perm os.FileMode) error {
	tmp, err := writeTemp(File{Path: path, Data: data, Perm: perm})
	if err != nil {
		return err
	}
	if err := placeNoReplace(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("unable to create %s: %w", path, err)
	}
	return syncDir(dirOf(path))
}

// placeNoReplace moves tmp to path unless path exists. A hard link fails
// atomically if path exists; where links are unsupported it falls back to a
// check before the rename.
func placeNoReplace(tmp, path string) error {
	err := os.Link(tmp, path)
	if err == nil {
		os.Remove(tmp)
		return nil
	}
	if errors.Is(err, fs.ErrExist) {
		return err
	}
	if _, err := os.Lstat(path); err == nil {
		return &fs.PathError{Op: "create", Path: path, Err: fs.ErrExist}
	}
	return os.Rename(tmp, path)
}

func dirOf(path string) string {
	if d := filepath.Dir(path); d != "" {
		return d
	}
	return "."
}

// WriteSet writes several files. Every new file is fully written and synced
// before any target is replaced, so a failure while writing leaves the
// previous set intact and no temporary files behind.
func WriteSet(files []File) (err error) {
	temps := make([]string, 0, len(files))
	defer func() {
		if err != nil {
			for _, t := range temps {
				os.Remove(t)
			}
		}
	}()
	for _, f := range files {
		t, err := writeTemp(f)
		if err != nil {
			return err
		}
		temps = append(temps, t)
	}
	dirs := map[string]bool{}
	for i, f := range files {
		if err := os.Rename(temps[i], f.Path); err != nil {
			return fmt.Errorf("unable to replace %s: %w", f.Path, err)
		}
		dirs[dirOf(f.Path)] = true
	}
	temps = nil
	for d := range dirs {
		if err := syncDir(d); err != nil {
			return err
		}
	}
	return nil
}

func writeTemp(f File) (string, error) {
	base := filepath.Base(f.Path)
	if strings.HasSuffix(f.Path, string(filepath.Separator)) || base == "." {
		return "", fmt.Errorf("unable to write %s: path names a directory", f.Path)
	}
	tmp, err := os.CreateTemp(dirOf(f.Path), "."+base+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("unable to create a temporary file for %s: %w", f.Path, err)
	}
	name := tmp.Name()
	err = tmp.Chmod(f.Perm)
	if err == nil {
		_, err = tmp.Write(f.Data)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return "", fmt.Errorf("unable to write %s: %w", f.Path, err)
	}
	return name, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("unable to open %s to sync it: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("unable to sync %s: %w", dir, err)
	}
	return nil
}
