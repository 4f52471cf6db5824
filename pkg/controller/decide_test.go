package controller

import (
	"strings"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/membership"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

func TestDecide(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	running := func(id string, attempt int32, workers ...string) *pb.Job {
		j := &pb.Job{Id: id, State: pb.JobState_JOB_STATE_RUNNING, Restarts: attempt}
		for r, w := range workers {
			j.Placement = append(j.Placement, &pb.RankAssignment{Rank: int32(r), WorkerId: w})
		}
		return j
	}
	placed := func(id string, workers ...string) *pb.Job {
		j := running(id, 0, workers...)
		j.State = pb.JobState_JOB_STATE_PLACED
		return j
	}
	liveOf := func(ids ...string) map[string]membership.WorkerInfo {
		m := map[string]membership.WorkerInfo{}
		for _, id := range ids {
			m[id] = membership.WorkerInfo{ID: id}
		}
		return m
	}
	synced := map[string]time.Time{"w1": t0, "w2": t0, "w3": t0}
	held := func(attempt int32, at time.Time) map[string]pendingFailure {
		return map[string]pendingFailure{"j": {attempt: attempt, at: at, msg: "rank 1 on worker w2: exited 1", worker: "w2"}}
	}
	for _, tc := range []struct {
		name      string
		o         observed
		want      string // "reason worker" per verdict, ";" separated
		msgSubstr string
	}{
		{name: "healthy", o: observed{now: t0, jobs: []*pb.Job{running("j", 0, "w1", "w2")}, live: liveOf("w1", "w2"), lastSync: synced}},
		{name: "lease expired", o: observed{now: t0, jobs: []*pb.Job{running("j", 0, "w1", "w2")}, live: liveOf("w1"), lastSync: synced},
			want: "WorkerLost w2", msgSubstr: "worker w2 (rank 1) lost"},
		{name: "pending jobs are not judged", o: observed{now: t0, jobs: []*pb.Job{{Id: "j", State: pb.JobState_JOB_STATE_PENDING,
			Placement: []*pb.RankAssignment{{WorkerId: "gone"}}}}, live: liveOf()}},
		{name: "rank failure within the grace period", o: observed{now: t0.Add(time.Second), jobs: []*pb.Job{running("j", 0, "w1", "w2")},
			live: liveOf("w1", "w2"), lastSync: map[string]time.Time{"w1": t0.Add(time.Second), "w2": t0.Add(time.Second)},
			failing: held(0, t0), grace: 2 * time.Second, silence: time.Second}},
		{name: "rank failure after the grace period", o: observed{now: t0.Add(2 * time.Second), jobs: []*pb.Job{running("j", 0, "w1", "w2")},
			live: liveOf("w1", "w2"), lastSync: map[string]time.Time{"w1": t0.Add(2 * time.Second), "w2": t0.Add(2 * time.Second)},
			failing: held(0, t0), grace: 2 * time.Second, silence: time.Second},
			want: "RankFailed w2", msgSubstr: "exited 1"},
		{name: "a refusal after the grace period", o: observed{now: t0.Add(2 * time.Second), jobs: []*pb.Job{running("j", 0, "w1", "w2")},
			live: liveOf("w1", "w2"), lastSync: map[string]time.Time{"w1": t0.Add(2 * time.Second), "w2": t0.Add(2 * time.Second)},
			failing: map[string]pendingFailure{"j": {at: t0, msg: "rank 1 on worker w2: data.corpus /x is outside", worker: "w2", refused: true}},
			grace:   2 * time.Second, silence: time.Second},
			want: "Refused w2", msgSubstr: "is outside"},
		{name: "a draining worker that left drained", o: observed{now: t0, jobs: []*pb.Job{running("j", 0, "w1", "w2")}, live: liveOf("w1"), lastSync: synced,
			draining: map[string]bool{"w2": true}},
			want: "WorkerDrained w2", msgSubstr: "worker w2 (rank 1) drained"},
		{name: "a rank failure on a draining worker, still registered", o: observed{now: t0.Add(2 * time.Second), jobs: []*pb.Job{running("j", 0, "w1", "w2")},
			live: liveOf("w1", "w2"), lastSync: map[string]time.Time{"w1": t0.Add(2 * time.Second), "w2": t0.Add(2 * time.Second)},
			failing: held(0, t0), grace: 2 * time.Second, silence: time.Second, draining: map[string]bool{"w2": true}},
			want: "WorkerDrained w2", msgSubstr: "stopped the job's rank after its checkpoint"},
		{name: "failure of an older attempt is ignored", o: observed{now: t0.Add(time.Hour), jobs: []*pb.Job{running("j", 1, "w1", "w2")},
			live: liveOf("w1", "w2"), lastSync: map[string]time.Time{"w1": t0.Add(time.Hour), "w2": t0.Add(time.Hour)},
			failing: held(0, t0), grace: 2 * time.Second, silence: time.Second}},
		{name: "the quietest silent worker is blamed", o: observed{now: t0.Add(5 * time.Second), jobs: []*pb.Job{running("j", 0, "w1", "w2", "w3")},
			live: liveOf("w1", "w2", "w3"), lastSync: map[string]time.Time{"w1": t0, "w2": t0.Add(5 * time.Second), "w3": t0.Add(3 * time.Second)},
			failing: held(0, t0.Add(4*time.Second)), grace: 2 * time.Second, silence: time.Second},
			want: "WorkerLost w1", msgSubstr: "worker w1 (rank 0) stopped responding (no sync for 5s)"},
		{name: "placed on a worker that stopped syncing", o: observed{now: t0.Add(20 * time.Second), jobs: []*pb.Job{placed("j", "w1", "w2")},
			live: liveOf("w1", "w2"), lastSync: map[string]time.Time{"w1": t0.Add(20 * time.Second), "w2": t0}, silence: time.Second, startSilence: 15 * time.Second},
			want: "WorkerLost w2", msgSubstr: "worker w2 (rank 1) has not synced for 20s while its rank waited to start"},
		{name: "placed, a worker late but within the start silence", o: observed{now: t0.Add(10 * time.Second), jobs: []*pb.Job{placed("j", "w1", "w2")},
			live: liveOf("w1", "w2"), lastSync: map[string]time.Time{"w1": t0.Add(10 * time.Second), "w2": t0}, silence: time.Second, startSilence: 15 * time.Second}},
		{name: "running jobs are not judged by the start silence", o: observed{now: t0.Add(20 * time.Second), jobs: []*pb.Job{running("j", 0, "w1", "w2")},
			live: liveOf("w1", "w2"), lastSync: map[string]time.Time{"w1": t0.Add(20 * time.Second), "w2": t0}, silence: time.Second, startSilence: 15 * time.Second}},
		{name: "a lost worker wins over a held failure", o: observed{now: t0.Add(time.Hour), jobs: []*pb.Job{running("j", 0, "w1", "w2"), running("k", 0, "w3")},
			live: liveOf("w2", "w3"), lastSync: synced, failing: held(0, t0), grace: time.Second, silence: time.Hour},
			want: "WorkerLost w1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, v := range decide(tc.o) {
				got = append(got, v.reason+" "+v.worker)
				if tc.msgSubstr != "" && !strings.Contains(v.msg, tc.msgSubstr) {
					t.Errorf("message %q does not say %q", v.msg, tc.msgSubstr)
				}
			}
			if s := strings.Join(got, ";"); s != tc.want {
				t.Fatalf("verdicts %q, want %q", s, tc.want)
			}
		})
	}
}

// TestBoundGPUStats: a job's record keeps one GPU sample per rank of its
// world, whatever a worker sent.
func TestBoundGPUStats(t *testing.T) {
	got := boundGPUStats([]*pb.GPUStat{{Rank: 1, Uuid: "GPU-b"}, {Rank: 0, Uuid: "GPU-a"}, {Rank: 1, Uuid: "GPU-dup"}, {Rank: 2}, {Rank: -1}}, 2)
	if len(got) != 2 || got[0].GetUuid() != "GPU-a" || got[1].GetUuid() != "GPU-b" {
		t.Fatalf("kept %v", got)
	}
	if boundGPUStats(nil, 2) != nil {
		t.Fatal("none: want nil")
	}
}
