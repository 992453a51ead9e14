package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/keybroker/keybroker/broker/store"
)

// maxActionBody bounds the body of a POST to the admin socket.
const maxActionBody = 8 << 10

// handleOperator adds the node status reads and the operator actions to the
// admin socket's mux:
//
//	GET  /v1/node-status?limit=N&after=HASH&evidence=BOOL   NodeStatus list
//	GET  /v1/node-status/{ekhash}?evidence=BOOL             one NodeStatus
//	POST /v1/nodes/{ekhash}/forget   body OperatorAction    the receipt written
//	POST /v1/nodes/{ekhash}/allow    body OperatorAction    the receipt written
//
// Errors: 400 malformed, 404 unknown node, 409 ambiguous prefix, 412 allow
// of a node not on the deny list. The socket is mode 0600: only the
// broker's user (and root) can use it, and the operator name in the body is
// what that user's command says.
func handleOperator(mux *http.ServeMux, st store.Backend) {
	mux.HandleFunc("GET /v1/node-status", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		limit, _ := strconv.Atoi(q.Get("limit"))
		out, err := listNodeStatus(r.Context(), st, store.ListNodesOpts{Limit: limit, After: q.Get("after")}, q.Get("evidence") == "true")
		if err != nil {
			http.Error(w, "unable to list node records", http.StatusInternalServerError)
			return
		}
		writeJSON(w, out)
	})
	mux.HandleFunc("GET /v1/node-status/{ekhash}", func(w http.ResponseWriter, r *http.Request) {
		out, err := nodeStatus(r.Context(), st, r.PathValue("ekhash"), r.URL.Query().Get("evidence") == "true")
		if err != nil {
			writeNodeError(w, err, "unable to get the node record")
			return
		}
		writeJSON(w, out)
	})
	for _, verb := range []string{"forget", "allow"} {
		mux.HandleFunc("POST /v1/nodes/{ekhash}/"+verb, func(w http.ResponseWriter, r *http.Request) {
			var a OperatorAction
			if err := decodeStrict(http.MaxBytesReader(w, r.Body, maxActionBody), &a); err != nil {
				http.Error(w, fmt.Sprintf("%v: %v", ErrInvalidAction, err), http.StatusBadRequest)
				return
			}
			ref, err := parseEKHashRef(r.PathValue("ekhash"))
			if err != nil {
				writeNodeError(w, err, "")
				return
			}
			rec, err := operateOn(r.Context(), st, verb, ref, a)
			if err != nil {
				writeNodeError(w, err, "unable to "+verb+" the node")
				return
			}
			writeJSON(w, rec)
		})
	}
}

// writeNodeError answers err with its status, and internal errors with
// msg only.
func writeNodeError(w http.ResponseWriter, err error, msg string) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		http.Error(w, err.Error(), http.StatusNotFound)
	case errors.Is(err, ErrInvalidEKHash), errors.Is(err, ErrInvalidAction):
		http.Error(w, err.Error(), http.StatusBadRequest)
	case errors.Is(err, ErrAmbiguousEKHash):
		http.Error(w, err.Error(), http.StatusConflict)
	case errors.Is(err, ErrNotDenied):
		http.Error(w, err.Error(), http.StatusPreconditionFailed)
	default:
		http.Error(w, msg, http.StatusInternalServerError)
	}
}

// decodeStrict decodes exactly one JSON object with known fields only.
func decodeStrict(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

func isNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }

// liveSocket returns the admin socket of a running bolt broker, if one
// answers. An etcd store is always used directly.
func liveSocket(cfg *Config) (string, bool) {
	if cfg.Store.Kind == StoreEtcd {
		return "", false
	}
	sock := cfg.DataDir + string(os.PathSeparator) + AdminSocket
	c, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return "", false
	}
	c.Close()
	return sock, true
}

// postViaSocket posts body, as JSON, to the running broker and decodes its
// answer into out.
func postViaSocket(ctx context.Context, sock, path string, body, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://broker"+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := socketClient(sock).Do(req)
	if err != nil {
		return fmt.Errorf("unable to reach the running broker: %w", err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return &answerError{msg: readAnswer(resp), is: store.ErrNotFound}
	case http.StatusBadRequest:
		return &answerError{msg: readAnswer(resp), is: ErrInvalidAction}
	case http.StatusConflict:
		return &answerError{msg: readAnswer(resp), is: ErrAmbiguousEKHash}
	case http.StatusPreconditionFailed:
		return &answerError{msg: readAnswer(resp), is: ErrNotDenied}
	default:
		return fmt.Errorf("the running broker answered %s: %s", resp.Status, readAnswer(resp))
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxActionBody)).Decode(out); err != nil {
		return fmt.Errorf("unable to decode the broker's answer: %w", err)
	}
	return nil
}

func socketClient(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
}
