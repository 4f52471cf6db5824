package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/client"
	"github.com/switchyard-ml/switchyard/pkg/jobstate"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// The chaos suite: a real cluster (three coordinators, etcd, NATS, four
// workers) runs a stream of small jobs with checkpoints and restart
// policies while a seeded random schedule injects faults, and invariants
// are checked the whole time and at the end. Any violation fails the test
// and names the seed that replays the schedule.
//
//	go test ./e2e -run TestChaos -chaos.duration 3m [-chaos.seed N] [-chaos.report chaos.json]
var (
	chaosDuration = flag.Duration("chaos.duration", 0, "run the chaos suite for this long (0: not run)")
	chaosSeed     = flag.Uint64("chaos.seed", 0, "seed of the fault schedule (0: from the clock; the report names it)")
	chaosReport   = flag.String("chaos.report", "", "write the JSON report to this file")
	chaosKinds    = flag.String("chaos.kinds", "", "comma-separated fault kinds to draw from (default: all)")
)

// faultKinds are what the schedule draws from, each with how to inject it
// (and heal it: every fault is transient).
var faultKinds = []string{
	"kill9-worker", "kill9-rank", "kill9-leader", "kill9-follower", "restart-coordinator",
	"stall-worker", "stall-rank", "etcd-restart", "nats-restart", "corrupt-shard", "storage-full",
	"partition-worker", "stall-coordinator", "partition-coordinator",
}

type chaosFault struct {
	Kind   string    `json:"kind"`
	At     time.Time `json:"at"`
	Target string    `json:"target"`
	// the jobs whose ranks the fault hit, with their step then
	Jobs map[string]int64 `json:"jobs,omitempty"`
}

type chaosReportJSON struct {
	Seed          uint64             `json:"seed"`
	Seconds       float64            `json:"seconds"`
	Faults        int                `json:"faults"`
	FaultsByKind  map[string]int     `json:"faults_by_kind"`
	Jobs          int                `json:"jobs"`
	JobsByState   map[string]int     `json:"jobs_by_state"`
	Restarts      int                `json:"restarts"`
	DetectSeconds map[string]float64 `json:"detect_seconds_percentiles"` // fault on a job's rank/worker -> the attempt ended
	ResumeSeconds map[string]float64 `json:"resume_seconds_percentiles"` // fault -> the next attempt running
	StepsLost     map[string]float64 `json:"steps_lost_percentiles"`     // step at the fault - step resumed from
	Checks        map[string]int     `json:"invariant_checks"`
	Violations    []string           `json:"violations"`
}

