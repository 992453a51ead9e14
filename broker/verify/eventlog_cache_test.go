package verify_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/broker/verify"
	"github.com/keybroker/keybroker/internal/brokertest"
	"github.com/keybroker/keybroker/internal/evidencetest"
)

// A log accepted once is not checked again for a node quoting the same
// PCR values: the facts are the same. Anything else — another log, or the
// same log against other PCR values — is checked in full.
func TestEventLogCheckRemembered(t *testing.T) {
	n, log := bootedNode(t, evidencetest.BootOpts{SecureBoot: true, KernelCmdline: "ro quiet cache-test"})
	v := n.verified(t)
	raw := log.Bytes()
	if verify.EventLogCached(v, raw) {
		t.Fatal("a log never seen is remembered")
	}
	first, err := v.WithEventLog(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !verify.EventLogCached(v, raw) {
		t.Fatal("an accepted log is not remembered")
	}
	second, err := v.WithEventLog(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(first.EventLog(), second.EventLog()) {
		t.Fatalf("remembered facts differ:\n%+v\n%+v", second.EventLog(), first.EventLog())
	}
	// Facts handed out are copies: changing them changes nothing remembered.
	second.EventLog().BootApps[0] = "changed"
	if third, _ := v.WithEventLog(raw); third.EventLog().BootApps[0] == "changed" {
		t.Fatal("remembered facts were changed through a copy")
	}

	cmdline := log.Find(8, evidencetest.EvIPL, []byte("kernel_cmdline"))
	edited := log.EditEvent(cmdline[0], []byte("kernel_cmdline: init=/bin/sh")).Bytes()
	if _, err := v.WithEventLog(edited); err == nil || !strings.Contains(err.Error(), "does not replay to the quoted sha256 PCRs [8]") {
		t.Fatalf("an edited log after the genuine one was remembered: %v", err)
	}
	if verify.EventLogCached(v, edited) {
		t.Fatal("a refused log is remembered")
	}

	// The same log against other PCR values: PCR 8 extended since.
	brokertest.Extend(t, n.rw, 8, "later")
	moved := n.verified(t)
	if _, err := moved.WithEventLog(raw); err == nil || !strings.Contains(err.Error(), "does not replay to the quoted sha256 PCRs [8]") {
		t.Fatalf("the remembered log against another PCR 8: %v", err)
	}
}
