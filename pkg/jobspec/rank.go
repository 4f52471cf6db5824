package jobspec

import (
	"fmt"
	"regexp"

	"github.com/switchyard-ml/switchyard/pkg/runconfig"
	"github.com/switchyard-ml/switchyard/pkg/security"
)

// jobIDRE is the job id rule: a DNS label, so that an id is one path
// element, one NATS subject token and one etcd key element. Spec names
// follow the same rule (NewJobID appends a suffix to one).
var jobIDRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidJobID reports whether id is a job id the coordinator accepts and a
// worker runs: 1-63 of a-z, 0-9 and '-', starting and ending with a
// letter or digit.
func ValidJobID(id string) error {
	if !jobIDRE.MatchString(id) {
		return fmt.Errorf("job id %q: want 1-63 of [a-z0-9-], starting and ending with a letter or digit", id)
	}
	return nil
}

// Layout is the parallel layout one attempt of a job runs with.
type Layout struct {
	TP, DP, EP   int
	Accumulation int    // micro-batches per optimizer step on each DP rank
	Balance      string // the LBL balance group
}

// World is the attempt's number of ranks, TP * DP.
func (l Layout) World() int { return l.TP * l.DP }

// AttemptLayout is the layout of an attempt placed with placedDP data- and
// placedEP expert-parallel ranks (0: the spec's, as for every attempt of a
// job that is not elastic). An elastic attempt keeps the spec's global
// batch, dp * accumulation, by scaling the accumulation when the new dp
// divides it; otherwise it keeps the spec's accumulation and the global
// batch changes with dp.
func (s *Spec) AttemptLayout(placedDP, placedEP int) Layout {
	l := Layout{TP: s.Parallel.TP, DP: s.Parallel.DP, EP: s.Parallel.EP, Accumulation: s.Accumulation, Balance: s.Parallel.Balance}
	if placedDP > 0 {
		l.DP = placedDP
		if global := s.Parallel.DP * s.Accumulation; global%placedDP == 0 {
			l.Accumulation = global / placedDP
		}
	}
	if placedEP > 0 {
		l.EP = placedEP
	}
	return l
}

// TokensPerStep is the tokens one optimizer step of an attempt with layout
// l trains on: micro_batch * accumulation * dp * model.seq_len, what the
// trainer counts in tokens/s. 0 when the model does not resolve, and for
// a command job.
func (s *Spec) TokensPerStep(l Layout) float64 {
	if s.Runtime == RuntimeCommand {
		return 0 // the trainer's own (it reports tokens/s)
	}
	m, err := s.ModelConfig()
	if err != nil {
		return 0
	}
	return float64(s.MicroBatch) * float64(l.Accumulation) * float64(l.DP) * float64(m.SeqLen)
}

// Task is one rank's assignment, as the coordinator hands it to a worker.
type Task struct {
	JobID      string
	Attempt    int
	Layout     Layout
	ResumeStep int64 // resume from exactly this committed step (0: the newest)
	// Node is where the rank sits among the job's workers (for a
	// command's torchrun variables).
	Node Node
}

// Node is a rank's place among its job's workers: its worker's number
// (workers in the order of their lowest rank) of Nodes, and its number
// among the job's ranks on that worker (in rank order) of LocalWorld.
type Node struct {
	Rank, Nodes, LocalRank, LocalWorld int
}

// Host is what the worker running a rank adds: where the rank writes and
// how its checkpoint commits reach the cluster.
type Host struct {
	RunDir string // the rank's metrics.jsonl and report.json
	// CheckpointRoot is the storage root of the job's checkpoints when the
	// spec names none (checkpoint.path).
	CheckpointRoot string
	// CommitVia are the coordinator API addresses through which the rank
	// reads the checkpoint catalogue and commits (a rank gets no etcd
	// endpoint).
	CommitVia []string
	CommitTLS security.TLSFiles
	// DataPlaneTLS, when its files are given, encrypts the connections
	// between the ranks.
	DataPlaneTLS security.TLSFiles
}

// CheckpointRoot is where the job's checkpoints live: checkpoint.path, or
// def (the worker's) when the spec names none.
func (s *Spec) CheckpointRoot(def string) string {
	if s.Checkpoint.Path != "" {
		return s.Checkpoint.Path
	}
	return def
}

// RankConfig is the whole configuration one rank of task t runs with on
// host h: the spec's training settings, the attempt's layout and
// accumulation, the checkpoint policy and catalogue, and resumption (every
// attempt resumes from the job's newest committed checkpoint, or from
// t.ResumeStep). The rank's own number and its peers' addresses are not in
// it: they are the same file for every rank of the attempt. The result is
// validated.
func (s *Spec) RankConfig(t Task, h Host) (runconfig.Config, error) {
	if err := ValidJobID(t.JobID); err != nil {
		return runconfig.Config{}, err
	}
	l := t.Layout
	switch {
	case t.Attempt < 0:
		return runconfig.Config{}, fmt.Errorf("job %s: attempt %d: must be >= 0", t.JobID, t.Attempt)
	case l.TP < 1 || l.DP < 1 || l.EP < 1 || l.Accumulation < 1:
		return runconfig.Config{}, fmt.Errorf("job %s: layout tp %d dp %d ep %d accumulation %d: every degree and the accumulation must be >= 1", t.JobID, l.TP, l.DP, l.EP, l.Accumulation)
	case l.DP%l.EP != 0:
		return runconfig.Config{}, fmt.Errorf("job %s: layout ep %d: must divide dp %d", t.JobID, l.EP, l.DP)
	case t.ResumeStep < 0:
		return runconfig.Config{}, fmt.Errorf("job %s: resume step %d: must be >= 0", t.JobID, t.ResumeStep)
	}
	c, err := s.TrainConfig()
	if err != nil {
		return runconfig.Config{}, err
	}
	c.Accumulation = l.Accumulation
	c.OutDir = h.RunDir
	c.Dist = runconfig.Dist{World: l.World(), TP: l.TP, DP: l.DP, EP: l.EP, Balance: l.Balance, TLS: h.DataPlaneTLS}
	c.Checkpoint = runconfig.Checkpoint{
		Dir:          s.CheckpointRoot(h.CheckpointRoot),
		Job:          t.JobID,
		Every:        s.Checkpoint.IntervalSteps,
		KeepLast:     s.Checkpoint.KeepLast,
		KeepBest:     s.Checkpoint.KeepBest,
		EveryMinutes: float64(s.Checkpoint.IntervalMinutes),
		ResumeStep:   t.ResumeStep,
		CommitVia:    h.CommitVia,
		Attempt:      t.Attempt,
		CommitTLS:    h.CommitTLS,
	}
	c.Resume = true
	if err := c.Validate(); err != nil {
		return runconfig.Config{}, fmt.Errorf("%w: rank config of job %s: %w", ErrInvalid, t.JobID, err)
	}
	return c, nil
}