func TestChaos(t *testing.T) {
	if *chaosDuration <= 0 {
		t.Skip("the chaos suite runs when asked: go test ./e2e -run TestChaos -chaos.duration 3m")
	}
	seed := *chaosSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("chaos seed %d (replay: -chaos.seed %d)", seed, seed)
	c := startCluster(t, 3, "w1", "w2", "w3", "w4")
	// the shared storage on a tmpfs of its own, which storage-full fills
	// (root only: elsewhere that kind is left out)
	kinds := slices.Clone(faultKinds)
	if *chaosKinds != "" {
		kinds = strings.Split(*chaosKinds, ",")
		for _, k := range kinds {
			if !slices.Contains(faultKinds, k) {
				t.Fatalf("-chaos.kinds: unknown kind %q (have %v)", k, faultKinds)
			}
		}
	}
	if err := os.MkdirAll(c.storage, 0o755); err == nil && exec.Command("mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", c.storage).Run() == nil {
		t.Cleanup(func() { exec.Command("umount", "-l", c.storage).Run() }) //nolint:errcheck
	} else {
		kinds = slices.DeleteFunc(kinds, func(k string) bool { return k == "storage-full" })
		t.Logf("no tmpfs for the storage (not root?): storage-full left out")
	}
	// every worker (and its ranks) reaches the coordinators and etcd
	// through proxies of its own, which partition-worker cuts: the worker
	// is cut off from the control plane, not from its peers
	proxies := map[string][]*cutProxy{}
	c.via = map[string]workerRoutes{}
	for _, w := range []string{"w1", "w2", "w3", "w4"} {
		var r workerRoutes
		for _, a := range c.apiAddrs {
			p := newCutProxy(t, a)
			proxies[w] = append(proxies[w], p)
			r.coordinators = append(r.coordinators, p.addr())
		}
		p := newCutProxy(t, strings.TrimPrefix(c.etcdURL, "http://"))
		proxies[w] = append(proxies[w], p)
		r.etcd = "http://" + p.addr()
		c.via[w] = r
		c.workers[w].stop()
		c.startWorker(w)
	}
	coordCuts := routeCoordinators(t, c)
	ch := &chaos{c: c, t: t, rng: rand.New(rand.NewPCG(seed, 0x5eed)), corrupted: map[string]bool{}, maxStep: map[string]int64{},
		lastChange: map[string]time.Time{}, lastSeen: map[string]*pb.Job{}, checks: map[string]int{}, proxies: proxies, coordCuts: coordCuts,
		events: map[string]map[uint64]*pb.JobEvent{}, closed: map[string]bool{}}
	cl, err := client.Dial(client.Options{Endpoints: c.apiAddrs, Token: c.token})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ch.cl = cl
	eventually(t, 60*time.Second, "4 healthy workers", func() error {
		s, err := cl.ClusterStatus(ctxS(10), &apiv1.ClusterStatusRequest{})
		if err != nil {
			return err
		}
		healthy := 0
		for _, w := range s.Workers {
			if w.Healthy {
				healthy++
			}
		}
		if healthy != 4 {
			return fmt.Errorf("%d healthy workers", healthy)
		}
		return nil
	})

	start := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { ch.submitLoop(stop) })
	wg.Go(func() { ch.watchLoop(stop) })
	// the kinds in rounds, each round a seeded shuffle of all of them:
	// every kind is drawn once before any is drawn twice, so a run of a
	// few minutes (about 27 faults in 3) meets every kind
	var round []string
	for time.Since(start) < *chaosDuration {
		time.Sleep(time.Duration(2000+ch.rng.IntN(4000)) * time.Millisecond)
		if len(round) == 0 {
			round = slices.Clone(kinds)
			ch.rng.Shuffle(len(round), func(i, j int) { round[i], round[j] = round[j], round[i] })
		}
		ch.inject(round[0])
		round = round[1:]
	}
	close(stop)
	wg.Wait()
	ch.quiesce()
	rep := ch.report(seed, time.Since(start))
	raw, _ := json.MarshalIndent(rep, "", "  ")
	if *chaosReport != "" {
		if err := os.WriteFile(*chaosReport, raw, 0o644); err != nil {
			t.Error(err)
		}
	}
	t.Logf("chaos report:\n%s", raw)
	ch.summary(rep)
	if len(rep.Violations) > 0 {
		t.Fatalf("seed %d: %d invariant violations, first: %s", seed, len(rep.Violations), rep.Violations[0])
	}
	if rep.Faults < 1 {
		t.Fatal("no fault was injected")
	}
}

// routeCoordinators restarts the coordinators one by one so that each
// reaches every other replica's raft (--raft-peer-addr) and etcd through
// proxies of its own; the raft configuration keeps the real addresses.
// It returns, for each coordinator, the proxies that partition-coordinator
// cuts to isolate it: its proxies to the others, theirs to it, and its
// etcd proxy. Its API is not behind them: clients and workers still reach
// it, and it answers as a replica without a leader does.
func routeCoordinators(t *testing.T, c *cluster) [][]*cutProxy {
	t.Helper()
	n := len(c.coords)
	cuts := make([][]*cutProxy, n)
	c.coordVia = make([]coordRoutes, n)
	for i := range n {
		c.coordVia[i].raft = map[string]string{}
		for j := range n {
			if j == i {
				continue
			}
			p := newCutProxy(t, c.raftAddrs[j])
			c.coordVia[i].raft[c.coordIDs[j]] = p.addr()
			cuts[i] = append(cuts[i], p)
			cuts[j] = append(cuts[j], p)
		}
		p := newCutProxy(t, strings.TrimPrefix(c.etcdURL, "http://"))
		c.coordVia[i].etcd = "http://" + p.addr()
		cuts[i] = append(cuts[i], p)
	}
	for i := range n {
		c.coords[i].stop()
		c.startCoordinator(i, "") // restarts on its data: no bootstrap
		eventually(t, 60*time.Second, c.coordIDs[i]+" back, following a leader", func() error {
			cl, err := client.Dial(client.Options{Endpoints: []string{c.apiAddrs[i]}, Token: c.token})
			if err != nil {
				return err
			}
			defer cl.Close()
			s, err := cl.ClusterStatus(ctxS(5), &apiv1.ClusterStatusRequest{})
			if err != nil {
				return err
			}
			if s.LeaderId == "" {
				return errors.New("no leader known")
			}
			return nil
		})
	}
	return cuts
}

func ctxS(sec int) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(sec)*time.Second)
	_ = cancel // the deadline frees it
	return ctx
}

