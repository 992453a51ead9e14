package main

import (
	"runtime/debug"
	"testing"
)

// serve runs the collector at GOGC=400 unless the environment sets GOGC.
func TestServeGC(t *testing.T) {
	prev := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(prev) })
	for _, tt := range []struct {
		env  string
		want int
	}{{"", serveGCPercent}, {"50", 100}, {"off", 100}} {
		debug.SetGCPercent(100)
		serveGC(func(k string) string {
			if k == "GOGC" {
				return tt.env
			}
			return ""
		})
		if got := debug.SetGCPercent(100); got != tt.want {
			t.Errorf("GOGC=%q: GC percent %d, want %d", tt.env, got, tt.want)
		}
	}
}
