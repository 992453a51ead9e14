package attestation

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestEvidenceJSON(t *testing.T) {
	ev := Evidence{
		Time:       time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		EKPublic:   []byte("ek-public"),
		AKPublic:   []byte("ak-public"),
		SecretHash: [32]byte{1, 2, 3, 31: 0xff},
		Quotes:     []Quote{{Attest: []byte("attest"), Signature: []byte("sig"), Bank: 0x000b, PCRs: map[uint32][]byte{7: {7}}}},
		EventLog:   []byte("event log"),
		Previous:   &Counters{AKName: []byte("ak-name"), Clock: 1},
	}
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"secret_hash":"AQIDAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAP8="`) {
		t.Errorf("secret_hash is not base64 in %s", b)
	}
	var got Evidence
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, ev) {
		t.Errorf("round trip = %+v\nwant %+v", got, ev)
	}
	bad := strings.Replace(string(b), `"secret_hash":"AQIDAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAP8="`, `"secret_hash":"AQID"`, 1)
	if err := json.Unmarshal([]byte(bad), &got); err == nil || err.Error() != "evidence secret_hash has 3 bytes, want 32" {
		t.Errorf("short secret_hash: got %v", err)
	}
}