type chaos struct {
	c   *cluster
	t   *testing.T
	cl  *client.Client
	rng *rand.Rand // the schedule's; only the fault loop draws from it
	// each worker's proxies to the coordinators and etcd
	proxies map[string][]*cutProxy
	// by coordinator index, the proxies that cut it off from the other
	// replicas' raft and from etcd (see routeCoordinators)
	coordCuts [][]*cutProxy

	mu         sync.Mutex
	faults     []chaosFault
	jobs       []string
	corrupted  map[string]bool  // "job/step" whose shard the suite corrupted
	maxStep    map[string]int64 // newest committed checkpoint seen per job
	lastChange map[string]time.Time
	lastSeen   map[string]*pb.Job
	// every event seen of each job, by sequence number: the job keeps
	// only its newest ones
	events map[string]map[uint64]*pb.JobEvent
	// jobs that ended, were checked and whose data is removed
	closed map[string]bool
	// steps lost by each restart of an ended job (see stepsLost)
	lost       []float64
	checks     map[string]int
	violations []string
}

func (ch *chaos) violate(format string, args ...any) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	msg := fmt.Sprintf(format, args...)
	ch.violations = append(ch.violations, msg)
	ch.t.Errorf("invariant violated: %s", msg)
}

func (ch *chaos) count(check string) {
	ch.mu.Lock()
	ch.checks[check]++
	ch.mu.Unlock()
}

// submitLoop keeps two jobs unfinished: long enough to meet faults, with
// checkpoints every 20 steps and room for restarts.
func (ch *chaos) submitLoop(stop <-chan struct{}) {
	for n := 0; ; n++ {
		select {
		case <-stop:
			return
		case <-time.After(time.Second):
		}
		unfinished := 0
		for _, j := range ch.snapshot() {
			if !jobstate.Final(j.State) {
				unfinished++
			}
		}
		if unfinished >= 2 {
			continue
		}
		id := fmt.Sprintf("chaos-%d", n)
		_, err := ch.cl.SubmitJob(ctxS(30), &apiv1.SubmitJobRequest{JobId: id, Spec: []byte(jobSpec("chaos", 1500, 30, 20))})
		if err != nil {
			ch.t.Logf("submit %s: %v (retried)", id, err)
			continue
		}
		ch.mu.Lock()
		ch.jobs = append(ch.jobs, id)
		ch.lastChange[id] = time.Now()
		ch.mu.Unlock()
	}
}

// snapshot reads every submitted job (through any replica); jobs that
// cannot be read now keep their last view.
func (ch *chaos) snapshot() []*pb.Job {
	ch.mu.Lock()
	ids := slices.Clone(ch.jobs)
	ch.mu.Unlock()
	var out []*pb.Job
	for _, id := range ids {
		ch.mu.Lock()
		closed := ch.closed[id]
		ch.mu.Unlock()
		if closed {
			ch.mu.Lock()
			out = append(out, ch.lastSeen[id])
			ch.mu.Unlock()
			continue
		}
		r, err := ch.cl.GetJob(ctxS(10), &apiv1.GetJobRequest{JobId: id})
		ch.mu.Lock()
		if err == nil {
			if old := ch.lastSeen[id]; old == nil || old.UpdatedUnixNano != r.Job.UpdatedUnixNano {
				ch.lastChange[id] = time.Now()
			}
			ch.lastSeen[id] = r.Job
			if ch.events[id] == nil {
				ch.events[id] = map[uint64]*pb.JobEvent{}
			}
			for _, e := range r.Job.Events {
				ch.events[id][e.Seq] = e
			}
		}
		if j := ch.lastSeen[id]; j != nil {
			out = append(out, j)
		}
		ch.mu.Unlock()
	}
	return out
}

// watchLoop checks the continuous invariants every second: each job's
// catalogue only moves forward, and no unfinished job is silent for more
// than 90 seconds.
func (ch *chaos) watchLoop(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-time.After(time.Second):
		}
		for _, j := range ch.snapshot() {
			ch.mu.Lock()
			closed := ch.closed[j.Id]
			ch.mu.Unlock()
			if closed {
				continue
			}
			if jobstate.Final(j.State) {
				// checked as it ends, then its data goes: the storage
				// holds the running jobs' only
				ch.finalChecks(j)
				ch.retire(j.Id)
				continue
			}
			ch.checkForward(j.Id)
			ch.mu.Lock()
			silent := time.Since(ch.lastChange[j.Id])
			ch.mu.Unlock()
			ch.count("progress")
			if !jobstate.Final(j.State) && silent > 90*time.Second {
				ch.violate("job %s silent for %v (%s, step %d)", j.Id, silent.Round(time.Second), j.State, j.Progress.GetStep())
				ch.mu.Lock()
				ch.lastChange[j.Id] = time.Now() // once per silence
				ch.mu.Unlock()
			}
		}
	}
}

