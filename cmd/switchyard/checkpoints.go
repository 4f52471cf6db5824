package main

// switchyard checkpoints: list, show, delete.

import (
	"context"
	"fmt"
	"strconv"

	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

func (c *cli) cmdCheckpoints(ctx context.Context, args []string) error {
	return c.group(ctx, "checkpoints", args, []command{
		{"list", "JOB", "list a job's checkpoints", c.checkpointsList},
		{"show", "JOB STEP", "show one checkpoint and its shards (size, sha256)", c.checkpointsShow},
		{"delete", "JOB STEP", "delete a checkpoint", c.checkpointsDelete},
	})
}

// listCheckpoints returns the job's checkpoints.
func listCheckpoints(ctx context.Context, r *remoteFlags, op, job string) ([]*apiv1.Checkpoint, error) {
	cl, err := r.dial()
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	cctx, cancel := r.call(ctx)
	defer cancel()
	resp, err := cl.ListCheckpoints(cctx, &apiv1.ListCheckpointsRequest{JobId: job})
	if err != nil {
		return nil, callError(op, r, err)
	}
	return resp.GetCheckpoints(), nil
}

func parseStep(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, usageError{fmt.Errorf("STEP %q: must be a step number >= 0", s)}
	}
	return n, nil
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
		t.row(ck.GetStep(), orDash(ck.GetStatus()), fmtTime(ck.GetCommittedUnixNano()), fmtBytes(ck.GetBytes()),
			layout(ck), valLoss(ck.GetValLoss()), len(ck.GetShards()))
	}
	return t.flush()
}

func (c *cli) checkpointsShow(ctx context.Context, name string, args []string) error {
	fs, r := c.flags(name)
	pos, err := c.parse(fs, r, args, 2, 2)
	if err != nil {
		return err
	}
	step, err := parseStep(pos[1])
	if err != nil {
		return err
	}
	op := fmt.Sprintf("checkpoints show %s %d", pos[0], step)
	cks, err := listCheckpoints(ctx, r, op, pos[0])
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
		return notFound(op, r, "job %s has no checkpoint at step %d", pos[0], step)
	}
	if r.json() {
		return printProto(c.out, ck, false)
	}
	w := c.out
	fmt.Fprintf(w, "Job:        %s\n", ck.GetJobId())
	fmt.Fprintf(w, "Step:       %d\n", ck.GetStep())
	fmt.Fprintf(w, "Status:     %s\n", orDash(ck.GetStatus()))
	fmt.Fprintf(w, "Committed:  %s\n", fmtTime(ck.GetCommittedUnixNano()))
	fmt.Fprintf(w, "Size:       %s (%d bytes)\n", fmtBytes(ck.GetBytes()), ck.GetBytes())
	fmt.Fprintf(w, "Layout:     %s\n", layout(ck))
	fmt.Fprintf(w, "Val loss:   %s\n", valLoss(ck.GetValLoss()))
	fmt.Fprintf(w, "\nShards (%d):\n", len(ck.GetShards()))
	if len(ck.GetShards()) == 0 {
		fmt.Fprintln(w, "  (none)")
		return nil
	}
	t := newTable(w, "  ", "NAME", "SIZE", "SHA256")
	for _, s := range ck.GetShards() {
		t.row(s.GetName(), fmtBytes(s.GetSize()), orDash(s.GetSha256()))
	}
	return t.flush()
}

func (c *cli) checkpointsDelete(ctx context.Context, name string, args []string) error {
	fs, r := c.flags(name)
	pos, err := c.parse(fs, r, args, 2, 2)
	if err != nil {
		return err
	}
	step, err := parseStep(pos[1])
	if err != nil {
		return err
	}
	cl, err := r.dial()
	if err != nil {
		return err
	}
	defer cl.Close()
	cctx, cancel := r.call(ctx)
	defer cancel()
	op := fmt.Sprintf("checkpoints delete %s %d", pos[0], step)
	resp, err := cl.DeleteCheckpoint(cctx, &apiv1.DeleteCheckpointRequest{JobId: pos[0], Step: step})
	if err != nil {
		return callError(op, r, err)
	}
	if r.json() {
		return printProto(c.out, resp, false)
	}
	fmt.Fprintf(c.out, "deleted checkpoint %s step %d\n", pos[0], step)
	return nil
}
