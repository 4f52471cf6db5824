package main

// switchyard job check: a spec's layout and what each of its ranks needs,
// without a cluster.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/switchyard-ml/switchyard/pkg/data"
	"github.com/switchyard-ml/switchyard/pkg/fsutil"
	"github.com/switchyard-ml/switchyard/pkg/gpu"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	"github.com/switchyard-ml/switchyard/pkg/model"
	"github.com/switchyard-ml/switchyard/pkg/runconfig"
)

// jobCheck is what `job check -o json` prints.
type jobCheck struct {
	Spec    string `json:"spec"`
	Runtime string `json:"runtime"`
	World   int    `json:"world"`
	TP      int    `json:"tp,omitempty"`
	DP      int    `json:"dp,omitempty"`
	EP      int    `json:"ep,omitempty"`
	// SequencesPerStep is the global batch: micro_batch x dp x accumulation.
	SequencesPerStep int64  `json:"sequences_per_step,omitempty"`
	Device           string `json:"device,omitempty"`
	Precision        string `json:"precision,omitempty"`
	Params           int64  `json:"params_total,omitempty"`
	ActiveParams     int64  `json:"params_active,omitempty"`
	RankParams       int    `json:"params_per_rank,omitempty"`
	// HostMinBytes is runconfig's lower bound on a rank's host memory
	// (what validation and placement use).
	HostMinBytes int64 `json:"host_min_bytes,omitempty"`
	HostLimitMiB int64 `json:"host_limit_mib,omitempty"` // resources.memory_mib
	// HostForecastBytes is a CPU rank's forecast peak memory
	// (runconfig.HostRankBytes, with its corpus where its size is known
	// here: HostCorpus says which), and HostAskMiB the memory_mib that
	// leaves it a quarter's headroom.
	HostForecastBytes int64  `json:"host_forecast_bytes,omitempty"`
	HostCorpus        string `json:"host_corpus,omitempty"`
	HostAskMiB        int64  `json:"host_ask_mib,omitempty"`
	// GPU: the engine's buffers of a rank (pkg/gpu's estimate, what it
	// allocates), with the memory left to the libraries, and with the
	// attention probabilities recomputed; what placement asks each GPU.
	GPUBuffers       *gpu.MemEstimate `json:"gpu_buffers,omitempty"`
	GPUNeedBytes     int64            `json:"gpu_need_bytes,omitempty"`
	GPURecomputeNeed int64            `json:"gpu_need_recompute_bytes,omitempty"`
	GPUPlacementMiB  int64            `json:"gpu_placement_mib,omitempty"`
}

func (c *cli) jobCheck(ctx context.Context, name string, args []string) error {
	fs, r := c.flags(name)
	pos, err := c.parse(fs, r, args, 1, 1)
	if err != nil {
		return err
	}
	path := pos[0]
	_, sp, err := readSpec("job check", path)
	if err != nil {
		return err
	}
	jc, err := checkSpec(path, sp)
	if err != nil {
		return usageError{fmt.Errorf("job check: %s: %w", path, err)}
	}
	if r.json() {
		enc := json.NewEncoder(c.out)
		enc.SetIndent("", "  ")
		return enc.Encode(jc)
	}
	printJobCheck(c, jc)
	return nil
}

