package receiptchain

import (
	"bytes"
	"cmp"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/keybroker/keybroker/broker/store"
)

// MaxLine bounds one exported line (a receipt or a checkpoint).
const MaxLine = 1 << 20

// checkpointLine is how an export writes a checkpoint: one JSON line
// {"checkpoint":{...}}, apart from receipts, which never have that field.
type checkpointLine struct {
	Checkpoint *store.Checkpoint `json:"checkpoint"`
}

var checkpointPrefix = []byte(`{"checkpoint":`)

// CheckpointLine is c as an export line (without its newline).
func CheckpointLine(c store.Checkpoint) ([]byte, error) {
	return json.Marshal(checkpointLine{&c})
}

// Problem is one thing wrong with a chain. Seq and ReceiptID name the
// receipt it is about (Seq 0 and an ID for a receipt without chain
// fields; both empty for a checkpoint's own problem).
type Problem struct {
	Seq       uint64
	ReceiptID string
	Message   string
}

func (p Problem) String() string {
	switch {
	case p.Seq != 0 && p.ReceiptID != "":
		return fmt.Sprintf("receipt seq %d (%s): %s", p.Seq, p.ReceiptID, p.Message)
	case p.Seq != 0:
		return fmt.Sprintf("receipt seq %d: %s", p.Seq, p.Message)
	case p.ReceiptID != "":
		return fmt.Sprintf("receipt %s: %s", p.ReceiptID, p.Message)
	}
	return p.Message
}

// Report is what Verifier found.
type Report struct {
	// Receipts counts the chained receipts, First and Last their lowest
	// and highest Seq.
	Receipts    int
	First, Last uint64
	// Unchained counts receipts written before chaining (no Seq): they
	// are not covered by the chain (docs/receipts.md).
	Unchained int
	// Checkpoints counts checkpoints whose signature verified; Covered is
	// the highest Seq one of them signs (0: none).
	Checkpoints int
	Covered     uint64
	// Problems, in chain order: the first names the first bad receipt.
	Problems []Problem
}

// OK reports whether the chain verified.
func (r Report) OK() bool { return len(r.Problems) == 0 }

// link is one chained receipt as the verifier keeps it.
type link struct {
	seq        uint64
	id         string
	prev, hash string
}

// Verifier checks a chain from its receipts and checkpoints, given in any
// order. It keeps about 200 bytes per receipt.
type Verifier struct {
	keys        Keys
	links       []link
	unchained   []string
	checkpoints []store.Checkpoint
	problems    []Problem
}

// NewVerifier returns a Verifier accepting checkpoints signed by keys.
func NewVerifier(keys Keys) *Verifier { return &Verifier{keys: keys} }

// Add adds one export line: a receipt in its canonical encoding (hashed as
// given), or a checkpoint line. Surrounding white space is ignored.
func (v *Verifier) Add(line []byte) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return
	}
	if bytes.HasPrefix(line, checkpointPrefix) {
		var cl checkpointLine
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&cl); err != nil || cl.Checkpoint == nil {
			v.problems = append(v.problems, Problem{Message: fmt.Sprintf("a checkpoint line does not decode: %v", err)})
			return
		}
		v.AddCheckpoint(*cl.Checkpoint)
		return
	}
	v.AddReceipt(line)
}

// AddReceipt adds a receipt in its canonical encoding (store.EncodeReceipt).
func (v *Verifier) AddReceipt(encoded []byte) {
	var r store.Receipt
	if err := json.Unmarshal(encoded, &r); err != nil {
		v.problems = append(v.problems, Problem{Message: fmt.Sprintf("a receipt line does not decode: %v", err)})
		return
	}
	if r.Seq == 0 {
		v.unchained = append(v.unchained, r.ID)
		return
	}
	v.links = append(v.links, link{seq: r.Seq, id: r.ID, prev: r.Prev, hash: store.ReceiptHash(encoded)})
}

// AddCheckpoint adds a checkpoint.
func (v *Verifier) AddCheckpoint(c store.Checkpoint) { v.checkpoints = append(v.checkpoints, c) }