// checkForward: the newest committed step of a job (of those the suite
// did not corrupt) never goes back.
func (ch *chaos) checkForward(job string) {
	r, err := ch.cl.ListCheckpoints(ctxS(10), &apiv1.ListCheckpointsRequest{JobId: job})
	if err != nil {
		return // a fault: next time
	}
	var newest int64 = -1
	ch.mu.Lock()
	for _, ck := range r.Checkpoints {
		// one the suite corrupted is dropped by the resume that passes
		// over it: not a step back
		if ck.Status == "committed" && ck.Step > newest && !ch.corrupted[fmt.Sprintf("%s/%d", job, ck.Step)] {
			newest = ck.Step
		}
	}
	ch.mu.Unlock()
	ch.count("catalogue-forward")
	ch.mu.Lock()
	old, seen := ch.maxStep[job]
	if newest >= 0 {
		ch.maxStep[job] = max(old, newest)
	}
	ch.mu.Unlock()
	if seen && newest >= 0 && newest < old {
		ch.violate("job %s: newest committed checkpoint went back from step %d to %d", job, old, newest)
	}
}

// inject applies one fault and heals it before returning (a kill is
// followed by a restart, a stall by SIGCONT).
func (ch *chaos) inject(kind string) {
	f := chaosFault{Kind: kind, At: time.Now()}
	pause := func(lo, hi int) { time.Sleep(time.Duration(lo+ch.rng.IntN(hi-lo+1)) * time.Millisecond) }
	workers := []string{"w1", "w2", "w3", "w4"}
	switch kind {
	case "kill9-worker", "stall-worker":
		w := workers[ch.rng.IntN(len(workers))]
		f.Target, f.Jobs = w, ch.jobsOn(w)
		if kind == "kill9-worker" {
			ch.c.workers[w].kill9() // its ranks die with it (one process group)
			pause(1000, 4000)
			ch.c.startWorker(w)
		} else {
			ch.c.workers[w].signal(syscall.SIGSTOP)
			pause(2000, 8000)
			ch.c.workers[w].signal(syscall.SIGCONT)
		}
	case "kill9-rank", "stall-rank":
		ranks := ch.rankPIDs()
		if len(ranks) == 0 {
			return // nothing running: not a fault
		}
		r := ranks[ch.rng.IntN(len(ranks))]
		f.Target, f.Jobs = fmt.Sprintf("%s rank pid %d", r.job, r.pid), map[string]int64{r.job: ch.stepOf(r.job)}
		if kind == "kill9-rank" {
			syscall.Kill(r.pid, syscall.SIGKILL) //nolint:errcheck // it may have ended
		} else {
			syscall.Kill(r.pid, syscall.SIGSTOP) //nolint:errcheck
			pause(1000, 5000)
			syscall.Kill(r.pid, syscall.SIGCONT) //nolint:errcheck
		}
	case "stall-coordinator":
		// a replica that neither sends nor answers for a while, as a
		// coordinator cut off from the others would (the leader, most
		// often: the others elect another, it steps down when it wakes)
		i := ch.pickCoordinator("kill9-leader")
		if i < 0 || ch.rng.IntN(3) == 0 {
			i = ch.rng.IntN(len(ch.c.coords))
		}
		f.Target = ch.c.coordIDs[i]
		ch.c.coords[i].signal(syscall.SIGSTOP)
		pause(2000, 8000)
		ch.c.coords[i].signal(syscall.SIGCONT)
	case "kill9-leader", "kill9-follower", "restart-coordinator":
		i := ch.pickCoordinator(kind)
		if i < 0 {
			return
		}
		f.Target = ch.c.coordIDs[i]
		if kind == "restart-coordinator" {
			ch.c.coords[i].stop() // SIGTERM: a clean restart with its data dir
		} else {
			ch.c.coords[i].kill9()
		}
		pause(500, 3000)
		ch.c.startCoordinator(i, "")
	case "etcd-restart":
		f.Target = "etcd"
		ch.c.etcd.kill9()
		pause(1000, 4000)
		ch.c.startEtcd()
	case "nats-restart":
		f.Target = "nats"
		ch.c.nats.kill9()
		pause(1000, 4000)
		ch.c.startNATS()
	case "corrupt-shard":
		target, ok := ch.corruptShard()
		if !ok {
			return
		}
		f.Target = target
	case "partition-worker":
		w := workers[ch.rng.IntN(len(workers))]
		f.Target, f.Jobs = w+" cut from the coordinators and etcd", ch.jobsOn(w)
		d := time.Duration(3000+ch.rng.IntN(6000)) * time.Millisecond
		for _, p := range ch.proxies[w] {
			p.cut(d)
		}
		time.Sleep(d)
	case "partition-coordinator":
		// a minority replica cut off by the network from the others' raft
		// traffic and from etcd, its API still answering (as a replica
		// without a leader: stale reads, writes UNAVAILABLE): the leader
		// half the time, when one is known; the others elect another, and
		// it rejoins as a follower once healed
		role := "leader"
		if ch.rng.IntN(2) == 1 {
			role = "follower"
		}
		i := ch.pickCoordinator("kill9-" + role)
		if i < 0 {
			i, role = ch.rng.IntN(len(ch.c.coords)), "no leader known"
		}
		d := time.Duration(3000+ch.rng.IntN(6000)) * time.Millisecond
		f.Target = fmt.Sprintf("%s (%s) cut from its peers and etcd for %v", ch.c.coordIDs[i], role, d)
		for _, p := range ch.coordCuts[i] {
			p.cut(d)
		}
		time.Sleep(d)
	case "storage-full":
		// fill the storage's tmpfs to the last byte for a while: saves,
		// logs and run directories get ENOSPC
		filler := filepath.Join(ch.c.storage, "filler")
		var st syscall.Statfs_t
		if syscall.Statfs(ch.c.storage, &st) != nil {
			return
		}
		fh, err := os.Create(filler)
		if err != nil {
			return
		}
		buf := make([]byte, 1<<20)
		for {
			if _, err := fh.Write(buf); err != nil {
				break
			}
		}
		fh.Close()
		f.Target = fmt.Sprintf("storage (%d MiB free before)", st.Bavail*uint64(st.Bsize)>>20)
		pause(2000, 6000)
		os.Remove(filler) //nolint:errcheck
	}
	ch.mu.Lock()
	ch.faults = append(ch.faults, f)
	ch.mu.Unlock()
	ch.t.Logf("fault %d %s %s", len(ch.faults), kind, f.Target)
}

