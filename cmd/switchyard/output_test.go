package main

import (
	"bytes"
	"encoding/json"
	"testing"

	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	coordinatorv1 "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// -o json writes a job's spec as its YAML text; a "spec" inside another
// string, and a spec that is not UTF-8 text, are left as protojson has them.
func TestPrintProtoSpecAsText(t *testing.T) {
	const spec = "name: a\nmodel: {preset: tiny}\nenv: {NOTE: \"quoted \\\\ text\"}\n"
	const message = `the user wrote "spec": "YQ==" here`
	for _, oneLine := range []bool{false, true} {
		for _, c := range []struct{ spec, want string }{
			{spec, spec},
			{"\xff\xfe", "//4="},
		} {
			var b bytes.Buffer
			m := &apiv1.GetJobResponse{Job: &coordinatorv1.Job{Id: "j", Spec: []byte(c.spec), Message: message}}
			if err := printProto(&b, m, oneLine); err != nil {
				t.Fatal(err)
			}
			var got struct {
				Job struct{ Spec, Message string }
			}
			if err := json.Unmarshal(b.Bytes(), &got); err != nil {
				t.Fatalf("not JSON: %v\n%s", err, b.String())
			}
			if got.Job.Spec != c.want || got.Job.Message != message {
				t.Errorf("oneLine %v: spec %q, message %q; want %q, %q\n%s", oneLine, got.Job.Spec, got.Job.Message, c.want, message, b.String())
			}
		}
	}
}
