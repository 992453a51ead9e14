package verify

import (
	"container/list"
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"sync"

	"github.com/google/go-tpm/tpm2"
)

// A fleet boots a few images: most nodes send one of a few event logs,
// with the same PCR values. Checking a log (parsing, replaying it in every
// quoted bank, interpreting it with go-eventlog) costs about a millisecond
// for a 60 KB log, more than the rest of an attestation's verification;
// its outcome depends only on the log and the quoted PCR values. So
// WithEventLog keeps the facts of the logs it accepted recently, keyed by
// the SHA-256 of the log and of every quoted PCR value, and a node whose
// log and PCRs are one of those gets the same facts without the work.

// eventLogCacheSize bounds the logs remembered: a few boot images, each
// in a few PCR states (firmware updates, Secure Boot database changes).
const eventLogCacheSize = 64

var eventLogCache = newFactsCache(eventLogCacheSize)

// factsKey is what an event log's check depends on.
type factsKey [sha256.Size]byte

// eventLogKey digests raw and the quoted PCR values of every bank.
func eventLogKey(raw []byte, pcrs map[tpm2.TPMAlgID]map[uint32][]byte) factsKey {
	h := sha256.New()
	h.Write([]byte("keybroker event log check v1"))
	h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(raw))))
	h.Write(raw)
	banks := make([]tpm2.TPMAlgID, 0, len(pcrs))
	for b := range pcrs {
		banks = append(banks, b)
	}
	slices.Sort(banks)
	for _, b := range banks {
		idxs := make([]uint32, 0, len(pcrs[b]))
		for i := range pcrs[b] {
			idxs = append(idxs, i)
		}
		slices.Sort(idxs)
		h.Write(binary.BigEndian.AppendUint16(nil, uint16(b)))
		for _, i := range idxs {
			v := pcrs[b][i]
			h.Write(binary.BigEndian.AppendUint32(nil, i))
			h.Write(binary.BigEndian.AppendUint16(nil, uint16(len(v))))
			h.Write(v)
		}
	}
	var k factsKey
	h.Sum(k[:0])
	return k
}

// factsCache is a bounded least-recently-used map of accepted logs' facts.
// The facts it holds are never changed: Verified.EventLog hands out copies.
type factsCache struct {
	mu    sync.Mutex
	max   int
	order *list.List // of factsKey, most recent first
	items map[factsKey]*factsEntry
}

type factsEntry struct {
	facts *EventLogFacts
	elem  *list.Element
}

func newFactsCache(max int) *factsCache {
	return &factsCache{max: max, order: list.New(), items: map[factsKey]*factsEntry{}}
}

func (c *factsCache) get(k factsKey) (*EventLogFacts, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[k]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(e.elem)
	return e.facts, true
}

func (c *factsCache) put(k factsKey, f *EventLogFacts) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok {
		c.order.MoveToFront(e.elem)
		return
	}
	c.items[k] = &factsEntry{facts: f, elem: c.order.PushFront(k)}
	for len(c.items) > c.max {
		last := c.order.Back()
		delete(c.items, last.Value.(factsKey))
		c.order.Remove(last)
	}
}

func (c *factsCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.items)
}
