package controller

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/coordinator"
	"github.com/switchyard-ml/switchyard/pkg/membership"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// BenchmarkPlacement is the time from a job's submission to its
// placement on idle workers, with the production supervision tick (250
// ms): "unfenced" without a checkpoint catalogue, "fenced" with one (the
// attempt's fence raised first, off the leader's lock).
func BenchmarkPlacement(b *testing.B) {
	for _, fenced := range []bool{false, true} {
		b.Run(map[bool]string{false: "unfenced", true: "fenced"}[fenced], func(b *testing.B) {
			members := membership.NewMemoryServer()
			b.Cleanup(members.Stop)
			cfg := Config{Node: &localReplica{fsm: coordinator.NewFSM(0), now: time.Now}, APIAddr: "local:0",
				Workers: membership.NewMemory(members), Replicas: membership.NewMemory(membership.NewMemoryServer()),
				Tick: 250 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)}
			if fenced {
				cfg.Checkpoints = etcdCheckpoints{cat: checkpoint.NewMemCatalogue()}
			}
			s, err := New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			// two idle workers for each job (a placed job keeps its
			// workers: nothing here runs its ranks)
			register := func(i int) {
				for _, w := range []string{fmt.Sprintf("w%d-a", i), fmt.Sprintf("w%d-b", i)} {
					if _, err := membership.NewMemory(members).Register(context.Background(), membership.WorkerInfo{ID: w, Address: w + ":9000",
						Resources: membership.Resources{CPUCores: 2, MemoryBytes: 4 << 30}}, time.Hour); err != nil {
						b.Fatal(err)
					}
				}
				for len(s.liveWorkers()) < 2*(i+1) {
					time.Sleep(time.Millisecond)
				}
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); s.Run(ctx) }() //nolint:errcheck
			defer func() { cancel(); <-done }()
			spec := "name: p\nparallel: {dp: 2, ep: 1}\nsteps: 10\nresources: {cpu_cores: 1, memory_mib: 512}\n"
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				register(i)
				// submitted at a random point of the tick, as jobs are
				time.Sleep(time.Duration(i*37%250) * time.Millisecond)
				b.StartTimer()
				id := fmt.Sprintf("p-%d", i)
				if _, err := s.SubmitJob(ctx, &apiv1.SubmitJobRequest{JobId: id, Spec: []byte(spec)}); err != nil {
					b.Fatal(err)
				}
				for {
					j, err := s.cfg.Node.Job(id)
					if err != nil {
						b.Fatal(err)
					}
					if j.State == pb.JobState_JOB_STATE_PLACED {
						break
					}
					time.Sleep(time.Millisecond)
				}
			}
		})
	}
}