// Report checks the chain.
func (v *Verifier) Report() Report {
	rep := Report{Receipts: len(v.links), Unchained: len(v.unchained)}
	problems := slices.Clone(v.problems)
	add := func(seq uint64, id, format string, args ...any) {
		problems = append(problems, Problem{Seq: seq, ReceiptID: id, Message: fmt.Sprintf(format, args...)})
	}
	links := slices.Clone(v.links)
	slices.SortStableFunc(links, func(a, b link) int { return cmp.Compare(a.seq, b.seq) })

	// Checkpoints: a bad signature is a problem; good ones vouch for the
	// hash of the receipt they name.
	signed := map[uint64]string{}
	for _, c := range v.checkpoints {
		if err := v.keys.VerifyCheckpoint(c); err != nil {
			add(0, "", "checkpoint of seq %d refused: %v", c.Seq, err)
			continue
		}
		if h, ok := signed[c.Seq]; ok && h != c.Head {
			add(c.Seq, "", "two signed checkpoints of this seq name different hashes")
		}
		signed[c.Seq] = c.Head
		rep.Checkpoints++
		rep.Covered = max(rep.Covered, c.Seq)
	}
	if len(links) == 0 {
		// Retention deleted every receipt (it keeps the checkpoint of the
		// last), or none was chained: nothing to check.
		return finish(rep, problems)
	}
	rep.First, rep.Last = links[0].seq, links[len(links)-1].seq

	// broken[i] says the link after links[i] is broken: the next receipt's
	// prev, or a signed checkpoint of links[i]'s seq, names another hash.
	// broken[-1], start, is the link into the first receipt.
	first := links[0]
	var start bool
	switch {
	case first.seq == 1:
		start = !equal(first.prev, store.GenesisHash)
	default:
		h, ok := signed[first.seq-1]
		if !ok {
			add(first.seq, first.id, "the chain starts here but no signed checkpoint of seq %d anchors it: receipts before it are missing", first.seq-1)
		}
		start = ok && !equal(h, first.prev)
	}
	broken := make([]bool, len(links))
	for i, l := range links {
		if h, ok := signed[l.seq]; ok && !equal(h, l.hash) {
			broken[i] = true
		}
		if i+1 == len(links) {
			break
		}
		n := links[i+1]
		switch {
		case n.seq == l.seq:
			add(n.seq, n.id, "seq is also held by receipt %s", l.id)
		case n.seq != l.seq+1:
			add(l.seq+1, "", "missing: receipts seq %d to %d are not there (between %s and %s)", l.seq+1, n.seq-1, l.id, n.id)
		case !equal(n.prev, l.hash):
			broken[i] = true
		}
	}
	// A run of broken links, from the one after links[a] (a = -1: the link
	// into the first receipt) to the one after links[b], is what changed
	// receipts leave: a receipt whose bytes changed breaks the link after
	// it (one link: links[a] changed); two receipts changed, or swapped
	// with their prevs fixed up, break two (links[a] is the first changed,
	// unless a checkpoint vouches for its hash); two swapped receipts
	// whose prevs were left break three or more (links[a+1] is the first).
	for a := -1; a < len(links); a++ {
		if !(a == -1 && start || a >= 0 && broken[a]) {
			continue
		}
		b := a
		for b+1 < len(links) && broken[b+1] {
			b++
		}
		from := a
		if h, ok := signed[links[max(a, 0)].seq]; a == -1 || b-a >= 2 || b > a && ok && equal(h, links[a].hash) {
			from = a + 1
		}
		bad := links[from]
		if from >= b {
			add(bad.seq, bad.id, "was changed: its hash or prev does not match what the receipts or signed checkpoints around it name")
		} else {
			add(bad.seq, bad.id, "was changed, or receipts after it up to seq %d were: they no longer link to each other", links[b].seq)
		}
		a = b
	}
	last := links[len(links)-1]
	switch {
	case rep.Covered > last.seq:
		add(last.seq+1, "", "missing: a signed checkpoint covers seq %d, but the chain ends at seq %d", rep.Covered, last.seq)
	case rep.Covered < last.seq:
		add(max(rep.Covered+1, first.seq), "", "receipts up to seq %d are not covered by a signed checkpoint (the newest covers seq %d)", last.seq, rep.Covered)
	}
	// Receipts without chain fields are the prefix written before
	// chaining; one made after the chain began was slipped in.
	slices.Sort(v.unchained)
	minID := slices.MinFunc(links, func(a, b link) int { return cmp.Compare(a.id, b.id) }).id
	for _, id := range v.unchained {
		if id > minID {
			add(0, id, "has no chain fields but was made after the chain began (at %s)", minID)
			break
		}
	}
	return finish(rep, problems)
}

// finish sorts problems in chain order (those without a seq last).
func finish(rep Report, problems []Problem) Report {
	slices.SortStableFunc(problems, func(a, b Problem) int {
		switch {
		case a.Seq == 0 && b.Seq != 0:
			return 1
		case a.Seq != 0 && b.Seq == 0:
			return -1
		}
		return cmp.Compare(a.Seq, b.Seq)
	})
	rep.Problems = problems
	return rep
}

// equal compares two hashes in constant time.
func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }
