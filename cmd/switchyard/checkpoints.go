package main

// switchyard checkpoints: list, show, delete.

import (
	"context"
	"flag"
	"fmt"
	"strconv"

	"github.com/switchyard-ml/switchyard/pkg/client"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

func (c *cli) cmdCheckpoints(ctx context.Context, args []string) error {
	return c.group(ctx, "checkpoints", args, []command{
		{"list", "JOB", "list a job's checkpoints", c.checkpointsList},
		{"show", "JOB STEP [--verify]", "show one checkpoint and its shards (size, sha256); --verify: the coordinator reads every shard and checks it", c.checkpointsShow},
		{"delete", "JOB STEP", "delete a checkpoint", c.checkpointsDelete},
		{"commit", "--step N [--val-loss X] DIR", "in a command job's rank 0: commit the checkpoint of step N that the trainer wrote to DIR (any files; hashed, moved into the job's checkpoints, committed through the coordinator; X: its validation loss, for keep_best)", c.checkpointsCommit},
	})
}

// listCheckpoints returns the job's checkpoints.
func listCheckpoints(ctx context.Context, r *remoteFlags, op, job string) ([]*apiv1.Checkpoint, error) {
	resp, err := unary(ctx, r, op, func(ctx context.Context, cl *client.Client) (*apiv1.ListCheckpointsResponse, error) {
		return cl.ListCheckpoints(ctx, &apiv1.ListCheckpointsRequest{JobId: job})
	})
	if err != nil {
		return nil, err
	}
	return resp.GetCheckpoints(), nil
}

// jobStepArgs parses the flags and the JOB STEP arguments of
// `checkpoints show` and `checkpoints delete`.
func (c *cli) jobStepArgs(name string, args []string, more ...func(*flag.FlagSet)) (r *remoteFlags, job string, step int64, err error) {
	fs, r := c.flags(name)
	for _, m := range more {
		m(fs)
	}
	pos, err := c.parse(fs, r, args, 2, 2)
	if err != nil {
		return nil, "", 0, err
	}
	step, err = strconv.ParseInt(pos[1], 10, 64)
	if err != nil || step < 0 {
		return nil, "", 0, usageError{fmt.Errorf("STEP %q: must be a step number >= 0", pos[1])}
	}
	return r, pos[0], step, nil
}

func layout(ck *apiv1.Checkpoint) string {
	return fmt.Sprintf("tp%d dp%d ep%d", ck.GetTp(), ck.GetDp(), ck.GetEp())
}

func valLoss(v float64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.4f", v)
}

func (c *cli) checkpointsList(ctx context.Context, name string, args []string) error {
	fs, r := c.flags(name)
	pos, err := c.parse(fs, r, args, 1, 1)
	if err != nil {
		return err
	}
	cks, err := listCheckpoints(ctx, r, "checkpoints list "+pos[0], pos[0])
	if err != nil {
		return err
	}
	if r.json() {
		return printProto(c.out, &apiv1.ListCheckpointsResponse{Checkpoints: cks}, false)
	}
	t := newTable(c.out, "", "STEP", "STATUS", "COMMITTED", "SIZE", "LAYOUT", "VAL LOSS", "SHARDS")
	for _, ck := range cks {
		if ck.GetStatus() == "deleting" {
			// its files are going: the coordinator lists its step only
			t.row(ck.GetStep(), ck.GetStatus(), "-", "-", "-", "-", "-")
			continue
		}
		t.row(ck.GetStep(), orDash(ck.GetStatus()), fmtTime(ck.GetCommittedUnixNano()), fmtBytes(ck.GetBytes()),
			layout(ck), valLoss(ck.GetValLoss()), len(ck.GetShards()))
	}
	return t.flush()
}

func (c *cli) checkpointsShow(ctx context.Context, name string, args []string) (err error) {
	var verify bool
	r, job, step, err := c.jobStepArgs(name, args, func(fs *flag.FlagSet) {
		fs.BoolVar(&verify, "verify", false, "have the coordinator read every shard and check its size and sha256")
	})
	if err != nil {
		return err
	}
	op := fmt.Sprintf("checkpoints show %s %d", job, step)
	cks, err := listCheckpoints(ctx, r, op, job)
	if err != nil {
		return err
	}
	var ck *apiv1.Checkpoint
	for _, x := range cks {
		if x.GetStep() == step {
			ck = x
		}
	}
	if ck == nil {
		return notFound(op, r, "job %s has no checkpoint at step %d", job, step)
	}
	var checks map[string]string
	if verify {
		v, verr := unary(ctx, r, op+" --verify", func(ctx context.Context, cl *client.Client) (*apiv1.VerifyCheckpointResponse, error) {
			return cl.VerifyCheckpoint(ctx, &apiv1.VerifyCheckpointRequest{JobId: job, Step: step})
		})
		if verr != nil {
			return verr
		}
		if r.json() {
			if err := printProto(c.out, v, false); err != nil {
				return err
			}
		}
		checks = map[string]string{}
		for _, s := range v.GetShards() {
			checks[s.GetName()] = s.GetStatus()
		}
		defer func() { // the named result: exit 1 when a shard is bad
			if err == nil && !v.GetOk() {
				err = fmt.Errorf("%s: checkpoint does not verify", op)
			}
		}()
	}
	if r.json() {
		if verify {
			return nil
		}
		return printProto(c.out, ck, false)
	}
	w := c.out
	fmt.Fprintf(w, "Job:        %s\n", ck.GetJobId())
	fmt.Fprintf(w, "Step:       %d\n", ck.GetStep())
	fmt.Fprintf(w, "Status:     %s\n", orDash(ck.GetStatus()))
	fmt.Fprintf(w, "Committed:  %s\n", fmtTime(ck.GetCommittedUnixNano()))
	fmt.Fprintf(w, "Size:       %s (%d bytes)\n", fmtBytes(ck.GetBytes()), ck.GetBytes())
	fmt.Fprintf(w, "Layout:     %s\n", layout(ck))
	fmt.Fprintf(w, "Val loss:   %s (engine jobs: mean validation bits/byte over the domains; command jobs: the trainer's --val-loss)\n", valLoss(ck.GetValLoss()))
	fmt.Fprintf(w, "\nShards (%d):\n", len(ck.GetShards()))
	if len(ck.GetShards()) == 0 {
		fmt.Fprintln(w, "  (none)")
		return nil
	}
	if checks == nil {
		t := newTable(w, "  ", "NAME", "SIZE", "SHA256")
		for _, s := range ck.GetShards() {
			t.row(s.GetName(), fmtBytes(s.GetSize()), orDash(s.GetSha256()))
		}
		return t.flush()
	}
	t := newTable(w, "  ", "NAME", "SIZE", "SHA256", "VERIFIED")
	for _, s := range ck.GetShards() {
		t.row(s.GetName(), fmtBytes(s.GetSize()), orDash(s.GetSha256()), orDash(checks[s.GetName()]))
	}
	return t.flush()
}

func (c *cli) checkpointsDelete(ctx context.Context, name string, args []string) error {
	r, job, step, err := c.jobStepArgs(name, args)
	if err != nil {
		return err
	}
	op := fmt.Sprintf("checkpoints delete %s %d", job, step)
	resp, err := unary(ctx, r, op, func(ctx context.Context, cl *client.Client) (*apiv1.DeleteCheckpointResponse, error) {
		return cl.DeleteCheckpoint(ctx, &apiv1.DeleteCheckpointRequest{JobId: job, Step: step})
	})
	if err != nil {
		return err
	}
	if r.json() {
		return printProto(c.out, resp, false)
	}
	fmt.Fprintf(c.out, "deleted checkpoint %s step %d\n", job, step)
	return nil
}
