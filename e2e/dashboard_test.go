package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/switchyard-ml/switchyard/pkg/security"
)

// chromium is Debian's browser (.ci/run installs it), driven headless.
const chromium = "/usr/bin/chromium"

// TestDashboard opens the coordinator's web dashboard in a real browser
// (headless Chromium) on a real cluster running a job: it finds the job
// in the list, watches its loss curve gain points as steps arrive, opens
// the expert-load heat map, and writes screenshots of both. A wrong token
// gets the wrong-token message and no data, from the page and the API.
func TestDashboard(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end cluster test: not in -short")
	}
	if _, err := exec.LookPath(chromium); err != nil {
		t.Fatalf("the dashboard e2e needs Chromium at %s (Debian: apt-get install chromium; .ci/run does): %v", chromium, err)
	}
	shots := os.Getenv("SWITCHYARD_SCREENSHOTS")
	if shots == "" {
		shots = "screenshots"
	}
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}

	// one coordinator with its dashboard, two workers
	c := startCluster(t, 0)
	ports := freePorts(t, 3)
	c.coordIDs = []string{"coord-1"}
	c.raftAddrs = []string{fmt.Sprintf("127.0.0.1:%d", ports[0])}
	c.apiAddrs = []string{fmt.Sprintf("127.0.0.1:%d", ports[1])}
	c.httpAddrs = []string{fmt.Sprintf("127.0.0.1:%d", ports[2])}
	c.coords = make([]*proc, 1)
	c.startCoordinator(0, "coord-1="+c.raftAddrs[0])
	for _, id := range []string{"w1", "w2"} {
		c.workerPorts[id] = freePortRun(t, 1)
		c.startWorker(id)
	}
	base := "http://" + c.httpAddrs[0] + "/"
	waitTCP(t, c.httpAddrs[0], 30*time.Second)
	// long enough to watch for the whole test; it is cancelled at the end
	id := c.submit("dash", jobSpec("dash", 5000, 0, 100))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.Headless, chromedp.DisableGPU,
		chromedp.WindowSize(1400, 1100), chromedp.Flag("disable-dev-shm-usage", true))...)
	defer cancelAlloc()
	browser, closeBrowser := chromedp.NewContext(alloc, chromedp.WithErrorf(t.Logf))
	defer closeBrowser()
	// the first run starts the browser (and ends it with its context's end,
	// so not under a step's timeout)
	if err := chromedp.Do(browser); err != nil {
		t.Fatalf("start %s: %v", chromium, err)
	}

	// the right token, carried in the fragment
	do(t, browser, 60*time.Second, "the job in the list",
		chromedp.Navigate(base+"#token="+c.token),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`#jobs-table tr.job-row[data-job=%q]`, id))))
	addr := value(t, browser, 5*time.Second, "the address", chromedp.Location())
	if addr != base+"#/jobs" {
		t.Errorf("the token stayed in the address: %s", addr)
	}
	do(t, browser, 20*time.Second, "the job page",
		chromedp.Click(chromedp.CSS(fmt.Sprintf(`#jobs-table a[data-job=%q]`, id))),
		chromedp.WaitVisible(chromedp.CSS(`#chart-loss svg`)))
	// points stored before now may still be on their way to the page (the
	// stream replays them first): the curve grows live when it shows a
	// step after the newest one stored now, and more points than at first
	first := waitInt(t, browser, 60*time.Second, "loss curve points", `+document.querySelector('#chart-loss').dataset.points`, 1)
	stored := newestStoredStep(t, base, c.token, id)
	step := waitInt(t, browser, 60*time.Second, fmt.Sprintf("a loss curve point after step %d", stored), `+document.querySelector('#chart-loss').dataset.lastStep`, stored+1)
	more := waitInt(t, browser, 30*time.Second, "more loss curve points", `+document.querySelector('#chart-loss').dataset.points`, first+1)
	t.Logf("loss curve: %d points, then %d up to step %d as steps arrived (step %d was the newest stored when it had %d)", first, more, step, stored, first)
	title := value(t, browser, 5*time.Second, "the job's name", chromedp.Text(chromedp.CSS(`#job-name`)))
	// the job record's updates arrive too (the coordinator records RUNNING
	// from the ranks' reports, a moment after the first steps)
	waitInt(t, browser, 30*time.Second, "the job shown RUNNING", `document.querySelector('#job-state').textContent === 'RUNNING' ? 1 : 0`, 1)
	if title != "dash" {
		t.Errorf("job page title %q", title)
	}
	curves := screenshot(t, browser, filepath.Join(shots, "dashboard-job.png"))

	do(t, browser, 20*time.Second, "the heat map",
		chromedp.Click(chromedp.CSS(`#tab-load`)),
		chromedp.WaitVisible(chromedp.CSS(`#heatmaps canvas.heatmap`)))
	cells := waitInt(t, browser, 20*time.Second, "heat map cells",
		`[...document.querySelectorAll('#heatmaps canvas.heatmap')].reduce((n, c) => n + +c.dataset.cells, 0)`, 2*4)
	layers := waitInt(t, browser, 5*time.Second, "heat maps", `document.querySelectorAll('#heatmaps canvas.heatmap').length`, 2)
	t.Logf("expert-load heat map: %d layers, %d cells", layers, cells)
	heat := screenshot(t, browser, filepath.Join(shots, "dashboard-heatmap.png"))
	t.Logf("screenshots: %s (job page with curves), %s (expert-load heat map)", curves, heat)

	// a wrong token, in a new tab (its own session storage)
	tab, closeTab := chromedp.NewContext(browser)
	defer closeTab()
	if err := chromedp.Do(tab); err != nil {
		t.Fatalf("a new tab: %v", err)
	}
	do(t, tab, 30*time.Second, "the wrong-token message",
		chromedp.Navigate(base+"#token=not-the-token"),
		chromedp.WaitVisible(chromedp.CSS(`#auth-msg`)))
	msg := value(t, tab, 5*time.Second, "the wrong-token message", chromedp.Text(chromedp.CSS(`#auth-msg`)))
	if want := "Wrong token"; len(msg) < len(want) || msg[:len(want)] != want {
		t.Errorf("wrong-token message %q", msg)
	}
	if rows := waitInt(t, tab, 5*time.Second, "job rows", `document.querySelectorAll('#jobs-table tbody tr').length`, 0); rows != 0 {
		t.Errorf("%d job rows shown with a wrong token", rows)
	}
	if !value(t, tab, 5*time.Second, "the hidden views", chromedp.Evaluate[bool](`document.querySelector('#main').hidden`)) {
		t.Error("the views are shown with a wrong token")
	}
	for name, tok := range map[string]string{"wrong token": "not-the-token", "worker token": security.WorkerToken(c.token, "w1"), "no token": ""} {
		if code := apiStatus(t, base+"api/jobs", tok); code != http.StatusUnauthorized {
			t.Errorf("GET /api/jobs with a %s: %d, want 401", name, code)
		}
	}
	if code := apiStatus(t, base+"api/jobs", c.token); code != http.StatusOK {
		t.Errorf("GET /api/jobs with the cluster token: %d", code)
	}
	c.mustCLI("job", "cancel", id)
}

