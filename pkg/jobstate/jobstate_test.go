package jobstate

import (
	"testing"

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