// checkSpec works out a valid spec's layout and per-rank needs.
func checkSpec(path string, sp *jobspec.Spec) (jobCheck, error) {
	jc := jobCheck{Spec: path, Runtime: "engine", World: sp.World(), HostLimitMiB: sp.Resources.MemoryMiB}
	if sp.Runtime == jobspec.RuntimeCommand {
		jc.Runtime = "command"
		jc.GPUPlacementMiB = sp.GPUMemoryMiB()
		return jc, nil
	}
	p := sp.Parallel
	jc.TP, jc.DP, jc.EP = p.TP, p.DP, p.EP
	jc.SequencesPerStep = sp.GlobalBatch()
	tc, err := sp.TrainConfig()
	if err != nil {
		return jc, err
	}
	m, err := tc.ModelConfig()
	if err != nil {
		return jc, err
	}
	jc.Params, jc.ActiveParams = m.ParamCount()
	jc.RankParams = model.CountParams(m, 0, m.Experts/p.EP, p.TP)
	jc.HostMinBytes = int64(m.MinRankBytes(sp.MicroBatch, p.TP, p.EP))
	kind, _, _ := runconfig.ParseDevice(tc.Device)
	jc.Device = kind
	if kind != "cuda" {
		// a job's ranks always checkpoint (at least at the end)
		fc := m.HostRankBytes(sp.MicroBatch, p.TP, p.EP, true)
		switch corpus := sp.Data.Corpus; {
		case corpus == jobspec.DemoCorpus || corpus == "":
			fc += runconfig.CorpusHostBytes(int64(sp.Data.DemoBytes) * int64(len(data.DemoDomains())))
			jc.HostCorpus = "its demo corpus included"
		default:
			if st, err := os.Stat(corpus); err == nil && st.Mode().IsRegular() {
				fc += runconfig.CorpusHostBytes(st.Size())
				jc.HostCorpus = fmt.Sprintf("its corpus of %s included", fsutil.Size(st.Size()))
			} else {
				jc.HostCorpus = "add about 1.5x its corpus's size: the file is not on this machine"
			}
		}
		jc.HostForecastBytes = int64(fc)
		const mib = 1 << 20
		jc.HostAskMiB = (int64(1.25*fc) + 64*mib - 1) / (64 * mib) * 64 // headroom, in 64 MiB
		return jc, nil
	}
	jc.Precision = tc.PrecisionOrDefault()
	prec := gpu.Precision(jc.Precision)
	est, err := gpu.EstimateParallel(m, sp.MicroBatch, prec, p.EP, p.TP)
	re, rerr := gpu.EstimateRecompute(m, sp.MicroBatch, prec, p.EP, p.TP)
	if tc.RecomputeAttention() {
		est = re
	}
	if err = cmpErr(err, rerr); err != nil {
		return jc, err
	}
	jc.GPUBuffers = &est
	jc.GPUNeedBytes = est.Total + runconfig.GPUReserveBytes
	jc.GPURecomputeNeed = re.Total + runconfig.GPUReserveBytes
	jc.GPUPlacementMiB = sp.GPUMemoryMiB()
	return jc, nil
}

// paramCount is "1.26 B", "165 M" or "8400".
func paramCount(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2f B", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1f M", float64(n)/1e6)
	}
	return fmt.Sprint(n)
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

func printJobCheck(c *cli, jc jobCheck) {
	gib := func(b int64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) }
	fmt.Fprintf(c.out, "%s: a valid job spec (runtime %s), %s\n", jc.Spec, jc.Runtime, plural(jc.World, "rank"))
	if jc.Runtime == "command" {
		if jc.GPUPlacementMiB > 0 {
			fmt.Fprintf(c.out, "  placement asks each GPU for %d MiB or more (resources.gpu_memory_mib)\n", jc.GPUPlacementMiB)
		}
		return
	}
	fmt.Fprintf(c.out, "  layout   tp %d x dp %d, ep %d; %d sequences a step\n", jc.TP, jc.DP, jc.EP, jc.SequencesPerStep)
	fmt.Fprintf(c.out, "  model    %s parameters (%s active a token); a rank holds %s\n",
		paramCount(jc.Params), paramCount(jc.ActiveParams), paramCount(int64(jc.RankParams)))
	limit := "no resources.memory_mib"
	if jc.HostLimitMiB > 0 {
		limit = fmt.Sprintf("resources.memory_mib %d", jc.HostLimitMiB)
	}
	if jc.HostForecastBytes > 0 {
		fmt.Fprintf(c.out, "  host     a rank uses about %s at its peak (forecast; %s); ask resources.memory_mib: %d or more (%s)\n",
			gib(jc.HostForecastBytes), jc.HostCorpus, jc.HostAskMiB, limit)
		if jc.HostLimitMiB > 0 && jc.HostLimitMiB<<20 < jc.HostForecastBytes {
			fmt.Fprintf(c.out, "           warning: resources.memory_mib %d is below the forecast: the worker would likely kill the rank for its memory\n", jc.HostLimitMiB)
		}
		fmt.Fprintf(c.out, "           validation and placement use the lower bound %s\n", gib(jc.HostMinBytes))
	} else {
		fmt.Fprintf(c.out, "  host     a rank needs at least %s (%s)\n", gib(jc.HostMinBytes), limit)
	}
	if jc.GPUBuffers == nil {
		return
	}
	fmt.Fprintf(c.out, "  GPU      %s: a rank's buffers %s (%s), %s with the 1 GiB left to the libraries\n",
		jc.Precision, gib(jc.GPUBuffers.Total), jc.GPUBuffers, gib(jc.GPUNeedBytes))
	if jc.GPURecomputeNeed != jc.GPUNeedBytes {
		fmt.Fprintf(c.out, "           with recompute: attention: %s\n", gib(jc.GPURecomputeNeed))
	}
	fmt.Fprintf(c.out, "           placement asks each GPU for %d MiB or more\n", jc.GPUPlacementMiB)
}
