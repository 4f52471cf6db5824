package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-ml/switchyard/pkg/client"
	"github.com/switchyard-ml/switchyard/pkg/fsutil"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	"github.com/switchyard-ml/switchyard/pkg/jobstate"
	"github.com/switchyard-ml/switchyard/pkg/train"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	coordinatorv1 "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

func (c *cli) cmdExperiment(ctx context.Context, args []string) error {
	return c.group(ctx, "experiment", args, []command{
		{"submit", "EXPERIMENT.yaml [--dry-run]", "expand the experiment's axes into jobs and submit them (again: nothing new)", c.experimentSubmit},
		{"report", "EXPERIMENT.yaml [--storage DIR] [--plots DIR]", "the variants' states and, from rank 0's final reports under the workers' storage, one comparison table (--plots: and pictures side by side)", c.experimentReport},
	})
}

// experimentFile parses an experiment command's line (its flags are in
// fs) and reads the experiment file it names.
func (c *cli) experimentFile(fs *flag.FlagSet, r *remoteFlags, args []string) (*jobspec.Experiment, error) {
	pos, err := c.parse(fs, r, args, 1, 1)
	if err != nil {
		return nil, err
	}
	return readExperiment(pos[0])
}

func readExperiment(path string) (*jobspec.Experiment, error) {
	raw, err := fsutil.ReadFile(path, jobspec.MaxSize)
	if err != nil {
		return nil, usageError{err}
	}
	e, err := jobspec.ParseExperiment(raw)
	if err != nil {
		return nil, usageError{fmt.Errorf("%s: %w", path, err)}
	}
	return e, nil
}

func (c *cli) experimentSubmit(ctx context.Context, name string, args []string) error {
	fs, r := c.flags(name)
	dry := fs.Bool("dry-run", false, "print the variants and their job ids; submit nothing")
	e, err := c.experimentFile(fs, r, args)
	if err != nil {
		return err
	}
	t := newTable(c.out, "", "JOB", "VARIANT", "")
	if *dry {
		for _, v := range e.Variants {
			t.row(v.JobID, v.Label(e.Axes), "")
		}
		return t.flush()
	}
	cl, err := r.dial()
	if err != nil {
		return err
	}
	defer cl.Close()
	for _, v := range e.Variants {
		resp, err := unaryOn(ctx, r, cl, "experiment submit", func(ctx context.Context, cl *client.Client) (*apiv1.SubmitJobResponse, error) {
			return cl.SubmitJob(ctx, &apiv1.SubmitJobRequest{Spec: v.Spec, JobId: v.JobID})
		})
		if err != nil {
			t.flush() //nolint:errcheck // the error below matters more
			if strings.Contains(err.Error(), "the ID of a deleted job") {
				// a variant's job ID is the experiment's name, its index
				// and its spec's hash: the same again after job delete
				err = fmt.Errorf("%w (a variant's job ID comes from the experiment's name and the variant: name the experiment anew to run it again)", err)
			}
			return fmt.Errorf("variant %d (%s): %w", v.Index, v.Label(e.Axes), err)
		}
		note := "submitted"
		if !resp.GetCreated() {
			note = "already there (" + jobstate.Name(resp.GetJob().GetState()) + ")"
		}
		t.row(v.JobID, v.Label(e.Axes), note)
	}
	return t.flush()
}

// variantResult is one variant of a report: its job and rank 0's final
// report, when there is one.
type variantResult struct {
	JobID   string        `json:"job_id"`
	Variant string        `json:"variant"`
	State   string        `json:"state"`
	Step    int64         `json:"step"`
	Report  *train.Report `json:"report,omitempty"`
	Missing string        `json:"missing,omitempty"` // why there is no report
	// LateLoss is the mean training loss over the last tenth of the run's
	// steps (rank 0's metrics): the variants of one seed train on the same
	// global batches, so it compares them pair by pair with less noise than
	// the last step's loss.
	LateLoss *float64 `json:"late_train_loss,omitempty"`
}

// lateLoss is the mean loss of the steps past 90% of the last step.
func lateLoss(ms []train.StepMetrics) *float64 {
	if len(ms) == 0 {
		return nil
	}
	from := ms[len(ms)-1].Step * 9 / 10
	var sum float64
	n := 0
	for _, m := range ms {
		if m.Step > from && !math.IsNaN(m.Loss) && !math.IsInf(m.Loss, 0) {
			sum += m.Loss
			n++
		}
	}
	if n == 0 {
		return nil
	}
	v := sum / float64(n)
	return &v
}

