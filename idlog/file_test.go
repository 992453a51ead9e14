package idlog_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/agent"
	"github.com/keybroker/keybroker/idlog"
	"github.com/keybroker/keybroker/internal/tpmtest"
)

func handout(i int) idlog.Issued {
	return idlog.Issued{Type: idlog.TypeX509, SPIFFEID: fmt.Sprintf("spiffe://example.org/w%d", i), Serial: fmt.Sprintf("%x", 100+i),
		Selectors: []string{"unix:uid:1000"}, ExeSHA256: strings.Repeat("cd", 32), UID: 1000,
		Time: time.Date(2026, 12, 5, 12, 0, i, 0, time.UTC)}
}

// replays checks that the file's segment replays to the PCR's value.
func replays(t *testing.T, lf *idlog.File, pcr idlog.PCR) *idlog.Log {
	t.Helper()
	l, err := idlog.Parse(lf.Segment())
	if err != nil {
		t.Fatal(err)
	}
	v, err := pcr.Read()
	if err != nil {
		t.Fatal(err)
	}
	if l.Value != v {
		t.Fatalf("the segment replays to %x, the PCR holds %x", l.Value, v)
	}
	return l
}

// A file on a real TPM: each distinct handout recorded and extended once,
// continued by an agent restarted in the same boot, a new segment after a
// reboot with the previous one kept, and a partial record dropped.
func TestFile(t *testing.T) {
	rw := tpmtest.Open(t)
	pcr := agent.TPMPCR{RW: rw, Index: 15}
	dir := t.TempDir()
	lf, err := idlog.Open(dir, idlog.Opts{BootID: "boot-1"}, pcr)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{1, 2, 1, 3, 2} {
		if _, err := lf.Append(handout(i), pcr); err != nil {
			t.Fatal(err)
		}
	}
	if !lf.Recorded(handout(3)) || lf.Recorded(handout(4)) {
		t.Fatal("Recorded does not know what was appended")
	}
	if l := replays(t, lf, pcr); len(l.Issued) != 3 || l.BootID != "boot-1" || l.PCR != 15 {
		t.Fatalf("segment %+v: want the boot record and 3 handouts, a re-sent one once", l)
	}
	if fi, err := os.Stat(filepath.Join(dir, idlog.FileName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("log file: %v %v, want mode 0600", fi, err)
	}
	lf.Close()

	// The agent restarts in the same boot, after a crash cut a record
	// short before its extend: the record is dropped, the log continued.
	path := filepath.Join(dir, idlog.FileName)
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"type":"x509","spiffe_id":"spi`)
	f.Close()
	lf, err = idlog.Open(dir, idlog.Opts{BootID: "boot-1"}, pcr)
	if err != nil {
		t.Fatal(err)
	}
	if lf.Mismatch {
		t.Fatal("a continued log reported a mismatch")
	}
	if ok, err := lf.Append(handout(2), pcr); ok || err != nil {
		t.Fatalf("a handout recorded before the restart appended again: %v %v", ok, err)
	}
	if _, err := lf.Append(handout(4), pcr); err != nil {
		t.Fatal(err)
	}
	before := lf.Segment()
	if l := replays(t, lf, pcr); len(l.Issued) != 4 {
		t.Fatalf("after the restart %d handouts, want 4", len(l.Issued))
	}
	lf.Close()

	// Reboot: the PCR resets; the old segment is kept aside, a new one
	// starts.
	if err := reboot(rw); err != nil {
		t.Fatal(err)
	}
	lf, err = idlog.Open(dir, idlog.Opts{BootID: "boot-2"}, pcr)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if l := replays(t, lf, pcr); len(l.Issued) != 0 || l.BootID != "boot-2" {
		t.Fatalf("new boot's segment %+v", l)
	}
	if prev, err := os.ReadFile(filepath.Join(dir, idlog.PreviousFileName)); err != nil || !bytes.Equal(prev, before) {
		t.Fatalf("previous boot's segment not kept: %v", err)
	}
}

// Out-of-band extends and edits are reported at Open; a failed extend
// takes its record back; a full log refuses.
func TestFileRefusals(t *testing.T) {
	rw := tpmtest.Open(t)
	pcr := agent.TPMPCR{RW: rw, Index: 15}
	dir := t.TempDir()
	lf, err := idlog.Open(dir, idlog.Opts{BootID: "b"}, pcr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lf.Append(handout(1), failingPCR{pcr}); err == nil || !strings.Contains(err.Error(), "unable to extend PCR 15: refused") {
		t.Fatalf("failed extend: %v", err)
	}
	if lf.Recorded(handout(1)) {
		t.Fatal("a handout whose extend failed counts as recorded")
	}
	replays(t, lf, pcr)
	lf.Close()
	raw, _ := os.ReadFile(filepath.Join(dir, idlog.FileName))
	if bytes.Count(raw, []byte("\n")) != 1 {
		t.Fatalf("the file kept the record whose extend failed:\n%s", raw)
	}

	// Extended by someone else: reported, and the log continued (the
	// broker refuses it until the next boot).
	if err := pcr.Extend([32]byte{7}); err != nil {
		t.Fatal(err)
	}
	lf, err = idlog.Open(dir, idlog.Opts{BootID: "b"}, pcr)
	if err != nil {
		t.Fatal(err)
	}
	if !lf.Mismatch {
		t.Fatal("an out-of-band extend was not reported")
	}
	lf.Close()

	// A log for another PCR is not silently continued on this one.
	if _, err := idlog.Open(dir, idlog.Opts{PCR: 14, BootID: "b"}, agent.TPMPCR{RW: rw, Index: 14}); err == nil || !strings.Contains(err.Error(), "extends PCR 15, not 14") {
		t.Fatalf("other PCR: %v", err)
	}
	// Only 10-15 reset to zero at boot and only then: 16 and 23 software
	// may reset, 17-22 start all one and a dynamic launch resets them.
	for _, bad := range []int{9, 16, 17, 20, 22, 23} {
		want := fmt.Sprintf("PCR %d cannot hold the identity record: use one of 10-15", bad)
		if _, err := idlog.Open(t.TempDir(), idlog.Opts{PCR: bad}, agent.TPMPCR{RW: rw, Index: bad}); err == nil || err.Error() != want {
			t.Fatalf("PCR %d: %v, want %q", bad, err, want)
		}
	}
	for _, good := range []int{10, 11, 15} {
		if err := idlog.ValidPCR(good); err != nil {
			t.Fatalf("PCR %d: %v", good, err)
		}
	}
	if idlog.PCRWarning(10) == "" || idlog.PCRWarning(15) != "" {
		t.Fatal("PCR 10 (IMA) is not warned about, or PCR 15 is")
	}

	// A file that does not parse stops the agent while the PCR says this
	// boot extended it; after a reboot it is kept aside and a new segment
	// starts.
	bad := t.TempDir()
	if err := os.WriteFile(filepath.Join(bad, idlog.FileName), []byte("not a record\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := idlog.Open(bad, idlog.Opts{}, pcr); err == nil || !strings.Contains(err.Error(), "identity log record 1: is not a record") {
		t.Fatalf("corrupt log, extended PCR: %v", err)
	}
	if err := reboot(rw); err != nil {
		t.Fatal(err)
	}
	lf, err = idlog.Open(bad, idlog.Opts{}, pcr)
	if err != nil {
		t.Fatalf("corrupt log after a reboot: %v", err)
	}
	replays(t, lf, pcr)
	lf.Close()
	if prev, err := os.ReadFile(filepath.Join(bad, idlog.PreviousFileName)); err != nil || string(prev) != "not a record\n" {
		t.Fatalf("the corrupt log was not kept aside: %q %v", prev, err)
	}

	// Full: refused with ErrFull, nothing appended.
	if err := reboot(rw); err != nil {
		t.Fatal(err)
	}
	lf, err = idlog.Open(t.TempDir(), idlog.Opts{}, pcr)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	var full error
	for i := 0; i < idlog.MaxSize/200 && full == nil; i++ {
		_, full = lf.Append(handout(i), pcr)
	}
	if !errors.Is(full, idlog.ErrFull) {
		t.Fatalf("filling the log: %v, want ErrFull", full)
	}
	if n := len(lf.Segment()); n > idlog.MaxSize {
		t.Fatalf("segment of %d bytes", n)
	}
	replays(t, lf, pcr)
}

type failingPCR struct{ idlog.PCR }

// lostResponsePCR extends, then reports an error: a TPM whose response to
// an extend that ran was lost.
type lostResponsePCR struct{ idlog.PCR }

func (p lostResponsePCR) Extend(d [32]byte) error {
	if err := p.PCR.Extend(d); err != nil {
		return err
	}
	return errors.New("response lost")
}

// A record the PCR does not explain only because its extend never ran (a
// crash between the fsync and the extend) is dropped at Open, and a
// record whose extend ran although the TPM reported an error is kept: the
// node is not refused until the next boot for either.
func TestFileRecovers(t *testing.T) {
	dir := t.TempDir()
	lf, pcr := openOn(t, dir, idlog.Opts{BootID: "b"})
	if ok, err := lf.Append(handout(1), lostResponsePCR{pcr}); !ok || err != nil {
		t.Fatalf("an extend that ran but reported an error: %v, %v; want the record kept", ok, err)
	}
	if !lf.Recorded(handout(1)) {
		t.Fatal("the handout whose extend ran is not recorded")
	}
	replays(t, lf, pcr)
	lf.Close()

	// The agent stops between the fsync of a record and its extend.
	line, err := idlog.Encode(idlog.HandoutRecord(handout(2)), false)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, idlog.FileName), os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		t.Fatal(err)
	}
	f.Close()
	lf, err = idlog.Open(dir, idlog.Opts{BootID: "b"}, pcr)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if !lf.DroppedLast || lf.Mismatch || lf.Recorded(handout(2)) {
		t.Fatalf("dropped %v, mismatch %v, recorded %v: want the unextended record dropped", lf.DroppedLast, lf.Mismatch, lf.Recorded(handout(2)))
	}
	if l := replays(t, lf, pcr); len(l.Issued) != 1 {
		t.Fatalf("%d handouts, want 1", len(l.Issued))
	}
	raw, _ := os.ReadFile(filepath.Join(dir, idlog.FileName))
	if bytes.Contains(raw, line) {
		t.Fatal("the file still holds the unextended record")
	}
	// And it records again.
	if ok, err := lf.Append(handout(2), pcr); !ok || err != nil {
		t.Fatalf("append after recovery: %v, %v", ok, err)
	}
	replays(t, lf, pcr)
}

func (failingPCR) Extend([32]byte) error { return errors.New("refused") }

// reboot resets the simulator as a reboot of its machine does.
func reboot(rw any) error { return rw.(interface{ Reset() error }).Reset() }

// ReadSegment hands a one-shot attestation the current boot's segment
// without writing: nothing while the PCR is reset, the segment once it is
// extended, and a refusal for a segment of another PCR.
func TestReadSegment(t *testing.T) {
	rw := tpmtest.Open(t)
	pcr := agent.TPMPCR{RW: rw, Index: 15}
	dir := t.TempDir()
	if seg, err := idlog.ReadSegment(dir, 15, pcr); seg != nil || err != nil {
		t.Fatalf("no file: %q, %v", seg, err)
	}
	lf, err := idlog.Open(dir, idlog.Opts{BootID: "b"}, pcr)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if _, err := lf.Append(handout(1), pcr); err != nil {
		t.Fatal(err)
	}
	seg, err := idlog.ReadSegment(dir, 15, pcr)
	if err != nil || !bytes.Equal(seg, lf.Segment()) {
		t.Fatalf("segment %q, %v; want the file's", seg, err)
	}
	if _, err := idlog.ReadSegment(dir, 14, agent.TPMPCR{RW: rw, Index: 14}); err != nil {
		t.Fatalf("PCR 14 reset: %v, want no log and no error", err)
	}
	if err := (agent.TPMPCR{RW: rw, Index: 14}).Extend([32]byte{1}); err != nil {
		t.Fatal(err)
	}
	if _, err := idlog.ReadSegment(dir, 14, agent.TPMPCR{RW: rw, Index: 14}); err == nil || !strings.Contains(err.Error(), "extends PCR 15, not 14") {
		t.Fatalf("another PCR: %v", err)
	}
	if err := reboot(rw); err != nil {
		t.Fatal(err)
	}
	if seg, err := idlog.ReadSegment(dir, 15, pcr); seg != nil || err != nil {
		t.Fatalf("after a reboot: %q, %v; want nothing", seg, err)
	}
}

// JWT-SVIDs cannot fill the end of a segment kept for X.509-SVIDs: a
// workload asking for tokens of ever new audiences does not block X.509
// rotations until the next boot.
func TestFileX509Reserve(t *testing.T) {
	lf, pcr := openFresh(t)
	var refused error
	n := 0
	for ; n < idlog.MaxSize/100 && refused == nil; n++ {
		h := handout(n)
		h.Type, h.Expires = idlog.TypeJWT, h.Time.Add(5*time.Minute)
		_, refused = lf.Append(h, pcr)
	}
	if !errors.Is(refused, idlog.ErrNoRoomForJWT) {
		t.Fatalf("JWT-SVIDs: %v after %d, want ErrNoRoomForJWT", refused, n)
	}
	if size := len(lf.Segment()); size > idlog.MaxSize-idlog.X509Reserve {
		t.Fatalf("JWT-SVIDs filled %d bytes, more than %d", size, idlog.MaxSize-idlog.X509Reserve)
	}
	for i := range 100 {
		if ok, err := lf.Append(handout(100000+i), pcr); !ok || err != nil {
			t.Fatalf("X.509-SVID %d after the JWT-SVIDs: %v, %v", i, ok, err)
		}
	}
	replays(t, lf, pcr)
}

// The same SVID to the same executable and uid under another gid is
// another handout.
func TestFileGID(t *testing.T) {
	lf, pcr := openFresh(t)
	g1, g2 := uint32(1), uint32(2)
	a, b := handout(1), handout(1)
	a.GID, b.GID = &g1, &g2
	for _, h := range []idlog.Issued{a, a, b} {
		if _, err := lf.Append(h, pcr); err != nil {
			t.Fatal(err)
		}
	}
	if l := replays(t, lf, pcr); len(l.Issued) != 2 || *l.Issued[0].GID != 1 || *l.Issued[1].GID != 2 {
		t.Fatalf("handouts %+v, want one per gid", l.Issued)
	}
}

// openFresh opens a new log on PCR 15 of a fresh TPM, closed with the test.
func openFresh(t *testing.T) (*idlog.File, idlog.PCR) {
	t.Helper()
	return openOn(t, t.TempDir(), idlog.Opts{})
}

// openOn opens the log in dir on PCR 15 of a fresh TPM, closed with the
// test.
func openOn(t *testing.T, dir string, opts idlog.Opts) (*idlog.File, idlog.PCR) {
	t.Helper()
	pcr := agent.TPMPCR{RW: tpmtest.Open(t), Index: 15}
	lf, err := idlog.Open(dir, opts, pcr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lf.Close() })
	return lf, pcr
}
