package broker

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/keybroker/keybroker/broker/issue"
	"github.com/keybroker/keybroker/broker/receiptchain"
	"github.com/keybroker/keybroker/broker/store"
)

// checkpointer signs the head of the store's receipt chain: once
// cfg.Every receipts were added since the last checkpoint, or
// cfg.Interval after it when receipts were added at all; and on demand
// (Stop, an export). Checking costs one read of the head per tick.
type checkpointer struct {
	due    *receiptchain.Checkpointer
	signer *receiptchain.Signer
	cfg    ReceiptCheckpointsConfig
	log    *slog.Logger
}

func newCheckpointer(st store.Checkpoints, signer *receiptchain.Signer, cfg ReceiptCheckpointsConfig, log *slog.Logger) *checkpointer {
	cfg = cfg.orDefaults()
	return &checkpointer{due: receiptchain.NewCheckpointer(st, signer, cfg.Every, cfg.Interval), signer: signer, cfg: cfg, log: log}
}

// checkpointTick is the longest between two looks at the head.
const checkpointTick = time.Second

func (c *checkpointer) run(stop <-chan struct{}) {
	t := time.NewTicker(min(checkpointTick, c.cfg.Interval))
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Interval)
			if _, err := c.sign(ctx, now, false); err != nil {
				c.log.Error("unable to sign a receipt checkpoint", "error", err)
			}
			cancel()
		}
	}
}

// sign signs the head when it is due (or, with force, when it moved
// since the last checkpoint) and returns the head the newest checkpoint
// covers.
func (c *checkpointer) sign(ctx context.Context, now time.Time, force bool) (store.ChainHead, error) {
	head, signed, err := c.due.Sign(ctx, now, force)
	if signed {
		c.log.Debug("signed receipt checkpoint", "seq", head.Seq)
	}
	return head, err
}

// checkpointHead signs the chain head as the broker stops, so that a
// store read while no broker runs verifies to its last receipt.
func (r *Running) checkpointHead() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := r.checkpoints.sign(ctx, time.Now(), true); err != nil {
		r.checkpoints.log.Error("unable to sign the receipt chain's head on stop", "error", err)
	}
}

// handleCheckpoints serves the checkpoints on the admin socket:
//
//	GET  /v1/checkpoints?after=SEQ&limit=N   checkpoints above SEQ, lowest first
//	POST /v1/checkpoints                     sign the chain head now; answers the ChainHead covered
func handleCheckpoints(mux *http.ServeMux, st store.Backend, c *checkpointer) {
	mux.HandleFunc("GET /v1/checkpoints", func(w http.ResponseWriter, r *http.Request) {
		after, _ := strconv.ParseUint(r.URL.Query().Get("after"), 10, 64)
		limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
		cps, err := st.ListCheckpoints(r.Context(), after, limit)
		if err != nil {
			http.Error(w, "unable to list checkpoints", http.StatusInternalServerError)
			return
		}
		writeJSON(w, cps)
	})
	if c == nil {
		return
	}
	mux.HandleFunc("POST /v1/checkpoints", func(w http.ResponseWriter, r *http.Request) {
		head, err := c.sign(r.Context(), time.Now(), true)
		if err != nil {
			http.Error(w, "unable to sign a checkpoint", http.StatusInternalServerError)
			return
		}
		writeJSON(w, head)
	})
}

// ExportChain exports the receipt chain of the broker cfg configures for
// "keybroker receipts verify": the receipts opts select, newest first, to
// emitReceipt, then every checkpoint to emitCheckpoint. A running broker
// (bolt: through its admin socket) or, for etcd, cfg's checkpoint key
// first signs the chain head; receipts chained after the newest
// checkpoint are left out, so that a busy store exports a chain its
// checkpoints cover. It returns how many receipts it exported.
func ExportChain(ctx context.Context, cfg *Config, opts ExportOpts, emitReceipt func(store.Receipt) error, emitCheckpoint func(store.Checkpoint) error) (int, error) {
	if err := sealHead(ctx, cfg); err != nil {
		return 0, err
	}
	var cps []store.Checkpoint
	for after := uint64(0); ; {
		page, err := listCheckpoints(ctx, cfg, after)
		if err != nil {
			return 0, err
		}
		cps = append(cps, page...)
		if len(page) < store.MaxListLimit {
			break
		}
		after = page[len(page)-1].Seq
	}
	var through uint64
	for _, c := range cps {
		through = max(through, c.Seq)
	}
	n, err := ExportReceipts(ctx, cfg, opts, func(r store.Receipt) error {
		if through > 0 && r.Seq > through {
			return nil
		}
		return emitReceipt(r)
	})
	if err != nil {
		return n, err
	}
	for _, c := range cps {
		if err := emitCheckpoint(c); err != nil {
			return n, err
		}
	}
	return n, nil
}

// sealHead has the chain head signed: by the running broker, or for etcd
// with cfg's checkpoint key (when this process can read it). A stopped
// bolt broker signed its head when it stopped.
func sealHead(ctx context.Context, cfg *Config) error {
	if sock, ok := liveSocket(cfg); ok {
		var head store.ChainHead
		return postViaSocket(ctx, sock, "/v1/checkpoints", struct{}{}, &head)
	}
	if cfg.Store.Kind != StoreEtcd {
		return nil
	}
	key, err := issue.LoadSigningKey(cfg.CheckpointKeyPath())
	if err != nil {
		return nil // no key this process may read: export what is signed
	}
	signer, err := receiptchain.NewSigner(key)
	if err != nil {
		return err
	}
	st, err := OpenStore(ctx, cfg, StoreOpts{})
	if err != nil {
		return err
	}
	defer st.Close()
	c := newCheckpointer(st, signer, cfg.ReceiptCheckpoints, slog.New(slog.DiscardHandler))
	_, err = c.sign(ctx, time.Now(), true)
	return err
}

// listCheckpoints returns a page of checkpoints above after, as
// ListReceipts reads receipts.
func listCheckpoints(ctx context.Context, cfg *Config, after uint64) ([]store.Checkpoint, error) {
	var cps []store.Checkpoint
	path := fmt.Sprintf("/v1/checkpoints?after=%d&limit=%d", after, store.MaxListLimit)
	err := query(ctx, cfg, path, &cps, func(st store.Backend) (err error) {
		cps, err = st.ListCheckpoints(ctx, after, store.MaxListLimit)
		return err
	})
	return cps, err
}

// VerifyChain verifies the receipt chain of the broker cfg configures, as
// ExportChain exports it, under keys.
func VerifyChain(ctx context.Context, cfg *Config, keys receiptchain.Keys) (receiptchain.Report, error) {
	v := receiptchain.NewVerifier(keys)
	_, err := ExportChain(ctx, cfg, ExportOpts{}, func(r store.Receipt) error {
		b, err := store.EncodeReceipt(&r)
		if err != nil {
			return err
		}
		v.AddReceipt(b)
		return nil
	}, func(c store.Checkpoint) error {
		v.AddCheckpoint(c)
		return nil
	})
	if err != nil {
		return receiptchain.Report{}, err
	}
	return v.Report(), nil
}