// groupSummary gathers the variants that differ only in their seed.
type groupSummary struct {
	Variant string `json:"variant"`
	// Balance is how many sequences the LBL's statistics cover
	// (jobspec.Spec.BalanceBatch); Random: a random sample of the global
	// batch (the control)
	Balance   int                `json:"balance_batch"`
	Random    bool               `json:"balance_random,omitempty"`
	Jobs      int                `json:"jobs"`                  // the variant's jobs, one per seed
	Runs      int                `json:"runs"`                  // of them, those with a report
	MI        meanSD             `json:"domain_expert_mi_bits"` // mean over layers, then over seeds
	LayerMI   []meanSD           `json:"layer_mi_bits"`         // per MoE layer, over seeds
	BPB       meanSD             `json:"val_bits_per_byte"`     // mean over domains, then over seeds
	Domains   map[string]meanSD  `json:"domains"`               // per domain, over seeds
	TopShare  meanSD             `json:"mean_top_share"`
	MaxLoad   meanSD             `json:"max_load"`
	DomainTop map[string]float64 `json:"domain_top_share"` // per domain: mean over layers and seeds of the top expert's share
	Tokens    float64            `json:"tokens"`
	Seconds   float64            `json:"seconds"`
	TrainLoss meanSD             `json:"final_train_loss"`
	LateLoss  meanSD             `json:"late_train_loss"` // variantResult.LateLoss over seeds
	// Paired by seed against the first variant (the same seed trains every
	// variant on the same batches): the differences of validation
	// bits/byte and of the late training loss, over the seeds both have.
	DeltaBPB   meanSD  `json:"delta_val_bpb"`
	DeltaLate  meanSD  `json:"delta_late_train_loss"`
	TokensPerS float64 `json:"tokens_per_s"`
}

type meanSD struct {
	N    int     `json:"n"`
	Mean float64 `json:"mean"`
	SD   float64 `json:"sd"` // sample standard deviation (0 for one run)
}

func summarise(xs []float64) meanSD {
	m := meanSD{N: len(xs)}
	if m.N == 0 {
		return m
	}
	for _, x := range xs {
		m.Mean += x
	}
	m.Mean /= float64(len(xs))
	if len(xs) > 1 {
		for _, x := range xs {
			m.SD += (x - m.Mean) * (x - m.Mean)
		}
		m.SD = math.Sqrt(m.SD / float64(len(xs)-1))
	}
	return m
}

func (m meanSD) String() string {
	switch m.N {
	case 0:
		return "-"
	case 1: // no spread to show: not "± 0"
		return fmt.Sprintf("%.4f (n=1)", m.Mean)
	}
	return fmt.Sprintf("%.4f ± %.4f", m.Mean, m.SD)
}

func (c *cli) experimentReport(ctx context.Context, name string, args []string) error {
	fs, r := c.flags(name)
	storage := fs.String("storage", "", "the workers' storage_path (shared, or this machine's for a dev cluster): rank 0 writes its final report under it")
	plotDir := fs.String("plots", "", "also draw the variants side by side into this directory (PNG and SVG): loss curves from rank 0's metrics.jsonl, per-domain val bits/byte; needs --storage")
	e, err := c.experimentFile(fs, r, args)
	if err != nil {
		return err
	}
	if *plotDir != "" && *storage == "" {
		return usageError{errors.New("experiment report: --plots needs --storage DIR: the runs' metrics and reports are there")}
	}
	if err := checkStorage("experiment report", *storage); err != nil {
		return err
	}
	cl, err := r.dial()
	if err != nil {
		return err
	}
	defer cl.Close()
	var results []variantResult
	jobs := map[string]*coordinatorv1.Job{}
	for _, v := range e.Variants {
		res := variantResult{JobID: v.JobID, Variant: v.Label(e.Axes)}
		resp, err := unaryOn(ctx, r, cl, "experiment report", getJob(v.JobID))
		switch {
		case status.Code(err) == codes.NotFound:
			res.State, res.Missing = "NOT SUBMITTED", "no such job (experiment submit)"
		case err != nil:
			return err
		default:
			j := resp.GetJob()
			jobs[j.GetId()] = j
			res.State, res.Step = jobstate.Name(j.GetState()), j.GetProgress().GetStep()
			res.Report, res.Missing = readFinalReport(*storage, j)
			if res.Report == nil && *storage != "" {
				res.Missing = missingReport(j, res.Missing)
			}
			if res.Report != nil {
				if ms, err := readMetrics(filepath.Join(rankDir(*storage, j), "metrics.jsonl")); err == nil {
					res.LateLoss = lateLoss(ms)
				}
			}
		}
		results = append(results, res)
	}
	groups := groupResults(e, results)
	if r.json() {
		if err := printJSONTo(c.out, map[string]any{"experiment": e.Name, "variants": results, "groups": groups, "warnings": reportWarnings(results, groups)}); err != nil {
			return err
		}
	} else if err := printExperiment(c, e, results, groups); err != nil {
		return err
	}
	if *plotDir == "" {
		return nil
	}
	var labels []string
	var balance []int
	var random []bool
	var seeds []int64
	for _, v := range e.Variants {
		labels = append(labels, v.Label(e.Axes, "seed"))
		n, r := v.Parsed.BalanceBatch()
		balance, random, seeds = append(balance, n), append(random, r), append(seeds, v.Parsed.Seed)
	}
	w := c.out
	if r.json() {
		w = c.errOut // stdout is the JSON
	} else {
		fmt.Fprintln(w, "\nplots:")
	}
	return experimentPlots(w, *plotDir, *storage, e.Name, results, labels, balance, random, seeds, jobs)
}

