package metrics

import (
	"context"
	"strings"
	"time"

	"google.golang.org/grpc"
)

// UnaryServerInterceptor counts every unary Workload API call by method and
// status code and observes its handling time. Installed before the
// security header check, it counts the calls that check refuses too. The
// gRPC server calls interceptors only for the methods it has registered,
// so the labels stay bounded. On a nil Agent it only calls the handler.
func (a *Agent) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if a == nil {
			return handler(ctx, req)
		}
		start := time.Now()
		resp, err := handler(ctx, req)
		method := methodName(info.FullMethod)
		a.callSeconds.WithLabelValues(method).Observe(time.Since(start).Seconds())
		a.calls.WithLabelValues(method, code(err)).Inc()
		return resp, err
	}
}

// StreamServerInterceptor counts every Workload API stream by method while
// it is open, and by method and status code when it ends. A stream lives
// as long as the workload watches, so its time is not observed. On a nil
// Agent it only calls the handler.
func (a *Agent) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if a == nil {
			return handler(srv, ss)
		}
		method := methodName(info.FullMethod)
		open := a.streams.WithLabelValues(method)
		open.Inc()
		err := handler(srv, ss)
		open.Dec()
		a.calls.WithLabelValues(method, code(err)).Inc()
		return err
	}
}

// maxMethodSize bounds a method name taken as a label value.
const maxMethodSize = 32

// methodName returns the method of "/package.Service/Method" if it is a
// plain name (letters and digits), else "other".
func methodName(full string) string {
	m := full[strings.LastIndexByte(full, '/')+1:]
	if m == "" || len(m) > maxMethodSize {
		return "other"
	}
	for i := 0; i < len(m); i++ {
		if c := m[i]; (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') {
			return "other"
		}
	}
	return m
}
