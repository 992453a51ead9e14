package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/keybroker/keybroker/broker/store"
)

// AdminSocket is the unix socket, inside the data directory, on which a
// running broker answers operator queries (mode 0600; the directory is 0700).
// The store file is locked while the broker runs, so tools read through here.
const AdminSocket = "admin.sock"

// serveAdmin listens on the admin socket and serves GET /v1/receipts.
func serveAdmin(path string, st store.Store) (*http.Server, error) {
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
		rs, err := st.ListReceipts(r.Context(), store.ListOpts{Limit: limit, EKHash: r.URL.Query().Get("ek")})
		if err != nil {
			http.Error(w, "unable to list receipts", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(rs)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(lis)
	return srv, nil
}

// ListReceipts returns receipts from the broker whose data directory is
// dataDir: through its admin socket while it runs, or from the store file
// when it is stopped.
func ListReceipts(ctx context.Context, dataDir string, opts store.ListOpts) ([]store.Receipt, error) {
	sock := dataDir + string(os.PathSeparator) + AdminSocket
	if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
		c.Close()
		return listViaSocket(ctx, sock, opts)
	}
	st, err := store.OpenBolt(dataDir+string(os.PathSeparator)+StoreFile, store.BoltOpts{ReadOnly: true, Timeout: 2 * time.Second})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	return st.ListReceipts(ctx, opts)
}

func listViaSocket(ctx context.Context, sock string, opts store.ListOpts) ([]store.Receipt, error) {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	q := url.Values{"limit": {strconv.Itoa(opts.Limit)}, "ek": {opts.EKHash}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://broker/v1/receipts?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("unable to query the running broker: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the running broker answered %s", resp.Status)
	}
	var rs []store.Receipt
	if err := json.NewDecoder(resp.Body).Decode(&rs); err != nil {
		return nil, fmt.Errorf("unable to decode receipts: %w", err)
	}
	return rs, nil
}