// checkStorage refuses a --storage that is given and is no directory
// here (a typo would read as "no report yet" for every job).
func checkStorage(cmd, dir string) error {
	if dir == "" {
		return nil
	}
	fi, err := os.Stat(dir)
	switch {
	case err != nil:
		return usageError{fmt.Errorf("%s: --storage %s: %w (the workers' storage_path, as this machine sees it)", cmd, dir, unwrapPath(err))}
	case !fi.IsDir():
		return usageError{fmt.Errorf("%s: --storage %s: not a directory (the workers' storage_path, as this machine sees it)", cmd, dir)}
	}
	return nil
}

// unwrapPath is a path error's own error, without the path it names.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// readFinalReport reads rank 0's report.json of j's last attempt under
// the workers' storage.
func readFinalReport(storage string, j *coordinatorv1.Job) (*train.Report, string) {
	if storage == "" {
		return nil, "no --storage given"
	}
	path := filepath.Join(rankDir(storage, j), "report.json")
	raw, err := fsutil.ReadFile(path, 64<<20)
	if errors.Is(err, os.ErrNotExist) {
		return nil, "no report yet at " + path
	}
	if err != nil {
		return nil, err.Error()
	}
	var rep train.Report
	if err := json.Unmarshal(raw, &rep); err != nil {
		return nil, fmt.Sprintf("%s: %v", path, err)
	}
	return &rep, ""
}

// missingReport says why j has no report at the place readFinalReport
// looked (why): a job that ended says how, one that succeeded points at
// --storage (it wrote a report, elsewhere).
func missingReport(j *coordinatorv1.Job, why string) string {
	switch j.GetState() {
	case coordinatorv1.JobState_JOB_STATE_SUCCEEDED:
		return strings.Replace(why, "no report yet at", "no report at", 1) + " (the job succeeded: is --storage the workers' storage_path?)"
	case coordinatorv1.JobState_JOB_STATE_FAILED, coordinatorv1.JobState_JOB_STATE_CANCELLED:
		return "no report: " + strings.ToLower(jobstate.Name(j.GetState())) + stateWhy(j)
	}
	return why
}

// rankDir is where rank 0 of j's last attempt writes under the workers'
// storage (pkg/agent's run directory).
func rankDir(storage string, j *coordinatorv1.Job) string {
	return filepath.Join(storage, "jobs", j.GetId(), fmt.Sprintf("attempt-%d", j.GetRestarts()), "rank-0")
}