// pickCoordinator chooses the replica a coordinator fault hits: the leader
// for kill9-leader, a follower for kill9-follower, any for a restart.
func (ch *chaos) pickCoordinator(kind string) int {
	s, err := ch.cl.ClusterStatus(ctxS(10), &apiv1.ClusterStatusRequest{})
	if err != nil || s.LeaderId == "" {
		return -1 // an election is running: skip this one
	}
	var cands []int
	for i, id := range ch.c.coordIDs {
		leader := id == s.LeaderId
		if kind == "restart-coordinator" || (kind == "kill9-leader") == leader {
			cands = append(cands, i)
		}
	}
	if len(cands) == 0 {
		return -1
	}
	return cands[ch.rng.IntN(len(cands))]
}

type rankProc struct {
	job string
	pid int
}

// rankPIDs finds the running ranks: processes whose command line names a
// run.yaml under the cluster's jobs directory.
func (ch *chaos) rankPIDs() []rankProc {
	jobsDir := filepath.Join(ch.c.storage, "jobs") + "/"
	ents, _ := os.ReadDir("/proc")
	var out []rankProc
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(raw), "\x00")
		for i, a := range args {
			if a == "--config" && i+1 < len(args) && strings.HasPrefix(args[i+1], jobsDir) {
				job, _, _ := strings.Cut(strings.TrimPrefix(args[i+1], jobsDir), "/")
				out = append(out, rankProc{job: job, pid: pid})
			}
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].pid < out[b].pid }) // the schedule, not /proc's order, picks
	return out
}

func (ch *chaos) jobsOn(worker string) map[string]int64 {
	out := map[string]int64{}
	for _, j := range ch.snapshot() {
		if jobstate.Final(j.State) {
			continue
		}
		for _, a := range j.Placement {
			if a.WorkerId == worker {
				out[j.Id] = j.Progress.GetStep()
			}
		}
	}
	return out
}

func (ch *chaos) stepOf(job string) int64 {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if j := ch.lastSeen[job]; j != nil {
		return j.Progress.GetStep()
	}
	return 0
}

