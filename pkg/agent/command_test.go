package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/switchyard-ml/switchyard/pkg/events"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	"github.com/switchyard-ml/switchyard/pkg/train"
	"github.com/switchyard-ml/switchyard/pkg/workerconfig"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// The tap sends the prefixed lines (in any chunking) to the metrics file
// and everything else on, in order; a metrics line beyond the limit is
// dropped and counted; the follower counts malformed ones.
func TestMetricsTap(t *testing.T) {
	in := "hello\n" + MetricsPrefix + `{"step": 1, "loss": 2.5}` + "\nSWITCH not metrics\n" +
		MetricsPrefix + `{"step": 2, "loss": 2.25, "tokens_per_s": 10}` + "\n" +
		MetricsPrefix + "not json\n" + MetricsPrefix + `{"step": 0, "loss": 1}` + "\n" +
		MetricsPrefix + strings.Repeat("x", maxMetricsLine+10) + "\nlast" + "\n" +
		MetricsPrefix + `{"step": 3, "loss": 2}`
	for _, chunk := range []int{1, 3, 7, 64, len(in)} {
		dir := t.TempDir()
		path := filepath.Join(dir, "metrics.jsonl")
		var next bytes.Buffer
		tap, err := newMetricsTap(&next, path)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(in); i += chunk {
			tap.Write([]byte(in[i:min(i+chunk, len(in))]))
		}
		tap.close()
		if got, want := next.String(), "hello\nSWITCH not metrics\nlast\n"; got != want {
			t.Fatalf("chunk %d: passed on %q, want %q", chunk, got, want)
		}
		if tap.dropped != 1 {
			t.Fatalf("chunk %d: dropped %d, want 1", chunk, tap.dropped)
		}
		f := metricsFollower{path: path}
		ms := f.read()
		if len(ms) != 3 || ms[0].Step != 1 || ms[1].Step != 2 || ms[1].TokensPerS != 10 || ms[2].Loss != 2 {
			t.Fatalf("chunk %d: metrics %+v", chunk, ms)
		}
		if f.bad != 2 || !strings.Contains(f.why, "step 0") {
			t.Fatalf("chunk %d: %d malformed (%s), want 2", chunk, f.bad, f.why)
		}
	}
}

func TestMalformedMetricsEvents(t *testing.T) {
	tk := newTask(taskKey{jobID: "j", rank: 0}, nil)
	for range 12 {
		tk.malformedMetrics(1, "bad")
	}
	tk.malformedMetrics(100)
	tk.finalMalformed() // told already: nothing more
	tk.malformedMetrics(3)
	tk.finalMalformed() // the whole count, which no mark told
	var msgs []string
	for _, e := range tk.status().Events {
		msgs = append(msgs, e.Message)
	}
	want := []string{"1 malformed metrics line(s) skipped (bad)", "10 malformed metrics line(s) skipped (bad)", "112 malformed metrics line(s) skipped",
		"115 malformed metrics line(s) skipped in all"}
	if strings.Join(msgs, "|") != strings.Join(want, "|") {
		t.Fatalf("events %q, want %q", msgs, want)
	}
}

// Each slot of a worker has its own GPUs: declared ones by position,
// detected ones by their index on the machine.
func TestVisibleGPUs(t *testing.T) {
	a := &Agent{o: Options{Config: workerconfig.Config{Resources: workerconfig.Resources{CPUCores: 8, GPUs: 4}}}}
	for _, c := range []struct {
		slot, n int
		want    string
	}{{0, 0, ""}, {0, 1, "0"}, {3, 1, "3"}, {2, 2, "2"}, {4, 1, ""}} {
		if got := a.visibleGPUs(c.slot, c.n); got != c.want {
			t.Errorf("declared, slot %d, %d GPUs: %q, want %q", c.slot, c.n, got, c.want)
		}
	}
	a.o.Config.Slots = 2 // two GPUs a slot
	if got := a.visibleGPUs(1, 2); got != "2,3" {
		t.Errorf("2 slots of 2: slot 1: %q", got)
	}
	a.o.Config.Resources.GPUDevices = []workerconfig.GPU{{Index: 3}, {Index: 5}, {Index: 6}, {Index: 7}}
	if got := a.visibleGPUs(1, 2); got != "6,7" {
		t.Errorf("detected: %q", got)
	}
}