// groupResults summarises the variants that differ only in their seed, in
// the order of their first variant.
func groupResults(e *jobspec.Experiment, results []variantResult) []groupSummary {
	var order []string
	jobs := map[string]int{}
	byLabel := map[string][]*train.Report{}
	late := map[string][]float64{}
	first := map[string]jobspec.Variant{}
	type bySeed struct{ bpb, late map[int64]float64 }
	seeds := map[string]bySeed{}
	for i, v := range e.Variants {
		l := v.Label(e.Axes, "seed")
		jobs[l]++
		if _, ok := byLabel[l]; !ok {
			order = append(order, l)
			byLabel[l] = nil
			first[l] = v
			seeds[l] = bySeed{map[int64]float64{}, map[int64]float64{}}
		}
		if rep := results[i].Report; rep != nil {
			byLabel[l] = append(byLabel[l], rep)
			if len(rep.Domains) > 0 {
				seeds[l].bpb[v.Parsed.Seed] = rep.MeanBitsPerByte()
			}
			if ll := results[i].LateLoss; ll != nil {
				late[l] = append(late[l], *ll)
				seeds[l].late[v.Parsed.Seed] = *ll
			}
		}
	}
	paired := func(a, b map[int64]float64) meanSD {
		var d []float64
		for seed, x := range a {
			if y, ok := b[seed]; ok {
				d = append(d, x-y)
			}
		}
		return summarise(d)
	}
	var out []groupSummary
	for _, l := range order {
		reps := byLabel[l]
		g := groupSummary{Variant: l, Jobs: jobs[l], Runs: len(reps), Domains: map[string]meanSD{}, DomainTop: map[string]float64{}}
		g.Balance, g.Random = first[l].Parsed.BalanceBatch()
		var bpb, top, maxLoad, loss, mi []float64
		var layerMI [][]float64
		perDomain := map[string][]float64{}
		domTop := map[string][]float64{}
		for _, rep := range reps {
			for _, d := range rep.Domains {
				perDomain[d.Domain] = append(perDomain[d.Domain], d.BitsPerByte)
			}
			if len(rep.Domains) > 0 {
				bpb = append(bpb, rep.MeanBitsPerByte())
			}
			for _, s := range rep.Experts {
				domTop[s.Domain] = append(domTop[s.Domain], s.TopShare)
			}
			top, maxLoad, loss = append(top, rep.MeanTopShare), append(maxLoad, rep.MaxLoad), append(loss, rep.FinalLoss)
			if lmi := rep.DomainExpertMI(); len(lmi) > 0 {
				var sum float64
				for k, v := range lmi {
					sum += v / float64(len(lmi))
					for len(layerMI) <= k {
						layerMI = append(layerMI, nil)
					}
					layerMI[k] = append(layerMI[k], v)
				}
				mi = append(mi, sum)
			}
			g.Tokens += float64(rep.Tokens) / float64(len(reps))
			g.Seconds += rep.Seconds / float64(len(reps))
			g.TokensPerS += rep.TokensPerS / float64(len(reps))
		}
		g.BPB, g.TopShare, g.MaxLoad, g.TrainLoss, g.MI = summarise(bpb), summarise(top), summarise(maxLoad), summarise(loss), summarise(mi)
		g.LateLoss = summarise(late[l])
		if len(order) > 0 && l != order[0] {
			g.DeltaBPB = paired(seeds[l].bpb, seeds[order[0]].bpb)
			g.DeltaLate = paired(seeds[l].late, seeds[order[0]].late)
		}
		for _, xs := range layerMI {
			g.LayerMI = append(g.LayerMI, summarise(xs))
		}
		for d, xs := range perDomain {
			g.Domains[d] = summarise(xs)
		}
		for d, xs := range domTop {
			g.DomainTop[d] = summarise(xs).Mean
		}
		out = append(out, g)
	}
	return out
}

