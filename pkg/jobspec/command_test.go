package jobspec

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

const commandSpec = `name: torch
runtime: command
command: /usr/bin/python3
args: [train.py, --steps, "20"]
env: {OMP_NUM_THREADS: "1"}
working_dir: /opt/torch-moe
ranks: 2
steps: 20
checkpoint: {keep_last: 2, keep_best: 1}
`

func TestParseCommand(t *testing.T) {
	s, err := Parse([]byte(commandSpec))
	if err != nil {
		t.Fatal(err)
	}
	if s.Runtime != RuntimeCommand || s.Command != "/usr/bin/python3" || !reflect.DeepEqual(s.Args, []string{"train.py", "--steps", "20"}) ||
		s.Env["OMP_NUM_THREADS"] != "1" || s.WorkingDir != "/opt/torch-moe" || s.Ranks != 2 || s.Steps != 20 {
		t.Fatalf("parsed %+v", s)
	}
	if s.Parallel != (Parallel{TP: 1, DP: 2, EP: 1, Balance: "none"}) || s.World() != 2 {
		t.Fatalf("layout %+v, world %d: want dp = ranks", s.Parallel, s.World())
	}
	// keep_best without eval_every: the trainer gives its validation loss
	if s.Elastic != (Elastic{MinDP: 2, MaxDP: 2}) || s.Checkpoint.KeepLast != 2 || s.Checkpoint.KeepBest != 1 {
		t.Fatalf("elastic %+v checkpoint %+v", s.Elastic, s.Checkpoint)
	}
	if _, err := s.TrainConfig(); err == nil {
		t.Fatal("a command job has no engine config")
	}
	if err := s.SchedulerJob("j", 1).Validate(); err != nil {
		t.Fatal(err)
	}
	// The marshalled spec parses to the same spec.
	out, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	s2, err := Parse(out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !reflect.DeepEqual(s, s2) {
		t.Fatalf("round trip:\n%+v\n%+v", s, s2)
	}
	// Steps may be left out: the trainer decides.
	s3, err := Parse([]byte("name: t\nruntime: command\ncommand: trainer\n"))
	if err != nil || s3.Steps != 0 || s3.Ranks != 1 {
		t.Fatalf("%v %+v", err, s3)
	}
}

func TestCommandSpecErrors(t *testing.T) {
	for _, c := range []struct{ yaml, path string }{
		{"runtime: command\n", "command"},
		{"runtime: command\ncommand: bin/train\n", "command"},
		{"runtime: command\ncommand: /usr/../bin/x\n", "command"},
		{"runtime: command\ncommand: x\nworking_dir: rel\n", "working_dir"},
		{"runtime: command\ncommand: x\nranks: 0\n", "ranks"},
		{"runtime: command\ncommand: x\nranks: -1\n", "ranks"},
		{"runtime: command\ncommand: x\nenv: {RANK: '3'}\n", "env.RANK"},
		{"runtime: command\ncommand: x\nenv: {SWITCHYARD_TOKEN: x}\n", "env.SWITCHYARD_TOKEN"},
		{"runtime: command\ncommand: x\nenv: {'1A': x}\n", "env"},
		{"runtime: command\ncommand: x\nargs: [\"a\\0b\"]\n", "args[0]"},
		{"runtime: command\ncommand: x\nsteps: -2\n", "steps"},
		{"runtime: command\ncommand: x\ncheckpoint: {keep_best: -1}\n", "checkpoint.keep_best"},
		{"runtime: command\ncommand: x\ncheckpoint: {storage: s3, path: s3://bucket}\n", "checkpoint.storage"},
		{"runtime: command\ncommand: x\nmodel: {preset: small}\n", "model"},
		{"runtime: command\ncommand: x\nparallel: {dp: 2}\n", "parallel"},
		{"runtime: command\ncommand: x\nlbl: {mode: micro}\n", `lbl = "{...}`},
		{"runtime: command\ncommand: x\nmicro_batch: 4\n", `micro_batch = "4`},
		{"runtime: command\ncommand: x\ncollectives: nccl\n", `collectives = "nccl`},
		{"runtime: torch\n", "runtime"},
		{"command: /bin/true\n", "command"},
		{"ranks: 2\n", "ranks"},
	} {
		_, err := Parse([]byte("name: t\n" + c.yaml))
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: err %v, want ErrInvalid", c.yaml, err)
			continue
		}
		if !strings.Contains(err.Error(), "jobspec: "+c.path+" = ") && !strings.Contains(err.Error(), "jobspec: "+c.path+`": `) {
			t.Errorf("%q: %v: does not name %s", c.yaml, err, c.path)
		}
	}
}

func TestCommandRank(t *testing.T) {
	s, err := Parse([]byte(commandSpec))
	if err != nil {
		t.Fatal(err)
	}
	task := Task{JobID: "torch-1", Attempt: 2, Layout: s.AttemptLayout(0, 0), ResumeStep: 7}
	h := Host{RunDir: "/var/sy/jobs/torch-1/attempt-2/rank-1", CheckpointRoot: "/var/sy/checkpoints", CommitVia: []string{"c:7000"}}
	c, err := s.CommandRank(task, 1, "10.0.0.1:7070", h)
	if err != nil {
		t.Fatal(err)
	}
	if c.Rank != 1 || c.World != 2 || c.MasterAddr != "10.0.0.1" || c.MasterPort != 7070 || c.Attempt != 2 || c.MaxRestarts != 3 {
		t.Fatalf("%+v", c)
	}
	if c.Checkpoint.Dir != "/var/sy/checkpoints" || c.Checkpoint.ResumeStep != 7 || c.Checkpoint.Attempt != 2 || c.Checkpoint.KeepLast != 2 || c.Checkpoint.KeepBest != 1 {
		t.Fatalf("checkpoint %+v", c.Checkpoint)
	}
	if got := c.StagingDir(); got != "/var/sy/checkpoints/torch-1/staging/attempt-2" {
		t.Fatalf("staging %s", got)
	}
	if _, err := s.CommandRank(task, 1, "10.0.0.1:0", h); err == nil {
		t.Fatal("port 0 accepted")
	}
	if _, err := s.CommandRank(task, 2, "10.0.0.1:7070", h); err == nil {
		t.Fatal("rank 2 of 2 accepted")
	}
	eng, _ := Parse([]byte("name: e\n"))
	if _, err := eng.CommandRank(task, 0, "h:1", h); err == nil {
		t.Fatal("engine job given a command config")
	}
}

// A command rank's PATH is the spec's, else the worker's, then the
// switchyard binary's directory.
func TestSearchPath(t *testing.T) {
	c := &CommandConfig{}
	if got := c.SearchPath("/usr/bin", "/opt/sy/switchyard"); got != "/usr/bin:/opt/sy" {
		t.Errorf("worker's PATH: %q", got)
	}
	c.Env = map[string]string{"PATH": "/venv/bin"}
	if got := c.SearchPath("/usr/bin", "/opt/sy/switchyard"); got != "/venv/bin:/opt/sy" {
		t.Errorf("spec's PATH: %q", got)
	}
}
