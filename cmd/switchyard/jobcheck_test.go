package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/gpu"
	"github.com/switchyard-ml/switchyard/pkg/model"
	"github.com/switchyard-ml/switchyard/pkg/runconfig"
)

// TestJobCheck: `job check` works out a spec's layout and per-rank needs
// without a cluster: the GPU engine's exact device memory (what New
// allocates, plus what it leaves the libraries), the smaller need with
// the attention recomputed, what placement asks (never more than the
// need), the parameters a rank holds; a command job shows its declared
// GPU memory, and a bad spec is a usage error naming the field.
func TestJobCheck(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	spec := write("med.yaml", "name: med\ndevice: cuda\nmodel: {preset: medium}\nmicro_batch: 16\nparallel: {tp: 2, dp: 4, ep: 2}\naccumulation: 2\nresources: {cpu_cores: 4, memory_mib: 65536, gpus: 1}\n")
	r := runCmd(t, false, "job", "check", spec, "-o", "json")
	wantCode(t, r, 0)
	var jc jobCheck
	if err := json.Unmarshal([]byte(r.stdout), &jc); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	m, _ := model.Preset("medium")
	est, err := gpu.EstimateParallel(m, 16, gpu.BF16, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case jc.World != 8 || jc.SequencesPerStep != 16*4*2 || jc.Precision != "bf16":
		t.Errorf("layout %+v", jc)
	case jc.RankParams != model.CountParams(m, 0, m.Experts/2, 2) || int64(jc.RankParams) >= jc.Params:
		t.Errorf("a rank holds %d of %d parameters", jc.RankParams, jc.Params)
	case jc.GPUBuffers == nil || *jc.GPUBuffers != est || jc.GPUNeedBytes != est.Total+runconfig.GPUReserveBytes:
		t.Errorf("GPU buffers %+v, need %d; the engine's estimate %+v", jc.GPUBuffers, jc.GPUNeedBytes, est)
	case !(jc.GPURecomputeNeed < jc.GPUNeedBytes) || jc.GPUPlacementMiB<<20 > jc.GPUNeedBytes || jc.GPUPlacementMiB < 1:
		t.Errorf("recomputed %d, placement %d MiB, need %d", jc.GPURecomputeNeed, jc.GPUPlacementMiB, jc.GPUNeedBytes)
	}
	r = runCmd(t, false, "job", "check", spec)
	wantCode(t, r, 0)
	for _, want := range []string{"8 ranks", "tp 2 x dp 4, ep 2; 128 sequences a step", "1.26 B parameters", "with recompute: attention", "placement asks each GPU for"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, r.stdout)
		}
	}
	cmd := write("cmd.yaml", "name: c\nruntime: command\ncommand: python3\nranks: 2\nresources: {gpus: 1, gpu_memory_mib: 40000}\n")
	r = runCmd(t, false, "job", "check", cmd)
	wantCode(t, r, 0)
	if !strings.Contains(r.stdout, "2 ranks") || !strings.Contains(r.stdout, "40000 MiB or more") {
		t.Errorf("command job:\n%s", r.stdout)
	}
	// a CPU job: the forecast of a rank's peak, the memory_mib to ask,
	// and a warning when the spec asks less
	cpu := write("cpu.yaml", "name: c\nmodel: {preset: tiny}\nparallel: {dp: 2, ep: 2}\nmicro_batch: 4\nresources: {cpu_cores: 1, memory_mib: 512}\n")
	r = runCmd(t, false, "job", "check", cpu, "-o", "json")
	wantCode(t, r, 0)
	jc = jobCheck{}
	if err := json.Unmarshal([]byte(r.stdout), &jc); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	tiny, _ := runconfig.ModelPreset("tiny")
	tiny.Defaults()
	want := tiny.HostRankBytes(4, 1, 2, true) + runconfig.CorpusHostBytes(1<<20*4)
	if jc.HostForecastBytes != int64(want) || jc.HostAskMiB<<20 < jc.HostForecastBytes || jc.HostForecastBytes <= jc.HostMinBytes {
		t.Errorf("CPU job: forecast %d (want %d), ask %d MiB, lower bound %d", jc.HostForecastBytes, int64(want), jc.HostAskMiB, jc.HostMinBytes)
	}
	r = runCmd(t, false, "job", "check", cpu)
	wantCode(t, r, 0)
	wantContains(t, r.stdout, "at its peak (forecast; its demo corpus included)", "warning: resources.memory_mib 512 is below the forecast")
	bad := write("bad.yaml", "name: b\nparallel: {ep: 3, dp: 4}\n")
	r = runCmd(t, false, "job", "check", bad)
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, "parallel.ep = 3: must divide parallel.dp = 4") {
		t.Errorf("bad spec: %s", r.stderr)
	}
}

// TestHostRankBytesForecast: runconfig.HostRankBytes (what `job check`
// tells a user to ask for) against the peak resident memory of real
// `switchyard train` runs of the CPU engine: within 25% (the fit is
// within 6% of every run it was fitted on: tiny, science and small, with
// and without checkpoints, ep 2 and 4, tp 2, corpora to 96 MiB).
func TestHostRankBytesForecast(t *testing.T) {
	if testing.Short() {
		t.Skip("trains")
	}
	bin := buildCLI(t)
	for _, tc := range []struct {
		preset string
		micro  int
		ckpt   bool
	}{{"tiny", 4, true}, {"science", 8, false}} {
		args := []string{"train", "--preset", tc.preset, "--micro-batch", fmt.Sprint(tc.micro), "--steps", "2", "--eval-seqs", "4", "--eval-every", "0"}
		runs := [][]string{args}
		if tc.ckpt {
			args = append(args, "--checkpoint-dir", t.TempDir(), "--checkpoint-every", "1")
			// and resumed: loading the checkpoint must not raise the peak
			// (its buffers were garbage the process kept until the end)
			resumed := slices.Clone(args)
			resumed[slices.Index(resumed, "--steps")+1] = "4"
			runs = [][]string{args, append(resumed, "--resume")}
		}
		m, err := runconfig.ModelPreset(tc.preset)
		if err != nil {
			t.Fatal(err)
		}
		m.Defaults()
		fc := m.HostRankBytes(tc.micro, 1, 1, tc.ckpt) + runconfig.CorpusHostBytes(4<<20) // the demo corpus: 4 domains of 1 MiB
		for i, args := range runs {
			cmd := exec.Command(bin, args...)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%v: %v\n%s", args, err, lastLines(string(out), 10))
			}
			ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
			if !ok {
				t.Skip("no rusage on this platform")
			}
			peak := float64(ru.Maxrss) * 1024 // KiB on Linux
			what := fmt.Sprintf("%s micro-batch %d checkpoints %v resumed %v", tc.preset, tc.micro, tc.ckpt, i > 0)
			t.Logf("%s: peak %.0f MiB, forecast %.0f MiB (%.2fx)", what, peak/(1<<20), fc/(1<<20), fc/peak)
			if r := fc / peak; r < 0.8 || r > 1.25 {
				t.Errorf("%s: forecast %.0f MiB is %.2fx the peak %.0f MiB", what, fc/(1<<20), r, peak/(1<<20))
			}
		}
	}
}
