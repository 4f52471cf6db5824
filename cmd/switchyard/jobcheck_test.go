package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
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
	bad := write("bad.yaml", "name: b\nparallel: {ep: 3, dp: 4}\n")
	r = runCmd(t, false, "job", "check", bad)
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, "parallel.ep = 3: must divide parallel.dp = 4") {
		t.Errorf("bad spec: %s", r.stderr)
	}
}