// corruptShard flips a byte in the middle of a state shard of a job's
// newest committed checkpoint (whose hash then fails: the next resume must
// fall back past it).
func (ch *chaos) corruptShard() (string, bool) {
	for _, j := range ch.snapshot() {
		if jobstate.Final(j.State) {
			continue
		}
		r, err := ch.cl.ListCheckpoints(ctxS(10), &apiv1.ListCheckpointsRequest{JobId: j.Id})
		if err != nil || len(r.Checkpoints) == 0 {
			continue
		}
		ck := r.Checkpoints[len(r.Checkpoints)-1]
		for _, s := range ck.Shards {
			if !strings.HasSuffix(s.Name, ".bin") {
				continue
			}
			path := filepath.Join(ch.c.storage, "checkpoints", checkpoint.StepPrefix(j.Id, ck.Step), s.Name)
			raw, err := os.ReadFile(path)
			if err != nil || len(raw) == 0 {
				continue
			}
			raw[len(raw)/2] ^= 0x5a
			ch.mu.Lock()
			ch.corrupted[fmt.Sprintf("%s/%d", j.Id, ck.Step)] = true
			ch.mu.Unlock()
			if err := os.WriteFile(path, raw, 0o644); err != nil {
				continue
			}
			return fmt.Sprintf("%s step %d %s", j.Id, ck.Step, s.Name), true
		}
	}
	return "", false
}

// quiesce lets every job end (all faults are healed by now) and checks
// the final invariants: every job ended, and SUCCEEDED or FAILED with a
// reason; every committed checkpoint the suite did not corrupt verifies;
// every attempt trained the same losses at the same steps; the replicas
// agree on every job; events flow (a job's log reads back).
func (ch *chaos) quiesce() {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		open := 0
		for _, j := range ch.snapshot() {
			if !jobstate.Final(j.State) {
				open++
			}
		}
		if open == 0 {
			break
		}
		if time.Now().After(deadline) {
			ch.violate("%d jobs still unfinished 5 minutes after the last fault", open)
			break
		}
		time.Sleep(time.Second)
	}
	for _, j := range ch.snapshot() {
		ch.mu.Lock()
		closed := ch.closed[j.Id]
		ch.mu.Unlock()
		if !closed {
			ch.finalChecks(j)
		}
	}
	ch.checkReplicas()
}

// finalChecks are the checks of a job that ended: SUCCEEDED, or FAILED
// with a reason; its catalogue moved forward; every committed checkpoint
// the suite did not corrupt verifies; a job that succeeded has its logs in
// NATS; every attempt trained the same losses.
func (ch *chaos) finalChecks(j *pb.Job) {
	ch.count("job-ended")
	switch {
	case j.State == pb.JobState_JOB_STATE_FAILED && j.Message == "":
		ch.violate("job %s failed without a reason", j.Id)
	case j.State != pb.JobState_JOB_STATE_SUCCEEDED && j.State != pb.JobState_JOB_STATE_FAILED:
		ch.violate("job %s ended %s", j.Id, j.State)
	}
	ch.checkForward(j.Id)
	ch.verifyCheckpoints(j.Id)
	if j.State == pb.JobState_JOB_STATE_SUCCEEDED {
		ch.readLogs(j.Id)
	}
	ch.checkLossCurve(j.Id)
	lost := ch.stepsLost(j.Id)
	ch.mu.Lock()
	ch.lost = append(ch.lost, lost...)
	ch.mu.Unlock()
}

// retire deletes a checked job's checkpoints through the API and its run
// directories, so that the storage does not fill with finished jobs (a
// delete that a fault stops is left: the job's data stays).
func (ch *chaos) retire(job string) {
	ch.mu.Lock()
	ch.closed[job] = true
	ch.mu.Unlock()
	if r, err := ch.cl.ListCheckpoints(ctxS(10), &apiv1.ListCheckpointsRequest{JobId: job}); err == nil {
		for _, ck := range r.Checkpoints {
			if _, err := ch.cl.DeleteCheckpoint(ctxS(30), &apiv1.DeleteCheckpointRequest{JobId: job, Step: ck.Step}); err == nil {
				ch.count("checkpoint-deleted")
			}
		}
	}
	os.RemoveAll(filepath.Join(ch.c.storage, "jobs", job)) //nolint:errcheck
}

