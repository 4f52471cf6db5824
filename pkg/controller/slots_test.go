package controller

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/membership"
	"github.com/switchyard-ml/switchyard/pkg/scheduler"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// TestSlotPlacementProperties: on random clusters of GPU workers with
// several slots, and random queues placed over two scheduling rounds (the
// second seeing the first's jobs running), no slot and so no GPU is given
// to two ranks, a worker's ranks never ask for more than it has, every
// job is placed whole or not at all, a tensor-parallel group shares one
// worker, and each rank's slot exists on its worker.
func TestSlotPlacementProperties(t *testing.T) {
	l := newLocal(t)
	n := 300
	if testing.Short() {
		n = 40
	}
	for seed := range n {
		r := rand.New(rand.NewPCG(uint64(seed), 11))
		live := map[string]membership.WorkerInfo{}
		for i := range 1 + r.IntN(8) {
			gpus := []int{0, 1, 2, 4, 8}[r.IntN(5)]
			slots := 1
			if gpus > 0 {
				slots = gpus / []int{1, 1, 2}[r.IntN(3)] // one or two GPUs a slot
				slots = max(slots, 1)
			}
			id := fmt.Sprintf("w%d", i)
			live[id] = membership.WorkerInfo{ID: id, Address: id + ":7000", Host: id, Slots: slots,
				Resources: membership.Resources{CPUCores: 2 * slots, MemoryBytes: int64(slots) << 32, GPUs: gpus}}
		}
		var running []*pb.Job
		reqs := map[string]scheduler.Resources{} // per-rank requests of every job so far
		for round := range 2 {
			var queue []scheduler.Job
			for k := range 1 + r.IntN(5) {
				tp := []int{1, 1, 2, 4}[r.IntN(4)]
				queue = append(queue, scheduler.Job{
					ID: fmt.Sprintf("j%d-%d", round, k), Seq: uint64(10*round + k),
					Layout:  scheduler.Layout{TP: tp, DP: 1 + r.IntN(4), EP: 1},
					PerRank: scheduler.Resources{CPUCores: 1, MemoryMiB: 1024, GPUs: r.IntN(2)},
				})
			}
			for _, q := range queue {
				reqs[q.ID] = q.PerRank
			}
			h := l.s.hold()
			snap := h.snapshot(live, running)
			h.release()
			plans, _ := scheduler.Schedule(snap, queue)
			for _, p := range plans {
				j := &pb.Job{Id: p.Job.ID, State: pb.JobState_JOB_STATE_RUNNING, WorldSize: int32(p.Job.Layout.World())}
				for rank, id := range p.Workers {
					ws := splitSlotID(id)
					j.Placement = append(j.Placement, &pb.RankAssignment{Rank: int32(rank), WorkerId: ws.worker, Slot: int32(ws.slot)})
				}
				if len(j.Placement) != p.Job.Layout.World() {
					t.Fatalf("seed %d: job %s placed %d of %d ranks", seed, j.Id, len(j.Placement), p.Job.Layout.World())
				}
				for g := 0; g < len(p.Workers); g += p.Job.Layout.TP {
					for k := g; k < g+p.Job.Layout.TP; k++ {
						if j.Placement[k].WorkerId != j.Placement[g].WorkerId {
							t.Fatalf("seed %d: job %s: TP group at rank %d spans workers %s and %s", seed, j.Id, g, j.Placement[g].WorkerId, j.Placement[k].WorkerId)
						}
					}
				}
				running = append(running, j)
			}
			checkSlots(t, seed, live, running, reqs)
		}
	}
}

func checkSlots(t *testing.T, seed int, live map[string]membership.WorkerInfo, running []*pb.Job, perRank map[string]scheduler.Resources) {
	t.Helper()
	type use struct{ gpus, cores int }
	used := map[workerSlot]string{}
	per := map[string]use{}
	for _, j := range running {
		for _, a := range j.Placement {
			w, ok := live[a.WorkerId]
			if !ok || a.Slot < 0 || int(a.Slot) >= w.SlotCount() {
				t.Fatalf("seed %d: job %s rank %d in slot %d of worker %s (%d slots)", seed, j.Id, a.Rank, a.Slot, a.WorkerId, w.SlotCount())
			}
			key := workerSlot{a.WorkerId, int(a.Slot)}
			if other, dup := used[key]; dup {
				t.Fatalf("seed %d: slot %d of %s given to %s and %s", seed, a.Slot, a.WorkerId, other, j.Id)
			}
			used[key] = fmt.Sprintf("%s/%d", j.Id, a.Rank)
			if res, ok := perRank[j.Id]; ok {
				u := per[a.WorkerId]
				u.gpus += res.GPUs
				u.cores += res.CPUCores
				per[a.WorkerId] = u
				share := w.Resources.GPUs / w.SlotCount()
				if res.GPUs > share {
					t.Fatalf("seed %d: job %s rank %d asks %d GPUs in a slot of %d", seed, j.Id, a.Rank, res.GPUs, share)
				}
			}
		}
	}
	for id, u := range per {
		if w := live[id]; u.gpus > w.Resources.GPUs || u.cores > w.Resources.CPUCores {
			t.Fatalf("seed %d: worker %s: ranks ask %d GPUs and %d cores of %d and %d", seed, id, u.gpus, u.cores, w.Resources.GPUs, w.Resources.CPUCores)
		}
	}
}
