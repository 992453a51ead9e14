package verify

import "testing"

// The cache keeps the most recently used logs, at most its size.
func TestFactsCacheBound(t *testing.T) {
	c := newFactsCache(3)
	key := func(i byte) factsKey { return factsKey{i} }
	for i := range byte(3) {
		c.put(key(i), &EventLogFacts{BootLoader: string('a' + i)})
	}
	if _, ok := c.get(key(0)); !ok { // 0 is now the most recent
		t.Fatal("a remembered log is gone")
	}
	c.put(key(3), &EventLogFacts{})
	if c.len() != 3 {
		t.Fatalf("%d logs remembered, want at most 3", c.len())
	}
	if _, ok := c.get(key(1)); ok {
		t.Fatal("the least recently used log was kept")
	}
	for _, i := range []byte{0, 2, 3} {
		if _, ok := c.get(key(i)); !ok {
			t.Fatalf("log %d was dropped", i)
		}
	}
	if f, _ := c.get(key(0)); f.BootLoader != "a" {
		t.Fatalf("log 0's facts are %+v", f)
	}
}