func (ch *chaos) verifyCheckpoints(job string) {
	st, err := checkpoint.NewDirStorage(filepath.Join(ch.c.storage, "checkpoints"))
	if err != nil {
		ch.violate("checkpoint storage: %v", err)
		return
	}
	var r *apiv1.ListCheckpointsResponse
	if err := throughFaults(func() (err error) {
		r, err = ch.cl.ListCheckpoints(ctxS(10), &apiv1.ListCheckpointsRequest{JobId: job})
		return err
	}); err != nil {
		ch.violate("job %s: list checkpoints after it ended: %v", job, err)
		return
	}
	for _, ck := range r.Checkpoints {
		if ck.Status != "committed" || ch.corrupted[fmt.Sprintf("%s/%d", job, ck.Step)] {
			continue
		}
		m := checkpoint.Manifest{Job: job, Step: ck.Step}
		for _, s := range ck.Shards {
			m.Shards = append(m.Shards, checkpoint.ShardInfo{Name: s.Name, Size: s.Size, SHA256: s.Sha256})
		}
		ch.count("checkpoint-verifies")
		if err := checkpoint.Verify(ctxS(60), st, checkpoint.StepPrefix(job, ck.Step), m); err != nil {
			ch.violate("job %s: committed checkpoint of step %d does not verify: %v", job, ck.Step, err)
		}
	}
}

// readLogs: the job's log lines read back from NATS (events flow again
// after every NATS restart).
func (ch *chaos) readLogs(job string) {
	err := throughFaults(func() error {
		s, err := ch.cl.JobLogs(ctxS(30), &apiv1.JobLogsRequest{JobId: job})
		if err != nil {
			return err
		}
		n := 0
		for {
			if _, err := s.Recv(); err != nil {
				break
			}
			n++
		}
		if n == 0 {
			return errors.New("no log line reached NATS")
		}
		return nil
	})
	ch.count("logs-flow")
	if err != nil {
		ch.violate("job %s: logs: %v", job, err)
	}
}

// throughFaults retries f for up to a minute: a fault in progress (a
// coordinator or NATS down for seconds) is no violation, one that lasts
// is.
func throughFaults(f func() error) error {
	var err error
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		if err = f(); err == nil {
			return nil
		}
	}
	return err
}

// checkReplicas: once quiet, every replica holds the same state of every
// job (a digest of its jobs as each replica answers for itself).
func (ch *chaos) checkReplicas() {
	ch.mu.Lock()
	ids := slices.Clone(ch.jobs)
	ch.mu.Unlock()
	digests := map[string]string{}
	eventually(ch.t, 60*time.Second, "replicas converged", func() error {
		for i, addr := range ch.c.apiAddrs {
			cl, err := client.Dial(client.Options{Endpoints: []string{addr}, Token: ch.c.token})
			if err != nil {
				return err
			}
			h := sha256.New()
			for _, id := range ids {
				r, err := cl.GetJob(ctxS(10), &apiv1.GetJobRequest{JobId: id})
				if err != nil {
					cl.Close()
					return fmt.Errorf("%s: %s: %v", ch.c.coordIDs[i], id, err)
				}
				b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(r.Job)
				h.Write(b)
			}
			cl.Close()
			digests[ch.c.coordIDs[i]] = hex.EncodeToString(h.Sum(nil))[:16]
		}
		first := digests[ch.c.coordIDs[0]]
		for id, d := range digests {
			if d != first {
				return fmt.Errorf("digests differ: %v (%s)", digests, id)
			}
		}
		return nil
	})
	ch.count("replicas-converge")
}

func (ch *chaos) report(seed uint64, took time.Duration) chaosReportJSON {
	rep := chaosReportJSON{Seed: seed, Seconds: took.Seconds(), FaultsByKind: map[string]int{}, JobsByState: map[string]int{}, Checks: ch.checks}
	jobs := map[string]*pb.Job{}
	for _, j := range ch.snapshot() {
		jobs[j.Id] = j
		rep.Jobs++
		rep.JobsByState[jobstate.Lower(j.State)]++
		rep.Restarts += int(j.Restarts)
	}
	var detect, resume, lost []float64
	for _, f := range ch.faults {
		rep.Faults++
		rep.FaultsByKind[f.Kind]++
		if f.Kind != "kill9-worker" && f.Kind != "kill9-rank" && f.Kind != "partition-worker" {
			continue
		}
		for id := range f.Jobs {
			j := jobs[id]
			if j == nil {
				continue
			}
			ended, running := int64(0), int64(0)
			for _, e := range ch.history(id) {
				switch {
				case ended == 0 && e.UnixNano > f.At.UnixNano() && (e.Type == "WorkerLost" || e.Type == "RankFailed"):
					ended = e.UnixNano
				case ended != 0 && running == 0 && e.UnixNano > ended && e.Type == "Running":
					running = e.UnixNano
				}
			}
			if ended == 0 {
				continue // the job ended first
			}
			detect = append(detect, float64(ended-f.At.UnixNano())/1e9)
			if running != 0 {
				resume = append(resume, float64(running-f.At.UnixNano())/1e9)
			}
		}
	}
	ch.mu.Lock()
	lost = append(lost, ch.lost...)
	ch.mu.Unlock()
	rep.DetectSeconds, rep.ResumeSeconds, rep.StepsLost = percentiles(detect), percentiles(resume), percentiles(lost)
	rep.Violations = append([]string{}, ch.violations...)
	return rep
}

