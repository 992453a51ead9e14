package idlog_test

import (
	"fmt"
	"time"

	"github.com/keybroker/keybroker/idlog"
)

// A segment as the agent writes it, parsed and replayed as the broker does:
// the value it replays to is what the quoted PCR must hold.
func ExampleParse() {
	at := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	var segment []byte
	for i, r := range []idlog.Record{
		idlog.BootRecord(idlog.DefaultPCR, "6f1e2d3c", at),
		idlog.HandoutRecord(idlog.Issued{Type: idlog.TypeX509, SPIFFEID: "spiffe://example.org/web", Serial: "1f",
			Selectors: []string{"unix:uid:1000"}, UID: 1000, Time: at.Add(time.Second)}),
	} {
		line, err := idlog.Encode(r, i == 0)
		if err != nil {
			panic(err)
		}
		segment = append(append(segment, line...), '\n')
	}
	l, err := idlog.Parse(segment)
	if err != nil {
		panic(err)
	}
	fmt.Printf("PCR %d, boot %s\n", l.PCR, l.BootID)
	for _, i := range l.Issued {
		fmt.Println(i.Type, i.SPIFFEID, i.Serial, i.Selectors, i.UID)
	}
	// Output:
	// PCR 15, boot 6f1e2d3c
	// x509 spiffe://example.org/web 1f [unix:uid:1000] 1000
}
