package dashboard

import (
	"context"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/events"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	"github.com/switchyard-ml/switchyard/pkg/security"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

var (
	// ErrNotFound: the job (or its report) does not exist. Sources wrap it.
	ErrNotFound = errors.New("dashboard: not found")
	// ErrUnavailable: the source cannot answer now (no leader, no bus).
	ErrUnavailable = errors.New("dashboard: unavailable")
)

// Source is what the dashboard shows. The controller implements it; every
// method may be called concurrently and must honour ctx.
type Source interface {
	// Cluster is the replicas, the leader and the workers.
	Cluster(ctx context.Context) (*apiv1.ClusterStatusResponse, error)
	// Jobs is every job, in submission order.
	Jobs(ctx context.Context) ([]*pb.Job, error)
	// Job is one job with its history (ErrNotFound when unknown).
	Job(ctx context.Context, id string) (*pb.Job, error)
	// Checkpoints is the job's checkpoints, newest first.
	Checkpoints(ctx context.Context, j *pb.Job) ([]*apiv1.Checkpoint, error)
	// History is the stored messages of one kind of the job, oldest first.
	History(ctx context.Context, jobID string, kind events.Kind) ([]events.Message, error)
	// Subscribe delivers the job's messages of kind (with the stored ones
	// first when replay) until ctx ends; then it closes the channel.
	Subscribe(ctx context.Context, jobID string, kind events.Kind, replay bool) (<-chan events.Message, error)
	// Report is rank 0's report.json of the job's last attempt, as
	// written (ErrNotFound when there is none or it is not reachable).
	Report(ctx context.Context, j *pb.Job) ([]byte, error)
}

// Config wires a Handler.
type Config struct {
	Source Source
	// Token is the cluster token every /api/ request must present; ""
	// when the coordinator checks none.
	Token string
	// ClientCert makes every request need a verified client certificate
	// (r.TLS.VerifiedChains): set it when the listener only requests one
	// (tls.VerifyClientCertIfGiven) so that the kubelet's probes, which
	// present none, reach the health endpoints served beside the
	// dashboard, while the dashboard stays behind mutual TLS.
	ClientCert bool
	// PollEvery is how often a stream looks at the job record (default
	// 500ms).
	PollEvery time.Duration
	// Heartbeat is how often an idle stream sends a comment (default 15s).
	Heartbeat time.Duration
	// QuietAfterEnd is how long a stream stays open after its job ended,
	// for the last metrics (default 2s).
	QuietAfterEnd time.Duration
	Logger        *slog.Logger
}

// Handler serves the dashboard. Close ends its live streams.
type Handler struct {
	cfg     Config
	log     *slog.Logger
	mux     *http.ServeMux
	mu      sync.Mutex // closed, and streams.Add against Close's Wait
	closed  bool
	done    chan struct{}
	streams sync.WaitGroup
}

//go:embed assets
var assets embed.FS

// static maps the page's files to their content types.
var static = map[string]string{
	"index.html": "text/html; charset=utf-8",
	"app.js":     "text/javascript; charset=utf-8",
	"app.css":    "text/css; charset=utf-8",
}

// New checks cfg and returns the Handler.
func New(cfg Config) (*Handler, error) {
	if cfg.Source == nil {
		return nil, errors.New("dashboard: no source")
	}
	if cfg.PollEvery <= 0 {
		cfg.PollEvery = 500 * time.Millisecond
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 15 * time.Second
	}
	if cfg.QuietAfterEnd <= 0 {
		cfg.QuietAfterEnd = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	h := &Handler{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux(), done: make(chan struct{})}
	h.mux.HandleFunc("GET /{$}", h.asset("index.html"))
	h.mux.HandleFunc("GET /app.js", h.asset("app.js"))
	h.mux.HandleFunc("GET /app.css", h.asset("app.css"))
	h.mux.HandleFunc("GET /api/cluster", h.api(h.cluster))
	h.mux.HandleFunc("GET /api/jobs", h.api(h.jobs))
	h.mux.HandleFunc("GET /api/jobs/{id}", h.api(h.job))
	h.mux.HandleFunc("GET /api/jobs/{id}/checkpoints", h.api(h.checkpoints))
	h.mux.HandleFunc("GET /api/jobs/{id}/metrics", h.api(h.metrics))
	h.mux.HandleFunc("GET /api/jobs/{id}/report", h.api(h.report))
	h.mux.HandleFunc("GET /api/jobs/{id}/stream", h.api(h.stream))
	h.mux.HandleFunc("/api/", h.api(func(w http.ResponseWriter, r *http.Request) error {
		return apiErr(http.StatusNotFound, "no such endpoint: %s %s", r.Method, r.URL.Path)
	}))
	return h, nil
}

// Close ends the live streams and waits for them; the Handler answers
// 503 to new streams afterwards.
func (h *Handler) Close() {
	h.mu.Lock()
	if !h.closed {
		h.closed = true
		close(h.done)
	}
	h.mu.Unlock()
	h.streams.Wait()
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'")
	if h.cfg.ClientCert && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
		hd.Set("Cache-Control", "no-store")
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "the dashboard needs a client certificate signed by the cluster's CA"})
		return
	}
	h.mux.ServeHTTP(w, r)
}

func (h *Handler) asset(name string) http.HandlerFunc {
	body, err := assets.ReadFile("assets/" + name)
	if err != nil {
		panic("dashboard: asset " + name + " not embedded") // a build error, caught by the tests
	}
	ctype := static[name]
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", ctype)
		w.Header().Set("Cache-Control", "no-cache")
		w.Write(body) //nolint:errcheck // the client went away
	}
}