// history is every event seen of job, in order.
func (ch *chaos) history(job string) []*pb.JobEvent {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	var out []*pb.JobEvent
	for _, e := range ch.events[job] {
		out = append(out, e)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Seq < out[b].Seq })
	return out
}

// stepsLost is, for each attempt of job after the first that resumed from
// a checkpoint, how many steps the attempt before it had trained past that
// checkpoint (from the attempts' metrics and rank 0's output).
func (ch *chaos) stepsLost(job string) []float64 {
	var out []float64
	reached := int64(-1)
	for a := 0; ; a++ {
		dir := filepath.Join(ch.c.storage, "jobs", job, fmt.Sprintf("attempt-%d", a), "rank-0")
		if _, err := os.Stat(dir); err != nil {
			return out
		}
		for _, name := range []string{"stdout.log", "stderr.log"} {
			raw, _ := os.ReadFile(filepath.Join(dir, name))
			if i := strings.Index(string(raw), "resumed from the checkpoint of step "); i >= 0 && reached >= 0 {
				var from int64
				if _, err := fmt.Sscanf(string(raw[i:]), "resumed from the checkpoint of step %d", &from); err == nil && reached >= from {
					out = append(out, float64(reached-from))
				}
				break
			}
		}
		reached = -1
		for step := range readLosses(filepath.Join(dir, "metrics.jsonl")) {
			reached = max(reached, step)
		}
	}
}

// readLosses is a metrics.jsonl's loss by step (lines cut by a kill are
// skipped).
func readLosses(path string) map[int64]float64 {
	raw, _ := os.ReadFile(path)
	out := map[int64]float64{}
	for _, line := range strings.Split(string(raw), "\n") {
		var m struct {
			Step int64   `json:"step"`
			Loss float64 `json:"loss"`
		}
		if json.Unmarshal([]byte(line), &m) == nil && m.Step > 0 {
			out[m.Step] = m.Loss
		}
	}
	return out
}

// checkLossCurve: every attempt of a job trains the same losses at the
// same steps, bit for bit (a resumed attempt continues the curve the
// interrupted one was on; CPU training is deterministic).
func (ch *chaos) checkLossCurve(job string) {
	paths, _ := filepath.Glob(filepath.Join(ch.c.storage, "jobs", job, "attempt-*", "rank-0", "metrics.jsonl"))
	first := map[int64]float64{}
	from := map[int64]string{}
	for _, path := range paths {
		attempt := filepath.Base(filepath.Dir(filepath.Dir(path)))
		for step, loss := range readLosses(path) {
			if l, ok := first[step]; ok {
				ch.count("loss-curve")
				if l != loss {
					ch.violate("job %s step %d: loss %v in %s, %v in %s", job, step, l, from[step], loss, attempt)
				}
				continue
			}
			first[step], from[step] = loss, attempt
		}
	}
}

func percentiles(xs []float64) map[string]float64 {
	if len(xs) == 0 {
		return nil
	}
	slices.Sort(xs)
	at := func(p float64) float64 { return xs[min(len(xs)-1, int(p*float64(len(xs))))] }
	return map[string]float64{"n": float64(len(xs)), "p50": at(0.5), "p90": at(0.9), "max": xs[len(xs)-1]}
}

func (ch *chaos) summary(rep chaosReportJSON) {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d, %.0fs, %d faults, %d jobs (%v), %d restarts\n", rep.Seed, rep.Seconds, rep.Faults, rep.Jobs, rep.JobsByState, rep.Restarts)
	kinds := make([]string, 0, len(rep.FaultsByKind))
	for k := range rep.FaultsByKind {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		fmt.Fprintf(&b, "  %-20s %d\n", k, rep.FaultsByKind[k])
	}
	fmt.Fprintf(&b, "detect %v\nresume %v\nsteps lost %v\nchecks %v\nviolations %d\n", rep.DetectSeconds, rep.ResumeSeconds, rep.StepsLost, rep.Checks, len(rep.Violations))
	ch.t.Log(b.String())
}