// A worker runs command jobs only when its config allows them; when it
// does, the rank's run.yaml is the command config with rank 0's worker as
// the master.
func TestPrepareCommand(t *testing.T) {
	spec := "name: j\nruntime: command\ncommand: /bin/true\nranks: 2\n"
	task := &apiv1.Task{JobId: "j-1", Attempt: 1, Rank: 1, WorldSize: 2, Dp: 2, Spec: []byte(spec), Peers: []string{"10.1.1.1:7070", "10.1.1.2:7070"}}
	a := &Agent{o: Options{Config: workerconfig.Config{StoragePath: t.TempDir()}}}
	var r *refusal
	if _, err := a.prepare(task); err == nil || !strings.Contains(err.Error(), "allow_commands") || !errors.As(err, &r) {
		t.Fatalf("err %v, want a refusal naming allow_commands", err)
	}
	a.o.Config.AllowCommands = true
	l, err := a.prepare(task)
	if err != nil {
		t.Fatal(err)
	}
	if !l.command || len(l.args) != 3 || l.args[0] != "exec" {
		t.Fatalf("launch %+v", l)
	}
	raw, err := os.ReadFile(l.args[2])
	if err != nil {
		t.Fatal(err)
	}
	var c jobspec.CommandConfig
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	if c.Rank != 1 || c.World != 2 || c.MasterAddr != "10.1.1.1" || c.MasterPort != 7070 || c.Attempt != 1 || c.WorkingDir != l.runDir {
		t.Fatalf("config %+v", c)
	}
	if fi, err := os.Stat(c.StagingDir()); err != nil || !fi.IsDir() {
		t.Fatalf("staging dir: %v", err)
	}
}

// A rank in slot k of a worker listens on the worker's port + k and sees
// the slot's GPUs only; two ranks of one job on one worker get their own
// run directories.
func TestPrepareSlots(t *testing.T) {
	spec := "name: j\nparallel: {dp: 2}\nresources: {cpu_cores: 1, memory_mib: 512, gpus: 1}\n"
	a := &Agent{o: Options{Config: workerconfig.Config{StoragePath: t.TempDir(), ListenAddress: "127.0.0.1:7070",
		Resources: workerconfig.Resources{CPUCores: 2, MemoryMiB: 2048, GPUs: 2}}}}
	peers := []string{"127.0.0.1:7070", "127.0.0.1:7071"}
	dirs := map[string]bool{}
	for slot := range 2 {
		l, err := a.prepare(&apiv1.Task{JobId: "j-1", Rank: int32(slot), Slot: int32(slot), WorldSize: 2, Dp: 2, Spec: []byte(spec), Peers: peers})
		if err != nil {
			t.Fatal(err)
		}
		args := strings.Join(l.args, " ")
		if want := "--listen " + peers[slot]; !strings.Contains(args, want) {
			t.Errorf("slot %d: args %q lack %q", slot, args, want)
		}
		if want := "CUDA_VISIBLE_DEVICES=" + []string{"0", "1"}[slot] + " CUDA_DEVICE_ORDER=PCI_BUS_ID"; strings.Join(l.env, " ") != want {
			t.Errorf("slot %d: env %v, want %v", slot, l.env, want)
		}
		dirs[l.runDir] = true
	}
	if len(dirs) != 2 {
		t.Errorf("run directories %v: want one per rank", dirs)
	}
	// a slot the worker does not have (restarted with fewer) is refused
	if _, err := a.prepare(&apiv1.Task{JobId: "j-1", Rank: 1, Slot: 2, WorldSize: 2, Dp: 2, Spec: []byte(spec), Peers: peers}); err == nil || !strings.Contains(err.Error(), "slot 2: this worker has 2 slot(s)") {
		t.Errorf("slot out of range: %v", err)
	}
}

// A command rank sees the GPUs of all its job's ranks on the worker, in
// local-rank order (torchrun's convention: cuda:LOCAL_RANK is its own).
func TestCommandSeesLocalGPUs(t *testing.T) {
	spec := "name: j\nruntime: command\ncommand: /bin/true\nranks: 2\nresources: {cpu_cores: 1, memory_mib: 512, gpus: 1}\n"
	a := &Agent{o: Options{Config: workerconfig.Config{StoragePath: t.TempDir(), ListenAddress: "127.0.0.1:7070", AllowCommands: true,
		Resources: workerconfig.Resources{CPUCores: 4, MemoryMiB: 4096, GPUs: 4}}}}
	task := &apiv1.Task{JobId: "j-1", Rank: 1, Slot: 1, WorldSize: 2, Dp: 2, Spec: []byte(spec), Peers: []string{"127.0.0.1:7073", "127.0.0.1:7071"},
		NodeRank: 0, Nodes: 1, LocalRank: 1, LocalWorldSize: 2, LocalSlots: []int32{3, 1}}
	l, err := a.prepare(task)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(l.args[2])
	var c jobspec.CommandConfig
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	if c.CUDAVisibleDevices != "3,1" || c.Node != (jobspec.Node{Rank: 0, Nodes: 1, LocalRank: 1, LocalWorld: 2}) || c.MasterPort != 7073 {
		t.Fatalf("CUDA_VISIBLE_DEVICES %q, node %+v, master port %d", c.CUDAVisibleDevices, c.Node, c.MasterPort)
	}
}

