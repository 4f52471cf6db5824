package controller

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
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

// pausingCheckpoints pauses the first List (ResumeJob's check that its
// step is committed) until proceed is closed or a moment has passed.
type pausingCheckpoints struct {
	Checkpoints
	once             sync.Once
	listing, proceed chan struct{}
}

func (c *pausingCheckpoints) List(ctx context.Context, j *pb.Job) ([]checkpoint.Manifest, []int64, error) {
	live, deleting, err := c.Checkpoints.List(ctx, j)
	c.once.Do(func() {
		close(c.listing)
		select {
		case <-c.proceed:
		case <-time.After(300 * time.Millisecond):
		}
	})
	return live, deleting, err
}

// TestResumeFromRacesDelete: a resume from a checkpoint and the deletion
// of that checkpoint, at once, never leave the job to resume from a step
// that is gone (FuzzAPI found it: the delete ran between the resume's
// check that the step is committed and its command). One of them is
// refused: here the delete, since the job now resumes from the step.
func TestResumeFromRacesDelete(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	st, err := checkpoint.NewDirStorage(root)
	if err != nil {
		t.Fatal(err)
	}
	l := newLocal(t)
	cat := checkpoint.NewMemCatalogue()
	cps := &pausingCheckpoints{Checkpoints: etcdCheckpoints{cat: cat, root: root, log: quietLogger(t)},
		listing: make(chan struct{}), proceed: make(chan struct{})}
	l.s.cfg.Checkpoints = cps
	l.submit("j", fmt.Sprintf(spec2, 0))
	if _, err := l.s.CancelJob(ctx, &apiv1.CancelJobRequest{JobId: "j"}); err != nil {
		t.Fatal(err)
	}
	m := apiManifest("j", 4)
	for _, sh := range m.Shards {
		if _, _, err := st.Put(ctx, checkpoint.StepPrefix("j", 4)+sh.Name, bytes.NewReader(apiShard("j", 4, sh.Name))); err != nil {
			t.Fatal(err)
		}
	}
	if err := cat.Commit(ctx, m); err != nil {
		t.Fatal(err)
	}
	resumed := make(chan error, 1)
	go func() {
		_, err := l.s.ResumeJob(ctx, &apiv1.ResumeJobRequest{JobId: "j", FromStep: 4})
		resumed <- err
	}()
	<-cps.listing // the resume has found step 4 committed
	_, delErr := l.s.DeleteCheckpoint(ctx, &apiv1.DeleteCheckpointRequest{JobId: "j", Step: 4})
	close(cps.proceed)
	if err := <-resumed; err != nil {
		t.Fatalf("resume: %v", err)
	}
	j := l.job("j")
	live, _ := cat.List(ctx, "j")
	if j.ResumeFromStep == 4 && !slices.ContainsFunc(live, func(m checkpoint.Manifest) bool { return m.Step == 4 }) {
		t.Fatalf("the job resumes from step 4, deleted meanwhile (the delete answered %v)", delErr)
	}
	if status.Code(delErr) != codes.FailedPrecondition || !strings.Contains(delErr.Error(), "resumes from it") {
		t.Errorf("the delete: %v, want FailedPrecondition: the job resumes from it", delErr)
	}
}
