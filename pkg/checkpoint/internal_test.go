package checkpoint

import "testing"

func TestParseStepKey(t *testing.T) {
	for _, tc := range []struct {
		key  string
		step int64
		ok   bool
	}{
		{"j/step-000000001200/rank-0000/p.bin", 1200, true},
		{"j/step-000000000000/x", 0, true},
		{"j/step-1000000000000/x", 1000000000000, true},
		{"j/step-00000000120/x", 0, false},   // too short
		{"j/step-0000000001200/x", 0, false}, // not canonical
		{"j/step-00000000x200/x", 0, false},
		{"j/step-000000001200", 0, false}, // no file under it
		{"k/step-000000001200/x", 0, false},
		{"j/other", 0, false},
	} {
		step, ok := parseStepKey("j", tc.key)
		if step != tc.step || ok != tc.ok {
			t.Errorf("parseStepKey(%q) = %d, %v; want %d, %v", tc.key, step, ok, tc.step, tc.ok)
		}
		if ok && StepPrefix("j", step) != tc.key[:len(StepPrefix("j", step))] {
			t.Errorf("StepPrefix does not round-trip %q", tc.key)
		}
	}
}
