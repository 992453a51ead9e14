//go:build !linux

package workload

import (
	"errors"
	"os"
)

type fileKey struct{}

func keyOf(os.FileInfo) (fileKey, bool) { return fileKey{}, false }

var errNotLinux = errors.New("workload attestation needs Linux")

func onLocalFilesystem(*os.File) (bool, string, error) { return false, "", errNotLinux }

func openedPath(*os.File) (string, error) { return "", errNotLinux }

func openBundleFile(string, string) (*os.File, error) { return nil, errNotLinux }
