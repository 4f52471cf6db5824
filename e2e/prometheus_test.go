package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestPrometheusScrapesDevCluster runs a dev cluster with its metrics on
// (`switchyard dev --metrics`) and a job, and a real Prometheus (Debian's
// prometheus package) that scrapes the coordinator and both workers from
// the file_sd list the dev cluster writes, with the alerting rules of
// deploy/prometheus loaded. It checks that queries for a coordinator, a
// worker and a training series return values, that every query of the
// Grafana dashboard evaluates, and that `promtool check metrics` accepts
// each endpoint's output.
func TestPrometheusScrapesDevCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: not in -short")
	}
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("prometheus: %v (Debian's prometheus package)", err)
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool: %v (Debian's prometheus package)", err)
	}
	deploy, _ := filepath.Abs("../deploy")
	for _, args := range [][]string{
		{"check", "rules", filepath.Join(deploy, "prometheus", "alerts.yml")},
		{"test", "rules", filepath.Join(deploy, "prometheus", "alerts_test.yml")},
	} {
		if out, err := exec.Command(promtool, args...).CombinedOutput(); err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	dir := t.TempDir()
	spec := filepath.Join(dir, "job.yaml")
	// a job that outlives the test (the dev cluster stops at its end):
	// rank 0's series exist only while it runs, and Prometheus must be up
	// to see them
	if err := os.WriteFile(spec, []byte(jobSpec("e2e-prom", 1_000_000, 0, 50)), 0o644); err != nil {
		t.Fatal(err)
	}
	cluster := filepath.Join(dir, "cluster")
	start(t, "dev", nil, bins.switchyard, "dev", "--metrics", "--keep", "--workers", "2", "--spec", spec, "--data-dir", cluster)
	targetsFile := filepath.Join(cluster, "metrics-targets.json")
	var groups []struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	eventually(t, 90*time.Second, "dev cluster's metrics-targets.json", func() error {
		b, err := os.ReadFile(targetsFile)
		if err != nil {
			return err
		}
		return json.Unmarshal(b, &groups)
	})
	roles := map[string]int{}
	var endpoints []string
	for _, g := range groups {
		roles[g.Labels["role"]] += len(g.Targets)
		endpoints = append(endpoints, g.Targets...)
	}
	if roles["coordinator"] != 1 || roles["worker"] != 2 {
		t.Fatalf("targets by role %v, want 1 coordinator and 2 workers", roles)
	}

	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, `global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%q]
scrape_configs:
  - job_name: switchyard-dev
    file_sd_configs: [{files: [%q], refresh_interval: 1s}]
`, filepath.Join(deploy, "prometheus", "alerts.yml"), targetsFile), 0o644); err != nil {
		t.Fatal(err)
	}
	promAddr := fmt.Sprintf("127.0.0.1:%d", freePorts(t, 1)[0])
	start(t, "prometheus", nil, promBin, "--config.file", cfg, "--storage.tsdb.path", filepath.Join(dir, "tsdb"),
		"--web.listen-address", promAddr, "--log.level", "warn")
	waitTCP(t, promAddr, 30*time.Second)
	p := promAPI{base: "http://" + promAddr}

	eventually(t, 60*time.Second, "Prometheus scraping all three targets", func() error {
		v, err := p.scalar(`count(up{job="switchyard-dev"} == 1)`)
		if err == nil && v != 3 {
			err = fmt.Errorf("%v targets up", v)
		}
		return err
	})
	// Series stay in Prometheus's store after a job ends and its series
	// leave the worker's endpoint: last_over_time sees them either way.
	eventually(t, 120*time.Second, "rank 0's step in Prometheus", func() error {
		v, err := p.scalar(`max(last_over_time(switchyard_train_step{job_id=~"e2e-prom.*"}[10m]))`)
		if err == nil && v < 5 {
			err = fmt.Errorf("step %v", v)
		}
		return err
	})
	for _, c := range []struct {
		query string
		ok    func(float64) bool
		want  string
	}{
		// coordinator
		{`max(switchyard_raft_leader{role="coordinator"})`, eq(1), "1 (the dev replica leads)"},
		{`max(last_over_time(switchyard_jobs{role="coordinator",state="running"}[10m]))`, eq(1), "1 running job"},
		{`sum(switchyard_placements_total{kind="full"})`, eq(1), "1 placement"},
		{`max(switchyard_etcd_up)`, eq(1), "1"},
		{`max(switchyard_nats_up)`, eq(1), "1"},
		{`sum(switchyard_raft_apply_duration_seconds_count{op="place_job"})`, eq(1), "1 place_job applied"},
		// workers
		{`count(switchyard_worker_lease_renewals_total)`, eq(2), "2 workers"},
		{`sum(max_over_time(switchyard_worker_ranks_running[10m]))`, eq(2), "2 ranks (DP=2)"},
		{`sum(switchyard_worker_sync_duration_seconds_count)`, gt(0), "> 0 syncs"},
		// training (rank 0's worker)
		{`count(last_over_time(switchyard_train_expert_load_share[10m]))`, eq(2 * 4), "2 layers x 4 experts"},
		{`sum(last_over_time(switchyard_train_expert_load_share{layer="0"}[10m]))`, near(1, 1e-6), "shares of a layer summing to 1"},
		{`max(last_over_time(switchyard_train_loss[10m]))`, between(0.1, 8), "a cross-entropy in nats"},
		{`max(last_over_time(switchyard_train_tokens_per_second[10m]))`, gt(0), "> 0"},
		{`max(last_over_time(switchyard_train_expert_load_imbalance_ratio[10m]))`, gt(1 - 1e-9), ">= 1"},
		{`sum(last_over_time(switchyard_train_step_duration_seconds_count[10m]))`, gt(3), "> 3 steps timed"},
		{`sum(last_over_time(switchyard_train_collective_seconds_total{op="grad_sync"}[10m]))`, gt(0), "> 0 (DP=2 all-reduces gradients)"},
	} {
		v, err := p.scalar(c.query)
		if err != nil {
			t.Errorf("%s: %v", c.query, err)
			continue
		}
		if !c.ok(v) {
			t.Errorf("%s = %v, want %s", c.query, v, c.want)
		}
	}

	// the alerting rules are loaded and evaluate without errors
	var rules struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name, Health, LastError string
				}
			}
		}
	}
	eventually(t, 30*time.Second, "alerting rules evaluated", func() error {
		if err := p.get("/api/v1/rules", nil, &rules); err != nil {
			return err
		}
		n := 0
		for _, g := range rules.Data.Groups {
			for _, r := range g.Rules {
				if r.Health != "ok" {
					return fmt.Errorf("rule %s: health %q %s", r.Name, r.Health, r.LastError)
				}
				n++
			}
		}
		if n < 8 {
			return fmt.Errorf("%d rules loaded", n)
		}
		return nil
	})

	// every query of the Grafana dashboard evaluates
	for _, q := range dashboardQueries(t, filepath.Join(deploy, "grafana", "switchyard.json")) {
		var r promResult
		if err := p.get("/api/v1/query", url.Values{"query": {q}}, &r); err != nil {
			t.Errorf("dashboard query %s: %v", q, err)
		}
	}

	// what each endpoint serves passes promtool's lint
	for _, ep := range endpoints {
		resp, err := http.Get("http://" + ep + "/metrics")
		if err != nil {
			t.Fatalf("scrape %s: %v", ep, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = bytes.NewReader(body)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics on %s: %v\n%s", ep, err, out)
		}
		if !bytes.Contains(body, []byte("switchyard_")) {
			t.Errorf("%s serves no switchyard_ series", ep)
		}
	}
}

