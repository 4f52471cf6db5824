package main

// Pictures from the CLI: `train --plots`, `job plot`, `experiment report
// --plots`. pkg/plots draws; this file finds the numbers.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/switchyard-ml/switchyard/pkg/client"
	"github.com/switchyard-ml/switchyard/pkg/jobstate"
	"github.com/switchyard-ml/switchyard/pkg/plots"
	"github.com/switchyard-ml/switchyard/pkg/train"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	coordinatorv1 "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// maxMetricsLine bounds one line of metrics.jsonl (a step of a large
// model's expert load is a few KiB).
const maxMetricsLine = 4 << 20

// readMetrics reads a metrics.jsonl: one train.StepMetrics per line.
func readMetrics(path string) ([]train.StepMetrics, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []train.StepMetrics
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), maxMetricsLine)
	for n := 1; sc.Scan(); n++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var m train.StepMetrics
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return nil, fmt.Errorf("%s line %d: %w", path, n, err)
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return byStep(out), nil
}

// byStep orders metrics by step, keeping the last of each step: a step
// that a restarted attempt ran again counts as the attempt ran it.
func byStep(ms []train.StepMetrics) []train.StepMetrics {
	last := map[int]int{}
	for i, m := range ms {
		last[m.Step] = i
	}
	var out []train.StepMetrics
	for i, m := range ms {
		if last[m.Step] == i {
			out = append(out, m)
		}
	}
	slices.SortStableFunc(out, func(a, b train.StepMetrics) int { return a.Step - b.Step })
	return out
}

// plotRunDir draws the run whose metrics.jsonl is in dir, with its report
// rep (nil: no specialisation maps), into dir.
func plotRunDir(dir, title string, rep *train.Report) ([]string, error) {
	ms, err := readMetrics(filepath.Join(dir, "metrics.jsonl"))
	if err != nil {
		return nil, err
	}
	return plots.Run{Title: title, Metrics: ms, Report: rep}.Write(dir)
}

func printPaths(w io.Writer, paths []string) {
	for _, p := range paths {
		fmt.Fprintln(w, p)
	}
}

func (c *cli) jobPlot(ctx context.Context, name string, args []string) error {
	fs, r := c.flags(name)
	out := fs.String("out", "", "directory for the pictures (created if missing)")
	storage := fs.String("storage", "", "the workers' storage_path: rank 0's report.json there gives the domain x expert heat maps")
	pos, err := c.parse(fs, r, args, 1, 1)
	if err != nil {
		return err
	}
	if *out == "" {
		return usageError{errors.New("job plot: --out DIR is required: the pictures go there")}
	}
	if err := checkStorage("job plot", *storage); err != nil {
		return err
	}
	id := pos[0]
	cl, err := r.dial()
	if err != nil {
		return err
	}
	defer cl.Close()
	job, ms, err := metricsHistory(ctx, r, cl, id)
	if err != nil {
		return err
	}
	if len(ms) == 0 {
		return fmt.Errorf("job plot %s: no step metrics yet (the job is %s)", id, jobstate.Name(job.GetState()))
	}
	run := plots.Run{Title: id, Metrics: ms, LBLMean: true}
	note := ""
	if *storage == "" {
		note = "the domain x expert heat maps need rank 0's report: add --storage DIR (the workers' storage_path)"
	} else {
		var missing string
		if run.Report, missing = readFinalReport(*storage, job); run.Report == nil {
			note = "no domain x expert heat maps: " + missingReport(job, missing)
		}
	}
	paths, err := run.Write(*out)
	if err != nil {
		return fmt.Errorf("job plot %s: %w", id, err)
	}
	printPaths(c.out, paths)
	fmt.Fprintf(c.errOut, "job %s (%s): %d steps of rank 0's metrics, up to step %d\n", id, jobstate.Name(job.GetState()), len(ms), ms[len(ms)-1].Step)
	if note != "" {
		fmt.Fprintln(c.errOut, note)
	}
	return nil
}

// metricsHistory is the job's record and rank 0's stored step metrics, by
// step: a WatchJob stream with replay, read until the coordinator marks
// the end of the history (a running job's live metrics are not waited
// for) or, for a finished job, until it ends.
func metricsHistory(ctx context.Context, r *remoteFlags, cl *client.Client, id string) (*coordinatorv1.Job, []train.StepMetrics, error) {
	op := "job plot " + id
	s, cancel, err := openStream(ctx, r, func(sctx context.Context) (apiv1.Coordinator_WatchJobClient, error) {
		return cl.WatchJob(sctx, &apiv1.WatchJobRequest{JobId: id, Replay: true})
	})
	if err != nil {
		return nil, nil, callError(op, r, err)
	}
	defer cancel()
	var job *coordinatorv1.Job
	var ms []train.StepMetrics
	for {
		msg, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, callError(op, r, err)
		}
		if j := msg.GetJob(); j != nil {
			job = j
		}
		if m := msg.GetMetrics(); m != nil {
			ms = append(ms, stepMetrics(m))
		}
		if msg.GetReplayed() {
			break
		}
	}
	if job == nil {
		return nil, nil, fmt.Errorf("%s: the stream ended before the job's record", op)
	}
	return job, byStep(ms), nil
}

// stepMetrics is what the cluster's metrics stream carries of a step:
// the LBL is the mean over MoE layers.
func stepMetrics(m *apiv1.StepMetrics) train.StepMetrics {
	sm := train.StepMetrics{Step: int(m.GetStep()), Loss: m.GetLoss(), TokensPerS: m.GetTokensPerSecond()}
	if !m.GetNoLbl() {
		sm.LBL = []float64{m.GetLbl()}
	}
	for _, l := range m.GetExpertLoad() {
		sm.ExpertLoad = append(sm.ExpertLoad, l.GetShare())
	}
	return sm
}

// experimentPlots draws the variants side by side into dir, one series
// per job with rank 0's metrics.jsonl of its last attempt (beside
// report.json), named by the variant less its seed.
func experimentPlots(w io.Writer, dir, storage, name string, results []variantResult, labels []string, balance []int, random []bool, seeds []int64, jobs map[string]*coordinatorv1.Job) error {
	var runs []plots.Series
	for i, res := range results {
		s := plots.Series{Name: labels[i], Report: res.Report, Balance: balance[i], Random: random[i], Seed: seeds[i]}
		if j := jobs[res.JobID]; j != nil && storage != "" {
			ms, err := readMetrics(filepath.Join(rankDir(storage, j), "metrics.jsonl"))
			switch {
			case errors.Is(err, os.ErrNotExist):
			case err != nil:
				return fmt.Errorf("experiment report --plots: %w", err)
			default:
				s.Metrics = ms
			}
		}
		runs = append(runs, s)
	}
	paths, err := plots.Compare(dir, name, runs)
	if err != nil {
		return fmt.Errorf("experiment report --plots: %w", err)
	}
	printPaths(w, paths)
	return nil
}
