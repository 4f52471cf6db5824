package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry is a process's registry: the Go runtime's and the
// process's own metrics, and whatever its owner adds.
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Server serves a registry on /metrics until Close.
type Server struct {
	srv  *http.Server
	lis  net.Listener
	wg   sync.WaitGroup
	once sync.Once
	err  error
}

// Serve listens on addr ("host:port"; port 0 picks one) and serves reg.
// The endpoint carries no secrets (job ids and numbers) and is plain
// HTTP, as Prometheus scrapes it; keep it on a private network.
//
// extra adds handlers beside /metrics, by ServeMux pattern (a worker's
// /healthz and /readyz).
func Serve(addr string, reg *prometheus.Registry, log *slog.Logger, extra map[string]http.Handler) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		Registry: reg, // counts its own scrape errors
	}))
	for pattern, h := range extra {
		mux.Handle(pattern, h)
	}
	s := &Server{lis: lis, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics endpoint stopped", "error", err)
		}
	}()
	return s, nil
}

// Addr is the address it listens on.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Close stops serving (a scrape in flight gets a second to finish).
func (s *Server) Close() error {
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := s.srv.Shutdown(ctx); err != nil {
			s.err = s.srv.Close()
		}
		s.wg.Wait()
	})
	return s.err
}
