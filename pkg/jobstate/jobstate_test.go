package jobstate

import (
	"testing"

	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

func TestTable(t *testing.T) {
	final := map[pb.JobState]bool{pb.JobState_JOB_STATE_SUCCEEDED: true, pb.JobState_JOB_STATE_FAILED: true, pb.JobState_JOB_STATE_CANCELLED: true}
	for v := range pb.JobState_name {
		st := pb.JobState(v)
		if Final(st) != final[st] {
			t.Errorf("Final(%v) = %v", st, Final(st))
		}
		if st == pb.JobState_JOB_STATE_UNSPECIFIED {
			if _, ok := Parse(Name(st)); ok {
				t.Errorf("the unspecified state parses")
			}
			continue
		}
		for _, n := range []string{Name(st), Lower(st), " " + Lower(st)} {
			if got, ok := Parse(n); !ok || got != st {
				t.Errorf("Parse(%q) = %v %v, want %v", n, got, ok, st)
			}
		}
	}
	if Name(pb.JobState_JOB_STATE_RUNNING) != "RUNNING" || Lower(pb.JobState_JOB_STATE_PLACED) != "placed" {
		t.Errorf("names %q %q", Name(pb.JobState_JOB_STATE_RUNNING), Lower(pb.JobState_JOB_STATE_PLACED))
	}
	if _, ok := Parse("sideways"); ok {
		t.Errorf("an unknown name parses")
	}
	if n := Name(pb.JobState(99)); n != "99" {
		t.Errorf("Name(99) = %q", n)
	}
}

func TestWorkerHealth(t *testing.T) {
	for _, tc := range []struct {
		w    *apiv1.Worker
		want string
	}{
		{&apiv1.Worker{Healthy: true, Health: "healthy"}, "healthy"},
		{&apiv1.Worker{Health: "silent", SecondsSinceSync: 4.25}, "silent 4.2s"},
		{&apiv1.Worker{Health: "draining"}, "draining"},
		{&apiv1.Worker{Health: "unknown"}, "unknown"},
		{&apiv1.Worker{Healthy: true}, "healthy"}, // an older coordinator
		{&apiv1.Worker{}, "unhealthy"},
	} {
		if got := WorkerHealth(tc.w); got != tc.want {
			t.Errorf("%v: %q, want %q", tc.w, got, tc.want)
		}
	}
}
