package workload

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"

	"github.com/keybroker/keybroker/idlog"
)

// listRecorder records handouts in a list, or fails with err.
type listRecorder struct {
	mu  sync.Mutex
	got []idlog.Issued
	err error
}

func (r *listRecorder) Record(h idlog.Issued) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	r.got = append(r.got, h)
	return nil
}

// The server tells its Recorder of every SVID before handing it out, with
// the entry's selectors and the caller's executable and uid, and hands
// nothing out when recording fails.
func TestRecorder(t *testing.T) {
	src := newFakeSource(t)
	uid, path, sum := self(t)
	snap := src.snapshot(
		Entry{Name: "web", ID: webID, Selectors: []Selector{uid}},
		Entry{Name: "db", ID: dbID, Selectors: []Selector{uid, path, sum}},
	)
	src.set(snap)
	rec := &listRecorder{}
	addr := serve(t, src, WithRecorder(rec))
	ctx := testContext(t)

	svids, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr(addr))
	if err != nil || len(svids) != 2 {
		t.Fatalf("FetchX509SVIDs = %v, %v", svids, err)
	}
	jwt, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "a", Subject: dbID}, workloadapi.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	exe := sum.Value[len("sha256:"):]
	var got []string
	for _, h := range rec.got {
		got = append(got, fmt.Sprintf("%s %s %s %v %v %d", h.Type, h.SPIFFEID, h.Serial, h.Selectors, h.ExeSHA256 == exe, h.UID))
		if h.Time.IsZero() || h.Expires.IsZero() {
			t.Errorf("handout %+v without time or expiry", h)
		}
	}
	want := []string{
		fmt.Sprintf("x509 %s %x [%s] true %s", webID, snap.X509SVIDs[webID].Certificates[0].SerialNumber, uid, uid.Value[len("uid:"):]),
		fmt.Sprintf("x509 %s %x [%s %s %s] true %s", dbID, snap.X509SVIDs[dbID].Certificates[0].SerialNumber, uid, path, sum, uid.Value[len("uid:"):]),
		fmt.Sprintf("jwt %s %s [%s %s %s] true %s", dbID, idlog.SerialOfToken(jwt.Marshal()), uid, path, sum, uid.Value[len("uid:"):]),
	}
	if !slices.Equal(got, want) {
		t.Fatalf("recorded\n%q\nwant\n%q", got, want)
	}

	rec.err = errors.New("disk full")
	_, err = workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(addr))
	wantStatus(t, err, codes.Unavailable, "unable to record the identity handout")
	_, err = workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "a"}, workloadapi.WithAddr(addr))
	wantStatus(t, err, codes.Unavailable, "unable to record the identity handout")
}
