package main

import (
	"io"
	"sync"

	"github.com/keybroker/keybroker/agent"
)

// tpmSession opens the TPM for each attestation, each signature by a
// tpm_resident node SVID's key and each identity log extend, and closes it
// after, so that a TPM serving one client at a time (swtpm over TCP) is free
// in between; the embedded simulator, whose state a reopen would lose, stays
// open. One user at a time: the renewal loop, the Workload API's handshakes
// with the broker and its identity records take turns, and an attestation
// holds the TPM from the identity log it reads to its quotes, so that no
// handout is extended in between.
type tpmSession struct {
	spec string
	opts agent.NodeOpts

	mu   sync.Mutex
	rw   io.ReadWriteCloser // held open: simulator only
	node *agent.Node        // held open: simulator only
}

// open returns the TPM and the function that releases it.
func (t *tpmSession) open() (io.ReadWriter, func(), error) {
	if t.rw != nil {
		return t.rw, func() {}, nil
	}
	rw, err := agent.OpenTPM(t.spec)
	if err != nil {
		return nil, nil, &agent.StepError{Step: "tpm", Err: err}
	}
	if t.spec == "simulator" {
		t.rw = rw
		return rw, func() {}, nil
	}
	return rw, func() { rw.Close() }, nil
}

// with runs fn with the node's keys loaded.
func (t *tpmSession) with(fn func(*agent.Node) error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.node != nil {
		return fn(t.node)
	}
	rw, release, err := t.open()
	if err != nil {
		return err
	}
	defer release()
	node, err := agent.NewNode(rw, t.opts)
	if err != nil {
		return &agent.StepError{Step: "tpm", Err: err}
	}
	if t.rw != nil {
		t.node = node
		return fn(node)
	}
	defer node.Close()
	return fn(node)
}

// withRW runs fn with the TPM alone, no keys loaded: a signature
// (agent.NodeOpts.TPM) or an identity log extend.
func (t *tpmSession) withRW(fn func(io.ReadWriter) error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	rw, release, err := t.open()
	if err != nil {
		return err
	}
	defer release()
	return fn(rw)
}

func (t *tpmSession) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.node != nil {
		t.node.Close()
	}
	if t.rw != nil {
		t.rw.Close()
	}
}