// do runs actions in the browser within timeout; what names them in a
// failure.
func do(t *testing.T, ctx context.Context, timeout time.Duration, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := chromedp.Do(sctx, actions...); err != nil {
		t.Fatalf("browser: %s: %v", what, err)
	}
}

// value runs one action that returns a value.
func value[T any](t *testing.T, ctx context.Context, timeout time.Duration, what string, action chromedp.Action[T]) T {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	v, err := chromedp.Run(sctx, action)
	if err != nil {
		t.Fatalf("browser: %s: %v", what, err)
	}
	return v
}

// waitInt polls the page's integer expression js until it is at least
// least (the first value is returned when least is 0); it fails the test
// at the deadline.
func waitInt(t *testing.T, ctx context.Context, timeout time.Duration, what, js string, least int) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var n int
	for {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		v, err := chromedp.Run(sctx, chromedp.Evaluate[int](js))
		cancel()
		if err == nil {
			n = v
		}
		if err == nil && n >= least {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("browser: %s: %d (%v) after %v, want at least %d", what, n, err, timeout, least)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// screenshot writes the whole page as PNG to path and returns the path.
func screenshot(t *testing.T, ctx context.Context, path string) string {
	t.Helper()
	png := value(t, ctx, 20*time.Second, "screenshot "+path, chromedp.FullScreenshot(100))
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return path
	}
	return abs
}

// newestStoredStep is the newest step of the job's stored metrics, read
// from the dashboard's API.
func newestStoredStep(t *testing.T, base, token, id string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+"api/jobs/"+id+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var pts []struct {
		Step int `json:"step"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&pts); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/jobs/%s/metrics: %d %v", id, resp.StatusCode, err)
	}
	newest := 0
	for _, p := range pts {
		newest = max(newest, p.Step)
	}
	return newest
}

func apiStatus(t *testing.T, url, token string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
