package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/keybroker/keybroker/broker/store"
)

// MinEKHashPrefix is the fewest hex digits of an EK hash by which an
// operator may name a node (GetNode, GET /v1/nodes/{ekhash}).
const MinEKHashPrefix = 8

var (
	// ErrInvalidEKHash is returned for a node named by anything but 8 to 64
	// hex digits.
	ErrInvalidEKHash = errors.New("invalid EK hash")
	// ErrAmbiguousEKHash is returned for an EK hash prefix that more than
	// one node's hash starts with.
	ErrAmbiguousEKHash = errors.New("ambiguous EK hash prefix")
)

// ekHashLen is the length of an EK hash: hex SHA-256.
const ekHashLen = 64

// parseEKHashRef checks that ref names a node as an operator may: an EK
// hash or a prefix of one, MinEKHashPrefix to 64 hex digits. It returns
// ref in lowercase, as EK hashes are written.
func parseEKHashRef(ref string) (string, error) {
	switch {
	case ref == "":
		return "", fmt.Errorf("%w: name a node by its EK hash or its first %d hex digits or more", ErrInvalidEKHash, MinEKHashPrefix)
	case len(ref) > ekHashLen:
		return "", fmt.Errorf("%w: longer than %d hex digits", ErrInvalidEKHash, ekHashLen)
	}
	for i := 0; i < len(ref); i++ {
		if c := ref[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return "", fmt.Errorf("%w: %q is not hex digits", ErrInvalidEKHash, ref)
		}
	}
	if len(ref) < MinEKHashPrefix {
		return "", fmt.Errorf("%w: prefix %s is shorter than %d hex digits", ErrInvalidEKHash, ref, MinEKHashPrefix)
	}
	return strings.ToLower(ref), nil
}

// findNode returns the record of the one node whose EK hash is ref or
// starts with it. Keys are EK hashes in order, so the nodes a prefix
// matches are the first ones after it: two are enough to tell a unique
// prefix from an ambiguous one.
func findNode(ctx context.Context, st store.Store, ref string) (store.NodeRecord, error) {
	ref, err := parseEKHashRef(ref)
	if err != nil {
		return store.NodeRecord{}, err
	}
	if len(ref) == ekHashLen {
		return st.GetNode(ctx, ref)
	}
	ns, err := st.ListNodes(ctx, store.ListNodesOpts{After: ref, Limit: 2})
	if err != nil {
		return store.NodeRecord{}, err
	}
	var match []string
	for _, n := range ns {
		if strings.HasPrefix(n.EKHash, ref) {
			match = append(match, n.EKHash)
		}
	}
	switch len(match) {
	case 0:
		return store.NodeRecord{}, fmt.Errorf("unable to get node record: no EK hash starts with %s: %w", ref, store.ErrNotFound)
	case 1:
		return ns[0], nil
	}
	return store.NodeRecord{}, fmt.Errorf("%w %s: the EK hashes of more than one node start with it (%s, %s); give more digits",
		ErrAmbiguousEKHash, ref, match[0], match[1])
}

// answerError is an error the running broker answered with: its text, and
// the error it is, for errors.Is.
type answerError struct {
	msg string
	is  error
}

func (e *answerError) Error() string { return e.msg }
func (e *answerError) Unwrap() error { return e.is }

// readAnswer reads the text of an error answer, bounded.
func readAnswer(resp *http.Response) string {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return strings.TrimSpace(string(b))
}
