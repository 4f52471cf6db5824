package dashboard

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/switchyard-ml/switchyard/pkg/events"
	"github.com/switchyard-ml/switchyard/pkg/security"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

const testToken = "cluster-secret"

// fake is a Source over a few jobs and an in-memory bus.
type fake struct {
	mu      sync.Mutex
	jobs    map[string]*pb.Job
	bus     *events.Memory
	report  []byte
	streams sync.WaitGroup // subscriptions still delivering
}

func newFake(t *testing.T) *fake {
	f := &fake{jobs: map[string]*pb.Job{}, bus: events.NewMemory()}
	t.Cleanup(func() { f.bus.Close() })
	f.jobs["job-1"] = &pb.Job{
		Id: "job-1", Name: "demo", State: pb.JobState_JOB_STATE_RUNNING, WorldSize: 2,
		Spec:     []byte("name: demo\nmodel: {preset: tiny}\nparallel: {dp: 2, ep: 2}\nmicro_batch: 4\nsteps: 100\nresources: {cpu_cores: 1, memory_mib: 512}\n"),
		Progress: &pb.Progress{Step: 40, TotalSteps: 100, Loss: 2.5, TokensPerSecond: 1000},
		Events:   []*pb.JobEvent{{Seq: 1, UnixNano: 1e18, Type: "Submitted", Message: "job demo submitted"}},
	}
	return f
}

func (f *fake) setState(id string, st pb.JobState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	j := proto.Clone(f.jobs[id]).(*pb.Job) // a new record, as the FSM's are
	j.State = st
	f.jobs[id] = j
}

func (f *fake) Cluster(context.Context) (*apiv1.ClusterStatusResponse, error) {
	return &apiv1.ClusterStatusResponse{AnsweredBy: "c1", LeaderId: "c1",
		Replicas: []*apiv1.Replica{{Id: "c1", Leader: true, Voter: true, Alive: true}},
		Workers:  []*apiv1.Worker{{Id: "w1", Healthy: true, Resources: &apiv1.Resources{CpuCores: 4, MemoryMib: 1024}}}}, nil
}

func (f *fake) Jobs(context.Context) ([]*pb.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*pb.Job
	for _, j := range f.jobs {
		out = append(out, j)
	}
	return out, nil
}

func (f *fake) Job(_ context.Context, id string) (*pb.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	j, ok := f.jobs[id]
	if !ok {
		return nil, fmt.Errorf("%w: job %s", ErrNotFound, id)
	}
	return j, nil
}

func (f *fake) Checkpoints(context.Context, *pb.Job) ([]*apiv1.Checkpoint, error) {
	return []*apiv1.Checkpoint{{Step: 30, Status: "committed", Bytes: 1 << 20, Dp: 2, Ep: 2, Tp: 1}}, nil
}

func (f *fake) History(ctx context.Context, id string, k events.Kind) ([]events.Message, error) {
	return f.bus.History(ctx, events.Filter{Kind: k, JobID: id})
}

