package broker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/keybroker/keybroker/broker/verify"
)

// certExts are the file name extensions read from an ek_ca directory.
var certExts = []string{".pem", ".crt", ".cer"}

// readCertSources reads the files of an ek_ca list for verify.ParseOpts:
// each entry is a file or a directory (its *.pem, *.crt and *.cer files,
// not recursing). An entry that cannot be read gives a source with its
// error; each source is named as written in the configuration (joined with
// the directory entry's name).
func readCertSources(entries []string, abs func(string) string) []verify.CertSource {
	var out []verify.CertSource
	for i, entry := range entries {
		bad := func(err error) { out = append(out, verify.CertSource{Entry: i, Name: entry, Err: err}) }
		if entry == "" {
			bad(errors.New("an entry cannot be empty"))
			continue
		}
		fi, err := os.Stat(abs(entry))
		if err != nil {
			bad(fmt.Errorf("unable to read %s: %w", entry, err))
			continue
		}
		if !fi.IsDir() {
			out = append(out, readCertFile(i, entry, abs(entry)))
			continue
		}
		des, err := os.ReadDir(abs(entry))
		if err != nil {
			bad(fmt.Errorf("unable to read %s: %w", entry, err))
			continue
		}
		n := 0
		for _, de := range des {
			if !hasCertExt(de.Name()) {
				continue
			}
			name, path := filepath.Join(entry, de.Name()), filepath.Join(abs(entry), de.Name())
			if fi, err := os.Stat(path); err == nil && fi.IsDir() {
				continue
			}
			n++
			out = append(out, readCertFile(i, name, path))
		}
		if n == 0 {
			bad(fmt.Errorf("directory %s holds no *.pem, *.crt or *.cer file", entry))
		}
	}
	return out
}

func hasCertExt(name string) bool {
	ext := strings.ToLower(filepath.Ext(name))
	for _, e := range certExts {
		if ext == e {
			return true
		}
	}
	return false
}

// readCertFile reads one certificate file of entry i; name labels it.
func readCertFile(i int, name, path string) verify.CertSource {
	data, err := os.ReadFile(path)
	if err != nil {
		return verify.CertSource{Entry: i, Name: name, Err: fmt.Errorf("unable to read %s: %w", name, err)}
	}
	return verify.CertSource{Entry: i, Name: name, Data: data}
}
