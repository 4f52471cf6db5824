package e2e

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/switchyard-ml/switchyard/pkg/gpu"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
)

// emuBuild is the switchyard binary built with the cudaemu tag (cgo and
// a C++20 compiler): with gpu.EmulatorEnv set, `device: cuda` runs the
// GPU engine's kernels on the CPU emulator. It lives in TestMain's
// binaries directory (removed when the tests end, not when one test does:
// with -count=N every run uses it).
var emuBuild = sync.OnceValues(func() (string, error) {
	dir := filepath.Join(bins.dir, "cudaemu")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	cmd := exec.Command("go", "build", "-tags", "cudaemu", "-o", dir+"/", "./cmd/switchyard")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build -tags cudaemu ./cmd/switchyard (needs cgo and g++; .ci/run installs g++): %v\n%s", err, out)
	}
	return filepath.Join(dir, "switchyard"), nil
})

// TestGPUJobOnEmulator: a GPU job end to end through a real cluster, the
// workers' ranks running the GPU engine (its kernels on the CPU emulator:
// the workers' trainer is a cudaemu build): dp 2 ep 2 on two workers that
// declare one GPU each, so every micro-batch sends expert rows between
// the ranks and the gradients are all-reduced on the device buffers
// (host-staged: the emulator is not a GPU NCCL could use). A kill -9 of
// one worker mid-job: the job resumes from its checkpoint on the GPUs
// and succeeds; after the resume the loss continues bitwise as before the
// kill, and every step's loss is a one-process run's of the same global
// batch on the emulated GPU within 1e-5.
func TestGPUJobOnEmulator(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end cluster test: not in -short")
	}
	trainer, err := emuBuild()
	if err != nil {
		t.Fatal(err)
	}
	emuEnv := []string{gpu.EmulatorEnv + "=1", "OMP_NUM_THREADS=1"}
	c := startClusterWith(t, 1, func(c *cluster) {
		c.gpus, c.trainer, c.workerEnv = 1, trainer, emuEnv
	}, "g1", "g2", "g3")
	c.waitIdleWorkers(3)
	const steps, every = 16, 4
	spec := fmt.Sprintf(`name: gpu-emu
device: cuda
precision: fp32
model: {preset: tiny, dim: 32, layers: 2, heads: 2, experts: 4, top_k: 2, hidden: 32, seq_len: 32}
parallel: {dp: 2, ep: 2}
data: {corpus: demo, demo_bytes: 65536, eval_seqs: 2}
micro_batch: 2
accumulation: 2
steps: %d
seed: 5
optim: {lr: 0.002, warmup_steps: 2}
resources: {cpu_cores: 1, memory_mib: 1024, gpus: 1}
checkpoint: {interval_steps: %d}
restart: {max_restarts: 2, backoff_seconds: 0}
`, steps, every)
	id := c.submit("gpu-emu", spec)
	j := c.waitJob(id, 300*time.Second, "past step 6", pastStep(6))
	c.mustBeRunning(j, "the kill")
	victim := j.Placement[1].WorkerId
	c.workers[victim].kill9()
	_, from := c.resumedOnce(id, 480*time.Second)
	rank0 := func(attempt int) string {
		return filepath.Join(c.storage, "jobs", id, fmt.Sprintf("attempt-%d", attempt), "rank-0")
	}
	before := metricsLosses(t, filepath.Join(rank0(0), "metrics.jsonl"))
	after := metricsLosses(t, filepath.Join(rank0(1), "metrics.jsonl"))
	// the steps both attempts ran after the checkpoint (none if the kill
	// came right after it) give the same loss, to the bit
	same := 0
	for s := from + 1; s <= steps; s++ {
		l0, ok0 := before[s]
		l1, ok1 := after[s]
		if !ok0 || !ok1 {
			continue
		}
		if l0 != l1 {
			t.Errorf("loss at step %d: %v before the kill, %v after the resume from %d; want identical", s, l0, l1, from)
		}
		same++
	}
	// the ranks ran the GPU engine, expert-parallel, on the emulator
	report, err := os.ReadFile(filepath.Join(rank0(1), "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"device": "CPU emulator"`, `"precision": "fp32"`, "expert rows over the EP group (2 ranks): host-staged collectives"} {
		if !strings.Contains(string(report), want) {
			t.Errorf("report.json lacks %q:\n%s", want, report)
		}
	}

	// one process, the same global batch (micro-batch 2 x 2 ranks)
	sp, err := jobspec.Parse([]byte(spec))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := sp.TrainConfig()
	if err != nil {
		t.Fatal(err)
	}
	cfg.MicroBatch *= 2
	cfg.Checkpoint.Dir = ""
	raw, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(c.dir, "single.yaml")
	if err := os.WriteFile(run, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(c.dir, "single")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, trainer, "train", "--config", run, "--out", out, "--json")
	cmd.Env = append(os.Environ(), emuEnv...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("one process: %v\n%s", err, tail(string(b), 3000))
	}
	single := metricsLosses(t, filepath.Join(out, "metrics.jsonl"))
	worst := 0.0
	for s := int64(1); s <= steps; s++ {
		got, ok := after[s]
		if s <= from {
			got, ok = before[s]
		}
		want, ok2 := single[s]
		if !ok || !ok2 {
			t.Fatalf("step %d: no loss (cluster %v, one process %v)", s, ok, ok2)
		}
		worst = max(worst, math.Abs(got-want)/math.Abs(want))
	}
	t.Logf("resumed from step %d (%d steps run by both attempts, identical); worst relative loss difference to one process over %d steps: %.2e", from, same, steps, worst)
	if worst > 1e-5 {
		t.Errorf("the cluster's loss is off the one-process run's by %.2e relative", worst)
	}
}