func (f *fake) Subscribe(ctx context.Context, id string, k events.Kind, replay bool) (<-chan events.Message, error) {
	in, err := f.bus.Subscribe(ctx, events.Filter{Kind: k, JobID: id, Replay: replay})
	if err != nil {
		return nil, err
	}
	out := make(chan events.Message)
	f.streams.Add(1)
	go func() {
		defer f.streams.Done()
		defer close(out)
		for m := range in {
			select {
			case out <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

func (f *fake) Report(context.Context, *pb.Job) ([]byte, error) {
	if f.report == nil {
		return nil, ErrNotFound
	}
	return f.report, nil
}

func serve(t *testing.T, f *fake) (*httptest.Server, *Handler) {
	t.Helper()
	h, err := New(Config{Source: f, Token: testToken, PollEvery: 20 * time.Millisecond, QuietAfterEnd: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(func() { h.Close(); srv.Close() })
	return srv, h
}

func get(t *testing.T, srv *httptest.Server, path, token string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

func TestAuth(t *testing.T) {
	srv, _ := serve(t, newFake(t))
	for _, tc := range []struct {
		name, token string
		want        int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"wrong token", "nope", http.StatusUnauthorized},
		{"token with a suffix", testToken + "x", http.StatusUnauthorized},
		{"worker token", security.WorkerToken(testToken, "w1"), http.StatusUnauthorized},
		{"cluster token", testToken, http.StatusOK},
	} {
		for _, path := range []string{"/api/jobs", "/api/cluster", "/api/jobs/job-1", "/api/jobs/job-1/metrics", "/api/jobs/job-1/checkpoints"} {
			resp, body := get(t, srv, path, tc.token)
			if resp.StatusCode != tc.want {
				t.Errorf("%s: GET %s: %d %s, want %d", tc.name, path, resp.StatusCode, body, tc.want)
				continue
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("%s: GET %s: content type %q", tc.name, path, ct)
			}
			var v map[string]any
			if json.Unmarshal(body, &v) != nil && tc.want != http.StatusOK {
				t.Errorf("%s: GET %s: not a JSON error: %s", tc.name, path, body)
			}
			if tc.want == http.StatusUnauthorized && (v["error"] == nil || strings.Contains(string(body), "demo")) {
				t.Errorf("%s: GET %s: want an error and no data: %s", tc.name, path, body)
			}
		}
	}
	// a scheme other than Bearer, and the token in a query, do not count
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/jobs?token="+testToken, nil)
	req.Header.Set("Authorization", "Basic "+testToken)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("Basic auth: %d", resp.StatusCode)
	}
}

func TestNoTokenConfigured(t *testing.T) {
	h, err := New(Config{Source: newFake(t)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	if resp, body := get(t, srv, "/api/jobs", ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("no token configured: %d %s", resp.StatusCode, body)
	}
}

func TestData(t *testing.T) {
	f := newFake(t)
	f.report = []byte(`{"experts":[{"layer":0,"domain":"code","frequency":[0.5,0.5]}]}`)
	srv, _ := serve(t, f)
	var jl jobList
	_, body := get(t, srv, "/api/jobs", testToken)
	if err := json.Unmarshal(body, &jl); err != nil || len(jl.Jobs) != 1 {
		t.Fatalf("jobs: %s (%v)", body, err)
	}
	j := jl.Jobs[0]
	// 60 steps x (dp 2 x micro 4 x seq 256 of tiny... ) / 1000: whatever
	// the preset's sequence, the ETA is positive and the progress 0.4
	if j.State != "RUNNING" || j.Progress != 0.4 || !(j.ETASeconds > 0) {
		t.Errorf("job view %+v", j)
	}
	var d jobDetail
	_, body = get(t, srv, "/api/jobs/job-1", testToken)
	if err := json.Unmarshal(body, &d); err != nil || len(d.Events) != 1 || d.Parallel.DP != 2 {
		t.Errorf("job detail: %s (%v)", body, err)
	}
	var cs clusterStatus
	_, body = get(t, srv, "/api/cluster", testToken)
	if err := json.Unmarshal(body, &cs); err != nil || cs.Leader != "c1" || len(cs.Workers) != 1 || cs.Workers[0].CPUCores != 4 {
		t.Errorf("cluster: %s (%v)", body, err)
	}
	var cps []checkpointView
	_, body = get(t, srv, "/api/jobs/job-1/checkpoints", testToken)
	if err := json.Unmarshal(body, &cps); err != nil || len(cps) != 1 || cps[0].Step != 30 {
		t.Errorf("checkpoints: %s (%v)", body, err)
	}
	resp, body := get(t, srv, "/api/jobs/job-1/report", testToken)
	if resp.StatusCode != http.StatusOK || string(body) != string(f.report) {
		t.Errorf("report: %d %s", resp.StatusCode, body)
	}
	for step := int64(1); step <= 3; step++ {
		for rank := range 2 {
			f.bus.Publish(events.Message{Kind: events.KindMetrics, JobID: "job-1", Metrics: &events.StepMetrics{Step: step, Rank: rank, Loss: 3, ExpertLoadLE: [][]float64{{0.5, 0.5}}}}) //nolint:errcheck
		}
	}
	var pts []point
	_, body = get(t, srv, "/api/jobs/job-1/metrics", testToken)
	if err := json.Unmarshal(body, &pts); err != nil || len(pts) != 3 || pts[2].Step != 3 || len(pts[0].ExpertLoad) != 1 {
		t.Errorf("metrics (rank 0's three steps): %s (%v)", body, err)
	}
}

func TestNotFound(t *testing.T) {
	srv, _ := serve(t, newFake(t))
	for _, path := range []string{
		"/api/jobs/nope", "/api/jobs/nope/metrics", "/api/jobs/nope/stream", "/api/jobs/nope/checkpoints",
		"/api/jobs/job-1/report", // no report yet
		"/api/jobs/a.b", "/api/jobs/%2e%2e", "/api/nothing", "/api/jobs/job-1/nothing", "/api/jobs/job-1/metrics/x",
	} {
		resp, body := get(t, srv, path, testToken)
		var v map[string]string
		if resp.StatusCode != http.StatusNotFound || json.Unmarshal(body, &v) != nil || v["error"] == "" {
			t.Errorf("GET %s: %d %s, want 404 with a JSON error", path, resp.StatusCode, body)
		}
	}
	if resp, _ := get(t, srv, "/nothing.html", ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /nothing.html: %d", resp.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/api/jobs", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Errorf("POST /api/jobs: 200")
	}
}

func TestAssets(t *testing.T) {
	srv, _ := serve(t, newFake(t))
	for path, want := range map[string]string{"/": "text/html", "/app.js": "text/javascript", "/app.css": "text/css"} {
		resp, body := get(t, srv, path, "") // the page holds no data: no token needed
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), want) || len(body) < 100 {
			t.Errorf("GET %s: %d %q (%d bytes)", path, resp.StatusCode, resp.Header.Get("Content-Type"), len(body))
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
			t.Errorf("GET %s: CSP %q", path, csp)
		}
		if strings.Contains(string(body), "http://") && path != "/app.js" || strings.Contains(string(body), "https://") {
			t.Errorf("GET %s: the page must work offline (no outside URL)", path)
		}
	}
}

// sseEvent is one event read from a stream.
type sseEvent struct{ event, data string }

func readEvents(r io.Reader, out chan<- sseEvent) {
	defer close(out)
	sc := bufio.NewScanner(r)
	var ev sseEvent
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if ev.event != "" {
				out <- ev
			}
			ev = sseEvent{}
		case strings.HasPrefix(line, "event: "):
			ev.event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			ev.data = strings.TrimPrefix(line, "data: ")
		}
	}
}

func next(t *testing.T, ch <-chan sseEvent, event string) sseEvent {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("stream ended before a %q event", event)
			}
			if ev.event == event {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %q event within 10s", event)
		}
	}
}

func openStream(t *testing.T, ctx context.Context, srv *httptest.Server, path string) (*http.Response, <-chan sseEvent) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	ch := make(chan sseEvent, 16)
	go readEvents(resp.Body, ch)
	return resp, ch
}