func eq(want float64) func(float64) bool { return func(v float64) bool { return v == want } }
func gt(min float64) func(float64) bool  { return func(v float64) bool { return v > min } }
func between(lo, hi float64) func(float64) bool {
	return func(v float64) bool { return v >= lo && v <= hi }
}
func near(want, tol float64) func(float64) bool {
	return func(v float64) bool { return v >= want-tol && v <= want+tol }
}

// promAPI queries a Prometheus server's HTTP API.
type promAPI struct{ base string }

type promResult struct {
	Status string `json:"status"`
	Error  string `json:"error"`
	Data   struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Value [2]any `json:"value"`
		} `json:"result"`
	} `json:"data"`
}

func (p promAPI) get(path string, q url.Values, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base+path+"?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", path, resp.Status, b)
	}
	return json.Unmarshal(b, out)
}

// scalar runs an instant query that must return exactly one sample.
func (p promAPI) scalar(query string) (float64, error) {
	var r promResult
	if err := p.get("/api/v1/query", url.Values{"query": {query}}, &r); err != nil {
		return 0, err
	}
	if r.Status != "success" || len(r.Data.Result) != 1 {
		return 0, fmt.Errorf("status %q, %d samples (%s)", r.Status, len(r.Data.Result), r.Error)
	}
	s, ok := r.Data.Result[0].Value[1].(string)
	if !ok {
		return 0, fmt.Errorf("sample %v", r.Data.Result[0].Value)
	}
	return strconv.ParseFloat(s, 64)
}

// dashboardQueries are the PromQL expressions of a Grafana dashboard,
// with its variables set to match everything ($layer: layer 0).
func dashboardQueries(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	r := strings.NewReplacer("$job", ".*", "$layer", "0")
	var out []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			out = append(out, r.Replace(tg.Expr))
		}
	}
	if len(out) < 15 {
		t.Fatalf("%s: %d queries", path, len(out))
	}
	return out
}
