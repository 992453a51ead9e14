package workload

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/idlog"
)

// errUnrecorded refuses a response whose SVIDs could not be recorded.
var errUnrecorded = status.Error(codes.Unavailable, msgUnrecorded)

// Recorder records the SVIDs the server hands to workloads (the agent's
// TPM-backed identity log, package idlog). The server calls it before it
// sends each response holding SVIDs, once per SVID; an error refuses the
// response (Unavailable), so that nothing is handed out unrecorded. It is
// called again for an SVID a stream re-sends: recording each distinct
// handout once is the Recorder's.
type Recorder interface {
	Record(idlog.Issued) error
}

// WithRecorder has the server record every SVID it hands out with r.
// Default: none.
func WithRecorder(r Recorder) Option { return func(s *Server) { s.rec = r } }

// record records each handout; it returns the status to refuse the
// response with.
func (s *Server) record(c Caller, entries []Entry, handouts []idlog.Issued) error {
	if s.rec == nil {
		return nil
	}
	now := s.now()
	for _, h := range handouts {
		gid := c.GID
		h.ExeSHA256, h.UID, h.GID, h.Time = c.SHA256, c.UID, &gid, now
		for _, e := range entries {
			if e.ID.String() == h.SPIFFEID {
				for _, sel := range e.Selectors {
					h.Selectors = append(h.Selectors, sel.String())
				}
				break
			}
		}
		if err := s.rec.Record(h); err != nil {
			s.log.Error("unable to record an identity handout: not handed out", "spiffe_id", h.SPIFFEID, "pid", c.PID, "uid", c.UID, "error", err)
			return errUnrecorded
		}
	}
	return nil
}