// A command rank's metrics without an LBL are published as carrying none
// (job watch prints no lbl then), not as an LBL of 0.
func TestMetricsWithoutLBL(t *testing.T) {
	bus := events.NewMemory()
	a := &Agent{o: Options{Bus: bus}, log: slog.New(slog.DiscardHandler)}
	tk := newTask(taskKey{jobID: "j", rank: 0}, &apiv1.Task{WorldSize: 1})
	a.reportMetrics(tk, train.StepMetrics{Step: 1, Loss: 2.5})
	a.reportMetrics(tk, train.StepMetrics{Step: 2, Loss: 2.25, LBL: []float64{0, 0}})
	ms, _ := bus.History(context.Background(), events.Filter{Kind: events.KindMetrics, JobID: "j"})
	if len(ms) != 2 || !ms[0].Metrics.NoLBL || ms[1].Metrics.NoLBL {
		t.Fatalf("metrics %+v", ms)
	}
}

// A command job whose trainer finishes without ever committing a
// checkpoint says so in its history (a NoCheckpoint event with rank 0's
// success); one that committed does not, nor do the other ranks.
func TestCommandWithoutCheckpointSaysSo(t *testing.T) {
	h := start(t, func(o *Options) { o.Config.AllowCommands = true })
	h.coord.mu.Lock()
	h.coord.committed = map[string][]int64{"ok-committed": {5}}
	h.coord.mu.Unlock()
	spec := "name: c\nruntime: command\ncommand: true\n"
	h.coord.set(newTestTask("ok-uncommitted", 0, 1, spec), newTestTask("ok-committed", 0, 1, spec), newTestTask("ok-uncommitted-2", 1, 2, spec))
	noCheckpoint := func(st *apiv1.TaskStatus) bool {
		for _, ev := range st.GetEvents() {
			if ev.GetType() == "NoCheckpoint" && strings.Contains(ev.GetMessage(), "without committing a checkpoint") {
				return true
			}
		}
		return false
	}
	if st := h.waitState("ok-uncommitted", 0, apiv1.TaskState_TASK_STATE_SUCCEEDED); !noCheckpoint(st) {
		t.Errorf("a trainer that never committed: events %v", st.GetEvents())
	}
	if st := h.waitState("ok-committed", 0, apiv1.TaskState_TASK_STATE_SUCCEEDED); noCheckpoint(st) {
		t.Errorf("a trainer that committed step 5: events %v", st.GetEvents())
	}
	if st := h.waitState("ok-uncommitted-2", 1, apiv1.TaskState_TASK_STATE_SUCCEEDED); noCheckpoint(st) {
		t.Errorf("rank 1: events %v", st.GetEvents())
	}
}

// A metrics line whose step is past the job's steps is skipped as
// malformed (taken, it would have hidden every later step).
func TestMetricsStepPastTheJob(t *testing.T) {
	path := filepath.Join(t.TempDir(), "metrics.jsonl")
	var lines []string
	for _, step := range []int64{1, 2, 3, 1_000_000, 4, 9223372036854775807, 5, 6, 7} {
		lines = append(lines, fmt.Sprintf(`{"step": %d, "loss": 2.5}`, step))
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a := &Agent{o: Options{Bus: events.NewMemory()}, log: slog.New(slog.DiscardHandler)}
	tk := newTask(taskKey{jobID: "j", rank: 0}, &apiv1.Task{WorldSize: 1})
	exited := make(chan struct{})
	close(exited) // one final read
	a.followMetrics(tk, path, 7, exited)
	st := tk.status()
	var msgs []string
	for _, e := range st.Events {
		msgs = append(msgs, e.Message)
	}
	if st.GetStep() != 7 || !slices.Contains(msgs, "2 malformed metrics line(s) skipped (step 9223372036854775807 is past the job's 7 steps)") {
		t.Fatalf("step %d, events %q", st.GetStep(), msgs)
	}
}
