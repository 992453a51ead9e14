package metrics

import (
	"fmt"
	"testing"
	"time"
)

// TestOutstandingCounts: a challenge counts from its issue until it is
// answered or expires; a second answer, or an answer to a challenge issued
// elsewhere, changes nothing.
func TestOutstandingCounts(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	o := newOutstanding(MaxTrackedChallenges)
	for i := range 5 {
		o.issued(fmt.Sprint("c", i), at(i+60), at(i)) // TTL 60s, one a second
	}
	o.issued("late", at(4), at(4)) // expires as it is issued: never counts
	steps := []struct {
		name   string
		answer string
		now    int
		want   int
	}{
		{name: "issued", now: 4, want: 5},
		{name: "answered", answer: "c1", now: 5, want: 4},
		{name: "answered again", answer: "c1", now: 6, want: 4},
		{name: "issued elsewhere", answer: "other", now: 7, want: 4},
		{name: "first expired", now: 60, want: 3},
		{name: "answered one expired", now: 61, want: 3},
		{name: "expiring now", now: 63, want: 1},
		{name: "answered last", answer: "c4", now: 63, want: 0},
		{name: "all expired", now: 100, want: 0},
	}
	for _, st := range steps {
		if st.answer != "" {
			o.answered(st.answer, at(st.now))
		}
		if got := o.count(at(st.now)); got != st.want {
			t.Errorf("%s (t+%ds): %d outstanding; want %d", st.name, st.now, got, st.want)
		}
	}
	o.issued("again", at(200), at(150))
	if got := o.count(at(150)); got != 1 {
		t.Errorf("after draining: %d outstanding; want 1", got)
	}
}

// TestOutstandingPastMax: past the tracked bound, challenges still count
// until they expire, but their answers are not matched.
func TestOutstandingPastMax(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	o := newOutstanding(2)
	for i := range 5 {
		o.issued(fmt.Sprint("c", i), t0.Add(time.Minute+time.Duration(i/2)*time.Second), t0)
	}
	o.answered("c0", t0)
	o.answered("c4", t0) // untracked: still counted
	if got := o.count(t0); got != 4 {
		t.Errorf("%d outstanding; want 4 (c1 tracked, c2-c4 untracked)", got)
	}
	if got := o.count(t0.Add(time.Minute + time.Second)); got != 1 {
		t.Errorf("%d outstanding after the first two seconds of expiries; want 1 (c4)", got)
	}
	if got := o.count(t0.Add(time.Hour)); got != 0 {
		t.Errorf("%d outstanding after every expiry; want 0", got)
	}
	o.issued("new", t0.Add(2*time.Hour), t0.Add(time.Hour))
	o.answered("new", t0.Add(time.Hour))
	if got := o.count(t0.Add(time.Hour)); got != 0 {
		t.Errorf("%d outstanding; want 0: the bound frees as challenges expire", got)
	}
}

// TestOutstandingGauge: the Broker exposes the count as
// keybroker_challenges_outstanding.
func TestOutstandingGauge(t *testing.T) {
	b := New()
	b.ChallengeOutstanding("a", time.Now().Add(time.Minute))
	b.ChallengeOutstanding("b", time.Now().Add(time.Minute))
	b.ChallengeOutstanding("c", time.Now().Add(-time.Second))
	b.ChallengeAnswered("a")
	fams, err := b.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == "keybroker_challenges_outstanding" {
			if got := f.GetMetric()[0].GetGauge().GetValue(); got != 1 {
				t.Errorf("keybroker_challenges_outstanding = %v; want 1", got)
			}
			return
		}
	}
	t.Error("keybroker_challenges_outstanding is not registered")
}
