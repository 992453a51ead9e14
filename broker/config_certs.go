package broker

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/keybroker/keybroker/broker/verify"
)

// certExts are the file name extensions read from an ek_ca directory.
var certExts = []string{".pem", ".crt", ".cer"}

// loadPool reads the certificates of an ek_ca list into a pool: each entry
// is a file or a directory (its *.pem, *.crt and *.cer files, not
// recursing). It reports every problem to bad with the index of its entry,
// each naming its file as written in the configuration (joined with the
// directory entry's name).
func loadPool(entries []string, abs func(string) string, bad func(i int, err error)) *x509.CertPool {
	pool := x509.NewCertPool()
	for i, entry := range entries {
		var errs []error
		if entry == "" {
			bad(i, errors.New("an entry cannot be empty"))
			continue
		}
		fi, err := os.Stat(abs(entry))
		if err != nil {
			bad(i, fmt.Errorf("unable to read %s: %w", entry, err))
			continue
		}
		if !fi.IsDir() {
			for _, err := range addCertFile(pool, entry, abs(entry)) {
				bad(i, err)
			}
			continue
		}
		des, err := os.ReadDir(abs(entry))
		if err != nil {
			bad(i, fmt.Errorf("unable to read %s: %w", entry, err))
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
			errs = append(errs, addCertFile(pool, name, path)...)
		}
		if n == 0 {
			errs = append(errs, fmt.Errorf("directory %s holds no *.pem, *.crt or *.cer file", entry))
		}
		for _, err := range errs {
			bad(i, err)
		}
	}
	return pool
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

// addCertFile adds the certificates of one file to pool: PEM CERTIFICATE
// blocks (other block types are skipped), or DER. name labels errors.
func addCertFile(pool *x509.CertPool, name, path string) []error {
	data, err := os.ReadFile(path)
	if err != nil {
		return []error{fmt.Errorf("unable to read %s: %w", name, err)}
	}
	certs, err := verify.ParseCertificates(data)
	if err != nil {
		return []error{fmt.Errorf("%s: %w", name, err)}
	}
	for _, c := range certs {
		pool.AddCert(c)
	}
	return nil
}
