package controller

import (
	"context"
	"strings"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestDeleteFinishesAnInterruptedDeletion: a checkpoint whose deletion
// was cut short (marked deleting, its files gone: a rank killed in its
// retention, a job cancelled then) stays listed as deleting, since
// nothing else finishes it for a job that does not run again; `checkpoints
// delete` finishes it, though no file of it is left (the guard against a
// wrong --checkpoint-root is for live checkpoints), and a step that is
// neither live nor deleting is still NotFound.
func TestDeleteFinishesAnInterruptedDeletion(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	st, err := checkpoint.NewDirStorage(root)
	if err != nil {
		t.Fatal(err)
	}
	l := newLocal(t)
	cat := checkpoint.NewStorageCatalogue(checkpoint.NewMemStorage())
	l.s.cfg.Checkpoints = etcdCheckpoints{cat: cat, root: root, log: quietLogger(t)}
	l.submit("j", "name: j\nsteps: 10\n")
	if _, err := l.s.CancelJob(ctx, &apiv1.CancelJobRequest{JobId: "j"}); err != nil {
		t.Fatal(err)
	}
	key := checkpoint.StepPrefix("j", 6) + "rank-0000/state.bin"
	size, sum, err := st.Put(ctx, key, strings.NewReader("shard"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cat.Commit(ctx, checkpoint.Manifest{Job: "j", Step: 6, Layout: checkpoint.Layout{TP: 1, DP: 1, EP: 1},
		Shards: []checkpoint.ShardInfo{{Name: "rank-0000/state.bin", Size: size, SHA256: sum, Kind: checkpoint.KindParams}}}); err != nil {
		t.Fatal(err)
	}
	// the deletion got as far as the files
	if err := cat.MarkDeleting(ctx, "j", 6); err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if _, err := l.s.DeleteCheckpoint(ctx, &apiv1.DeleteCheckpointRequest{JobId: "j", Step: 6}); err != nil {
		t.Fatalf("finishing the interrupted deletion: %v", err)
	}
	if live, _ := cat.List(ctx, "j"); len(live) != 0 {
		t.Errorf("live after: %v", live)
	}
	if d, err := cat.Deleting(ctx, "j"); err != nil || len(d) != 0 {
		t.Errorf("still deleting: %v, %v", d, err)
	}
	if _, err := l.s.DeleteCheckpoint(ctx, &apiv1.DeleteCheckpointRequest{JobId: "j", Step: 6}); status.Code(err) != codes.NotFound {
		t.Errorf("deleting it again: %v, want NotFound", err)
	}
}
