package collbench

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/parallel"
)

func TestMain(m *testing.M) {
	ChildMain() // child ranks of the process tests run here and exit
	os.Exit(m.Run())
}

func checkBench(t *testing.T, res []Result, world int, sizes []int) {
	t.Helper()
	if len(res) != 2*len(sizes)+2 {
		t.Fatalf("%d results, want %d: %+v", len(res), 2*len(sizes)+2, res)
	}
	for _, r := range res {
		if r.LatencyMS <= 0 || r.BusBWGBs <= 0 || (r.Transport != "tcp" && r.World != world) {
			t.Fatalf("bad result %+v", r)
		}
		t.Logf("%+v", r)
	}
}

func TestBenchInProcess(t *testing.T) {
	sizes := []int{4 << 10, 256 << 10}
	res, err := Collectives(context.Background(), 3, sizes, 2, InProcess())
	if err != nil {
		t.Fatal(err)
	}
	checkBench(t, res, 3, sizes)
}

func TestBenchProcesses(t *testing.T) {
	sizes := []int{4 << 10, 256 << 10}
	res, err := Collectives(context.Background(), 2, sizes, 2)
	if err != nil {
		t.Fatal(err)
	}
	checkBench(t, res, 2, sizes)
}

// kill -9 one rank process mid all-reduce: every other rank fails with an
// error (and exits) within the transport timeout, never hangs.
func TestKill9MidAllReduce(t *testing.T) {
	for _, plane := range []string{parallel.DataPlaneGRPC, parallel.DataPlaneTCP} {
		t.Run(plane, func(t *testing.T) { testKill9(t, plane) })
	}
}

func testKill9(t *testing.T, plane string) {
	const world, victim = 3, 1
	timeout := 2 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := startRanks(ctx, world, childConfig{Mode: "loop", Opts: parallel.Options{Timeout: timeout, DataPlane: plane}, Comm: parallel.CommOptions{Segment: 64 << 10}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.kill()
	for r := 0; r < world; r++ { // every rank is looping
		if l := <-p.lines[r]; l != "running" {
			t.Fatalf("rank %d: %q", r, l)
		}
	}
	killed := time.Now()
	if err := p.cmds[victim].Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for r := 0; r < world; r++ {
		var out []string
		for l := range p.lines[r] {
			out = append(out, l)
		}
		err := p.cmds[r].Wait()
		if r == victim {
			continue
		}
		took := time.Since(killed)
		if err == nil || len(out) == 0 || !strings.HasPrefix(out[len(out)-1], "error ") {
			t.Fatalf("rank %d: exit %v, output %q: want an error", r, err, out)
		}
		t.Logf("rank %d failed %v after the kill: %s", r, took, out[len(out)-1])
		if took > timeout+3*time.Second {
			t.Fatalf("rank %d took %v to fail (timeout %v)", r, took, timeout)
		}
	}
}