// apiError is an error with the HTTP status it answers.
type apiError struct {
	code int
	msg  string
}

func (e *apiError) Error() string { return e.msg }

func apiErr(code int, format string, args ...any) error {
	return &apiError{code: code, msg: fmt.Sprintf(format, args...)}
}

// api wraps an /api/ handler: it checks the caller and writes an error
// as JSON with its status: {"error": "..."}.
func (h *Handler) api(fn func(http.ResponseWriter, *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		err := h.authorize(r)
		if err == nil {
			err = fn(w, r)
		}
		if err == nil {
			return
		}
		var ae *apiError
		switch {
		case errors.As(err, &ae):
		case errors.Is(err, ErrNotFound):
			ae = &apiError{http.StatusNotFound, err.Error()}
		case errors.Is(err, ErrUnavailable):
			ae = &apiError{http.StatusServiceUnavailable, err.Error()}
		case r.Context().Err() != nil:
			return // the client went away
		default:
			h.log.Warn("dashboard request failed", "path", r.URL.Path, "error", err)
			ae = &apiError{http.StatusInternalServerError, err.Error()}
		}
		if ae.code == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="switchyard"`)
		}
		writeJSON(w, ae.code, map[string]string{"error": ae.msg})
	}
}

// authorize accepts the cluster token only (not a worker token made from
// it), and over mutual TLS no worker certificate.
func (h *Handler) authorize(r *http.Request) error {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 &&
		slices.Contains(r.TLS.VerifiedChains[0][0].Subject.OrganizationalUnit, security.WorkerCertOU) {
		return apiErr(http.StatusForbidden, "a worker's certificate does not open the dashboard")
	}
	if h.cfg.Token == "" {
		return nil
	}
	scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare([]byte(got), []byte(h.cfg.Token)) != 1 {
		return apiErr(http.StatusUnauthorized, "missing or wrong token: the dashboard needs the cluster token")
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"error":"encoding the answer failed"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(b)            //nolint:errcheck // the client went away
	w.Write([]byte{'\n'}) //nolint:errcheck
}

// jobOf reads the {id} of the path and the job.
func (h *Handler) jobOf(r *http.Request) (*pb.Job, error) {
	id := r.PathValue("id")
	if err := jobspec.ValidJobID(id); err != nil {
		return nil, apiErr(http.StatusNotFound, "no job %q (not a job id)", id)
	}
	j, err := h.cfg.Source.Job(r.Context(), id)
	if err != nil {
		return nil, err
	}
	if j == nil {
		return nil, apiErr(http.StatusNotFound, "no job %q", id)
	}
	return j, nil
}

func (h *Handler) cluster(w http.ResponseWriter, r *http.Request) error {
	cs, err := h.cfg.Source.Cluster(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, clusterView(cs))
	return nil
}

// maxListed bounds the jobs list: the newest ones.
const maxListed = 500

func (h *Handler) jobs(w http.ResponseWriter, r *http.Request) error {
	js, err := h.cfg.Source.Jobs(r.Context())
	if err != nil {
		return err
	}
	out := jobList{Total: len(js), Jobs: []jobView{}}
	for i := len(js) - 1; i >= 0 && len(out.Jobs) < maxListed; i-- { // newest first
		out.Jobs = append(out.Jobs, summary(js[i]))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (h *Handler) job(w http.ResponseWriter, r *http.Request) error {
	j, err := h.jobOf(r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, detail(j))
	return nil
}

func (h *Handler) checkpoints(w http.ResponseWriter, r *http.Request) error {
	j, err := h.jobOf(r)
	if err != nil {
		return err
	}
	cps, err := h.cfg.Source.Checkpoints(r.Context(), j)
	if err != nil {
		return err
	}
	out := []checkpointView{}
	for _, c := range cps {
		out = append(out, checkpointView{Step: c.Step, Status: c.Status, Committed: unixMillis(c.CommittedUnixNano), Bytes: c.Bytes,
			TP: c.Tp, DP: c.Dp, EP: c.Ep, ValLoss: finite(c.ValLoss), Shards: len(c.Shards)})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// maxPoints bounds the metrics one answer holds: past it, evenly spaced
// steps are kept (the last always).
const maxPoints = 2000

func (h *Handler) metrics(w http.ResponseWriter, r *http.Request) error {
	j, err := h.jobOf(r)
	if err != nil {
		return err
	}
	msgs, err := h.cfg.Source.History(r.Context(), j.Id, events.KindMetrics)
	if err != nil {
		return err
	}
	pts := []point{}
	for _, m := range msgs {
		if p, ok := pointOf(m); ok {
			pts = append(pts, p)
		}
	}
	writeJSON(w, http.StatusOK, thin(pts, maxPoints))
	return nil
}

// maxReport bounds the report passed through.
const maxReport = 16 << 20

func (h *Handler) report(w http.ResponseWriter, r *http.Request) error {
	j, err := h.jobOf(r)
	if err != nil {
		return err
	}
	raw, err := h.cfg.Source.Report(r.Context(), j)
	if err != nil {
		return err
	}
	if len(raw) > maxReport || !json.Valid(raw) {
		return apiErr(http.StatusBadGateway, "job %s: its report is not valid JSON of at most %d bytes", j.Id, maxReport)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(raw) //nolint:errcheck // the client went away
	return nil
}
