package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/keybroker/keybroker/broker/store"
)

// AdminSocket is the unix socket, inside the data directory, on which a
// running broker answers operator queries (mode 0600; the directory is 0700).
// The store file is locked while the broker runs, so tools read through here.
const AdminSocket = "admin.sock"

// serveAdmin listens on the admin socket and serves, as JSON:
//
//	GET /v1/receipts?limit=N&ek=HASH&before=ID   receipts, newest first
//	GET /v1/nodes?limit=N&after=HASH   node records (with their last evidence), by EK hash
//	GET /v1/nodes/{ekhash}             one node record, by its EK hash or a unique
//	                                   prefix of at least MinEKHashPrefix hex digits;
//	                                   400 if malformed, 404 if unknown, 409 if ambiguous
//
// and the node status reads and operator actions of handleOperator, the
// PCR-policy approvals of handlePCRApprovals, the
// receipt checkpoints of handleCheckpoints (cp nil: no signing), and
// the Go profiles of net/http/pprof under /debug/pprof/ (on this socket
// only: the metrics listener does not serve them).
func serveAdmin(path string, st store.Backend, cp *checkpointer) (*http.Server, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another broker is serving %s", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("unable to remove stale admin socket: %w", err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("unable to listen on the admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		lis.Close()
		return nil, fmt.Errorf("unable to restrict the admin socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/receipts", func(w http.ResponseWriter, r *http.Request) {
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		q := r.URL.Query()
		rs, err := st.ListReceipts(r.Context(), store.ListOpts{Limit: limit, EKHash: q.Get("ek"), Before: q.Get("before")})
		if err != nil {
			http.Error(w, "unable to list receipts", http.StatusInternalServerError)
			return
		}
		writeJSON(w, rs)
	})
	mux.HandleFunc("GET /v1/nodes", func(w http.ResponseWriter, r *http.Request) {
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		ns, err := st.ListNodes(r.Context(), store.ListNodesOpts{Limit: limit, After: r.URL.Query().Get("after")})
		if err != nil {
			http.Error(w, "unable to list node records", http.StatusInternalServerError)
			return
		}
		writeJSON(w, ns)
	})
	mux.HandleFunc("GET /v1/nodes/{ekhash}", func(w http.ResponseWriter, r *http.Request) {
		n, err := findNode(r.Context(), st, r.PathValue("ekhash"))
		switch {
		case errors.Is(err, store.ErrNotFound):
			http.Error(w, "no record of this node", http.StatusNotFound)
			return
		case errors.Is(err, ErrInvalidEKHash):
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		case errors.Is(err, ErrAmbiguousEKHash):
			http.Error(w, err.Error(), http.StatusConflict)
			return
		case err != nil:
			http.Error(w, "unable to get the node record", http.StatusInternalServerError)
			return
		}
		writeJSON(w, n)
	})
	handleOperator(mux, st)
	handlePCRApprovals(mux, st)
	handleCheckpoints(mux, st, cp)
	handlePprof(mux)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(lis)
	return srv, nil
}

// handlePprof serves net/http/pprof's handlers on mux.
func handlePprof(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// ListReceipts returns receipts from the store of the broker cfg
// configures: through its admin socket while it runs, or from the store
// when it is stopped (and always from an etcd store).
func ListReceipts(ctx context.Context, cfg *Config, opts store.ListOpts) ([]store.Receipt, error) {
	var rs []store.Receipt
	q := url.Values{"limit": {strconv.Itoa(opts.Limit)}, "ek": {opts.EKHash}, "before": {opts.Before}}
	err := query(ctx, cfg, "/v1/receipts?"+q.Encode(), &rs, func(st store.Backend) (err error) {
		rs, err = st.ListReceipts(ctx, opts)
		return err
	})
	return rs, err
}

// ListNodes returns node records, each with the node's last verified
// evidence, from the store of the broker cfg configures, as ListReceipts
// does.
func ListNodes(ctx context.Context, cfg *Config, opts store.ListNodesOpts) ([]store.NodeRecord, error) {
	var ns []store.NodeRecord
	q := url.Values{"limit": {strconv.Itoa(opts.Limit)}, "after": {opts.After}}
	err := query(ctx, cfg, "/v1/nodes?"+q.Encode(), &ns, func(st store.Backend) (err error) {
		ns, err = st.ListNodes(ctx, opts)
		return err
	})
	return ns, err
}

// GetNode returns the record of the node whose EK hash is ekHash, or starts
// with ekHash (at least MinEKHashPrefix hex digits, either case), as
// ListNodes does. The error wraps ErrInvalidEKHash for anything else,
// ErrAmbiguousEKHash for a prefix of several nodes' hashes, and
// store.ErrNotFound if no node matches.
func GetNode(ctx context.Context, cfg *Config, ekHash string) (store.NodeRecord, error) {
	var n store.NodeRecord
	ref, err := parseEKHashRef(ekHash)
	if err != nil {
		return n, err
	}
	err = query(ctx, cfg, "/v1/nodes/"+url.PathEscape(ref), &n, func(st store.Backend) (err error) {
		n, err = findNode(ctx, st, ref)
		return err
	})
	return n, err
}

// query asks the running broker for path over its admin socket and decodes
// the answer into out; when no broker runs it opens the store read-only
// and calls fromStore instead. An etcd store, which every replica shares
// while it runs, is always read directly. Only cfg's DataDir and Store are
// used.
func query(ctx context.Context, cfg *Config, path string, out any, fromStore func(store.Backend) error) error {
	sock := cfg.DataDir + string(os.PathSeparator) + AdminSocket
	if cfg.Store.Kind != StoreEtcd {
		if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
			c.Close()
			return queryViaSocket(ctx, sock, path, out)
		}
	}
	st, err := OpenStore(ctx, cfg, StoreOpts{ReadOnly: true, LockTimeout: 2 * time.Second})
	if err != nil {
		return err
	}
	defer st.Close()
	return fromStore(st)
}

func queryViaSocket(ctx context.Context, sock, path string, out any) error {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://broker"+path, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("unable to query the running broker: %w", err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return fmt.Errorf("the running broker answered %s: %w", resp.Status, store.ErrNotFound)
	case http.StatusBadRequest:
		return &answerError{msg: readAnswer(resp), is: ErrInvalidEKHash}
	case http.StatusConflict:
		return &answerError{msg: readAnswer(resp), is: ErrAmbiguousEKHash}
	default:
		return fmt.Errorf("the running broker answered %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("unable to decode the broker's answer: %w", err)
	}
	return nil
}

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
func findNode(ctx context.Context, st NodeReader, ref string) (store.NodeRecord, error) {
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
