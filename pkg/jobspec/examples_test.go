package jobspec

import "testing"

// The example spec in deploy/ is a valid spec.
func TestDeployExampleParses(t *testing.T) {
	s, err := Load("../../deploy/examples/job.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if s.Parallel.DP != 4 || s.Parallel.EP != 2 || s.Elastic.MinDP != 2 {
		t.Fatalf("parsed %+v", s.Parallel)
	}
}