// TestStreamDeliversAndEnds: a published metric arrives on the stream,
// and when the client goes away the handler and its subscriptions end.
func TestStreamDeliversAndEnds(t *testing.T) {
	f := newFake(t)
	srv, h := serve(t, f)
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	resp, ch := openStream(t, ctx, srv, "/api/jobs/job-1/stream")
	var d jobDetail
	if err := json.Unmarshal([]byte(next(t, ch, "job").data), &d); err != nil || d.ID != "job-1" {
		t.Fatalf("first event: %+v (%v)", d, err)
	}
	f.bus.Publish(events.Message{Kind: events.KindMetrics, JobID: "job-1", Metrics: &events.StepMetrics{Step: 41, Rank: 1, Loss: 9}})    //nolint:errcheck // rank 1: not shown
	f.bus.Publish(events.Message{Kind: events.KindMetrics, JobID: "job-1", Metrics: &events.StepMetrics{Step: 41, Rank: 0, Loss: 2.25}}) //nolint:errcheck
	var p point
	if err := json.Unmarshal([]byte(next(t, ch, "metrics").data), &p); err != nil || p.Step != 41 || p.Loss != 2.25 {
		t.Fatalf("metrics event: %+v (%v)", p, err)
	}
	cancel()
	resp.Body.Close()
	done := make(chan struct{})
	go func() { h.streams.Wait(); f.streams.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream handler or its subscriptions outlived the client")
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+2 && time.Now().Before(deadline) { // the client's idle connection may stay
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+2 {
		t.Errorf("%d goroutines after the stream, %d before", n, before)
	}
}

// TestStreamEndsWithJobAndClose: a stream ends by itself after the job
// ended, and Close cuts the others.
func TestStreamEndsWithJobAndClose(t *testing.T) {
	f := newFake(t)
	srv, h := serve(t, f)
	_, ch := openStream(t, context.Background(), srv, "/api/jobs/job-1/stream")
	next(t, ch, "job")
	f.setState("job-1", pb.JobState_JOB_STATE_SUCCEEDED)
	var d jobDetail
	if err := json.Unmarshal([]byte(next(t, ch, "job").data), &d); err != nil || !d.Final {
		t.Fatalf("job update: %+v (%v)", d, err)
	}
	next(t, ch, "end")
	f.setState("job-1", pb.JobState_JOB_STATE_RUNNING)
	_, ch = openStream(t, context.Background(), srv, "/api/jobs/job-1/stream")
	next(t, ch, "job")
	closed := make(chan struct{})
	go func() { h.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end the open stream")
	}
	for range ch { // the body ends
	}
	f.streams.Wait()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/jobs/job-1/stream", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("stream after Close: %d", resp.StatusCode)
	}
}

func TestThin(t *testing.T) {
	var pts []point
	for s := range int64(10) {
		pts = append(pts, point{Step: s})
	}
	pts = append(pts, point{Step: 5, Loss: 1}) // a resumed attempt repeats step 5
	got := thin(pts, 4)
	if len(got) != 4 || got[0].Step != 0 || got[3].Step != 9 {
		t.Errorf("thin: %+v", got)
	}
	all := thin(pts, 100)
	if len(all) != 10 || all[5].Loss != 1 {
		t.Errorf("thin keeps the later point of a step: %+v", all)
	}
}

// TestClientCert: behind a listener that requests but does not demand a
// client certificate (as the daemon's is, for its probes), ClientCert
// keeps every path of the dashboard behind a verified certificate.
func TestClientCert(t *testing.T) {
	server, err := security.EphemeralMutualTLS("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(Config{Source: newFake(t), Token: testToken, ClientCert: true})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{
		Certificates: server.Certificates, ClientCAs: server.RootCAs,
		ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS13,
	}
	srv.StartTLS()
	t.Cleanup(func() { h.Close(); srv.Close() })
	client := func(certs []tls.Certificate) *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: server.RootCAs, Certificates: certs}}}
	}
	do := func(c *http.Client, path string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, path := range []string{"/", "/app.js", "/api/jobs"} {
		if code := do(client(nil), path); code != http.StatusUnauthorized {
			t.Errorf("GET %s without a certificate: %d, want 401", path, code)
		}
		if code := do(client(server.Certificates), path); code != http.StatusOK {
			t.Errorf("GET %s with the cluster's certificate: %d, want 200", path, code)
		}
	}
}