func printExperiment(c *cli, e *jobspec.Experiment, results []variantResult, groups []groupSummary) error {
	runs := fmt.Sprintf("%d jobs", len(e.Variants))
	if len(groups) != len(e.Variants) {
		runs += fmt.Sprintf(" (%s over seeds)", plural(len(groups), "variant"))
	}
	fmt.Fprintf(c.out, "experiment %s: %s\n\n", e.Name, runs)
	t := newTable(c.out, "", "JOB", "VARIANT", "STATE", "STEP", "VAL BPB", "TOP SHARE", "")
	for _, res := range results {
		bpb, top := "-", "-"
		if rep := res.Report; rep != nil {
			bpb = fmt.Sprintf("%.4f", rep.MeanBitsPerByte())
			top = fmt.Sprintf("%.4f", rep.MeanTopShare)
		}
		t.row(res.JobID, res.Variant, res.State, res.Step, bpb, top, res.Missing)
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintf(c.out, "\nover seeds (mean ± sd; balance: the sequences the LBL's statistics cover, \"random\" a random sample of the global batch; val bits/byte: the mean over domains; MI: the mutual information of domain and expert in bits, mean over layers, 0 when every domain routes alike, log2(domains) at most; top share: the most used expert's share of a domain's selections, mean over layers and domains; max load: the largest expert's share of all selections, 1/E is balanced; late loss: the mean training loss (nats/token) of the last tenth of the steps, the same batches for every variant of a seed; wall: mean seconds a run):\n")
	t = newTable(c.out, "", "VARIANT", "BALANCE", "RUNS", "VAL BPB", "MI BITS", "TOP SHARE", "MAX LOAD", "LATE LOSS", "TOKENS", "WALL S", "TOK/S")
	for _, g := range groups {
		runs := fmt.Sprint(g.Runs)
		if g.Runs < g.Jobs {
			runs = fmt.Sprintf("%d of %d", g.Runs, g.Jobs)
		}
		t.row(orDash(g.Variant), balanceName(g.Balance, g.Random), runs, g.BPB, g.MI, g.TopShare, g.MaxLoad, g.LateLoss, fmt.Sprintf("%.3g", g.Tokens), fmt.Sprintf("%.0f", g.Seconds), fmt.Sprintf("%.0f", g.TokensPerS))
	}
	if err := t.flush(); err != nil {
		return err
	}
	for _, w := range reportWarnings(results, groups) {
		fmt.Fprintf(c.out, "warning: %s\n", w)
	}
	if len(groups) > 1 {
		fmt.Fprintf(c.out, "\npaired by seed against %s (each seed trains every variant on the same batches; mean ± sd of the differences over the seeds both have):\n", orDash(groups[0].Variant))
		t = newTable(c.out, "", "VARIANT", "SEEDS", "Δ VAL BPB", "Δ LATE LOSS")
		for _, g := range groups[1:] {
			t.row(orDash(g.Variant), g.DeltaBPB.N, g.DeltaBPB, g.DeltaLate)
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	layers := 0
	for _, g := range groups {
		layers = max(layers, len(g.LayerMI))
	}
	if layers > 0 {
		head := []string{"VARIANT"}
		for l := range layers {
			head = append(head, fmt.Sprintf("LAYER %d MI", l))
		}
		fmt.Fprintf(c.out, "\nspecialisation per MoE layer (domain-expert mutual information, bits, mean ± sd over seeds):\n")
		t = newTable(c.out, "", head...)
		for _, g := range groups {
			row := []any{orDash(g.Variant)}
			for l := range layers {
				if l < len(g.LayerMI) {
					row = append(row, g.LayerMI[l])
				} else {
					row = append(row, "-")
				}
			}
			t.row(row...)
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	var domains []string
	for _, g := range groups {
		for d := range g.Domains {
			if !slices.Contains(domains, d) {
				domains = append(domains, d)
			}
		}
	}
	if len(domains) == 0 {
		return nil
	}
	sort.Strings(domains)
	head := []string{"DOMAIN"}
	for i := range groups {
		head = append(head, fmt.Sprintf("[%d] BPB", i+1), fmt.Sprintf("[%d] TOP", i+1))
	}
	fmt.Fprintf(c.out, "\nper domain (columns [n]: the variants above, in order):\n")
	t = newTable(c.out, "", head...)
	for _, d := range domains {
		row := []any{d}
		for _, g := range groups {
			top, ok := g.DomainTop[d]
			if ok {
				row = append(row, g.Domains[d], fmt.Sprintf("%.4f", top))
			} else {
				row = append(row, g.Domains[d], "-")
			}
		}
		t.row(row...)
	}
	return t.flush()
}

// reportWarnings is what makes the comparison weaker than its table
// looks: runs without a report (the means are over the others), runs
// that trained on different numbers of tokens, and variants of one run
// each (no spread over seeds).
func reportWarnings(results []variantResult, groups []groupSummary) []string {
	var ws []string
	missing := 0
	minTok, maxTok := int64(math.MaxInt64), int64(0)
	for _, res := range results {
		if res.Report == nil {
			missing++
			continue
		}
		minTok, maxTok = min(minTok, res.Report.Tokens), max(maxTok, res.Report.Tokens)
	}
	if missing > 0 && missing < len(results) {
		ws = append(ws, fmt.Sprintf("%d of %d jobs have no report (see the table above): each variant's figures are over its runs that have one", missing, len(results)))
	}
	if maxTok > minTok {
		ws = append(ws, fmt.Sprintf("the runs trained on different numbers of tokens (%d to %d): their val bits/byte and losses compare training lengths too", minTok, maxTok))
	}
	single := 0
	for _, g := range groups {
		if g.Runs == 1 {
			single++
		}
	}
	if single > 0 {
		ws = append(ws, fmt.Sprintf("%d of %d variants have one run with a report: no spread over seeds (give the experiment a seed axis, e.g. seed: [1, 2])", single, len(groups)))
	}
	return ws
}

// balanceName is a balance batch for the table: "32", "8 random".
func balanceName(n int, random bool) string {
	if random {
		return fmt.Sprintf("%d random", n)
	}
	return fmt.Sprint(n)
}

func printJSONTo(w interface{ Write([]byte) (int, error) }, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
