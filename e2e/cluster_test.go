package e2e

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/jobstate"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
	pb "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// cluster is a real multi-process Switchyard cluster on loopback: an etcd
// server, a NATS server, coordinator replicas and workers, each its own
// process.
type cluster struct {
	t     *testing.T // the running (sub)test: assertions
	root  *testing.T // the test that owns the processes
	dir   string
	token string

	etcd        *proc
	etcdURL     string
	etcdPeerURL string
	nats        *proc
	natsPort    int

	coords    []*proc
	coordIDs  []string
	raftAddrs []string
	apiAddrs  []string
	// httpAddrs, when set for a coordinator (by index), is its
	// dashboard's listen address (--http-addr).
	httpAddrs []string

	workers     map[string]*proc
	workerPorts map[string]int
	// slots per worker (0 and 1: one rank at a time); a worker of several
	// declares as many GPUs, one rank each, on its port and the next ones
	slots int
	// gpus, with one slot, is the GPUs a worker declares (default 0);
	// trainer is the binary its ranks run (default: the e2e build's
	// switchyard) and workerEnv more environment for the worker and its
	// ranks
	gpus      int
	trainer   string
	workerEnv []string
	storage   string
	// via, when set for a worker, is where it (and its ranks) reach the
	// coordinators' APIs and etcd instead: proxies the chaos suite cuts.
	via map[string]workerRoutes
	// workerConfig adds lines to a worker's config
	workerConfig map[string]string
	// coordVia, when set, is where each coordinator (by index) reaches
	// the other replicas' raft and etcd instead: proxies the chaos suite
	// cuts. The raft configuration keeps the real addresses.
	coordVia []coordRoutes
	// netns and cliEnv, when set, are where the CLI runs (a network
	// namespace) and its whole environment instead of the loopback
	// defaults: the Kubernetes test's pods.
	netns  string
	cliEnv []string
}

type workerRoutes struct {
	coordinators []string
	etcd         string
}

type coordRoutes struct {
	raft map[string]string // peer replica ID -> the address dialled (--raft-peer-addr)
	etcd string
}

func startCluster(t *testing.T, nCoord int, workerIDs ...string) *cluster {
	t.Helper()
	return startClusterSlots(t, nCoord, 1, workerIDs...)
}

// startClusterSlots is startCluster with workers of several slots.
func startClusterSlots(t *testing.T, nCoord, slots int, workerIDs ...string) *cluster {
	t.Helper()
	return startClusterWith(t, nCoord, func(c *cluster) { c.slots = slots }, workerIDs...)
}

// startClusterWith is startCluster with the workers' settings changed by
// setup before they start.
func startClusterWith(t *testing.T, nCoord int, setup func(*cluster), workerIDs ...string) *cluster {
	t.Helper()
	dir := t.TempDir()
	c := &cluster{t: t, root: t, dir: dir, token: "e2e-token", workers: map[string]*proc{}, workerPorts: map[string]int{}, storage: filepath.Join(dir, "shared")}
	setup(c)
	slots := c.slots
	ports := freePorts(t, 3+2*nCoord)
	etcdClient, etcdPeer := ports[0], ports[1]
	c.natsPort = ports[2]
	c.etcdURL = fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	c.etcdPeerURL = fmt.Sprintf("http://127.0.0.1:%d", etcdPeer)
	c.startEtcd()
	c.startNATS()
	var peers []string
	for i := range nCoord {
		id := fmt.Sprintf("coord-%d", i+1)
		c.coordIDs = append(c.coordIDs, id)
		c.raftAddrs = append(c.raftAddrs, fmt.Sprintf("127.0.0.1:%d", ports[3+2*i]))
		c.apiAddrs = append(c.apiAddrs, fmt.Sprintf("127.0.0.1:%d", ports[4+2*i]))
		peers = append(peers, id+"="+c.raftAddrs[i])
	}
	c.coords = make([]*proc, nCoord)
	for i := range nCoord {
		c.startCoordinator(i, strings.Join(peers, ","))
	}
	for _, id := range workerIDs {
		c.workerPorts[id] = freePortRun(t, max(slots, 1))
		c.startWorker(id)
	}
	return c
}

// startEtcd starts (or restarts, on its data) the etcd server.
func (c *cluster) startEtcd() {
	c.etcd = start(c.root, "etcd", nil, bins.etcd, "--name", "e2e", "--data-dir", filepath.Join(c.dir, "etcd"),
		"--listen-client-urls", c.etcdURL, "--advertise-client-urls", c.etcdURL,
		"--listen-peer-urls", c.etcdPeerURL, "--initial-advertise-peer-urls", c.etcdPeerURL,
		"--initial-cluster", "e2e="+c.etcdPeerURL, "--log-level", "warn")
	waitTCP(c.t, strings.TrimPrefix(c.etcdURL, "http://"), 30*time.Second)
}

func (c *cluster) startNATS() {
	c.nats = start(c.root, "nats", nil, bins.nats, "-a", "127.0.0.1", "-p", fmt.Sprint(c.natsPort), "-js", "-sd", filepath.Join(c.dir, "nats"))
	waitTCP(c.t, fmt.Sprintf("127.0.0.1:%d", c.natsPort), 30*time.Second)
}

// startCoordinator starts replica i; with peers it bootstraps a new
// cluster of them (or restarts with its own data), without it waits to
// be added.
func (c *cluster) startCoordinator(i int, peers string) {
	boot := []string{"--bootstrap", "--peers", peers}
	if peers == "" {
		boot = nil
	}
	etcd := c.etcdURL
	if i < len(c.coordVia) {
		r := c.coordVia[i]
		etcd = r.etcd
		for _, id := range slices.Sorted(maps.Keys(r.raft)) {
			boot = append(boot, "--raft-peer-addr", id+"="+r.raft[id])
		}
	}
	c.coords[i] = start(c.root, c.coordIDs[i], []string{"SWITCHYARD_TOKEN=" + c.token}, bins.coordinator,
		append(append(append([]string{"--id", c.coordIDs[i], "--data-dir", filepath.Join(c.dir, c.coordIDs[i]),
			"--raft-addr", c.raftAddrs[i], "--api-addr", c.apiAddrs[i]}, boot...), c.coordArgs(i)...),
			"--etcd-endpoints", etcd, "--nats-url", fmt.Sprintf("nats://127.0.0.1:%d", c.natsPort),
			"--checkpoint-root", filepath.Join(c.storage, "checkpoints"),
			"--heartbeat-timeout", "500ms", "--election-timeout", "500ms", "--leader-lease-timeout", "250ms")...)
}

// coordArgs is the flags of replica i beyond the common ones.
func (c *cluster) coordArgs(i int) []string {
	if i < len(c.httpAddrs) && c.httpAddrs[i] != "" {
		return []string{"--http-addr", c.httpAddrs[i]}
	}
	return nil
}

// addCoordinator starts one more replica that is not in the cluster yet.
func (c *cluster) addCoordinator(id string) int {
	ports := freePorts(c.t, 2)
	c.coordIDs = append(c.coordIDs, id)
	c.raftAddrs = append(c.raftAddrs, fmt.Sprintf("127.0.0.1:%d", ports[0]))
	c.apiAddrs = append(c.apiAddrs, fmt.Sprintf("127.0.0.1:%d", ports[1]))
	c.coords = append(c.coords, nil)
	i := len(c.coords) - 1
	c.startCoordinator(i, "")
	waitTCP(c.t, c.raftAddrs[i], 30*time.Second) // add-replica checks that it answers
	return i
}

func (c *cluster) startWorker(id string) {
	cfg := filepath.Join(c.dir, id+".yaml")
	coords, etcd := c.apiAddrs, c.etcdURL
	if r, ok := c.via[id]; ok {
		coords, etcd = r.coordinators, r.etcd
	}
	yaml := fmt.Sprintf(`id: %s
host: host-%s
coordinators: [%s]
etcd_endpoints: [%s]
nats_url: nats://127.0.0.1:%d
listen_address: 127.0.0.1:%d
resources: %s
labels: {rack: r1}
storage_path: %s
lease_ttl_seconds: 2
drain_seconds: 3
allow_commands: true
`, id, id, strings.Join(coords, ", "), etcd, c.natsPort, c.workerPorts[id], c.resources(), c.storage) + c.workerConfig[id]
	if c.trainer != "" {
		yaml += "trainer: " + c.trainer + "\n"
	}
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		c.t.Fatal(err)
	}
	c.workers[id] = start(c.root, id, append([]string{"SWITCHYARD_TOKEN=" + c.token}, c.workerEnv...), bins.worker, "--config", cfg)
}

// resources is a worker's resources section: one core and 2 GiB a slot
// (a job's default memory_mib),
// and with several slots as many (declared) GPUs, so that it runs one
// rank per GPU.
func (c *cluster) resources() string {
	if c.slots <= 1 {
		return fmt.Sprintf("{cpu_cores: 1, memory_mib: 2048, gpus: %d}", c.gpus)
	}
	return fmt.Sprintf("{cpu_cores: %d, memory_mib: %d, gpus: %d}", c.slots, 2048*c.slots, c.slots)
}

func (c *cluster) env() []string {
	if c.cliEnv != nil {
		return c.cliEnv
	}
	return []string{"SWITCHYARD_TOKEN=" + c.token, "SWITCHYARD_COORDINATOR=" + strings.Join(c.apiAddrs, ",")}
}

func (c *cluster) cli(args ...string) cliResult {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return runCLIIn(ctx, c.netns, c.env(), args...)
}

func (c *cluster) mustCLI(args ...string) cliResult {
	c.t.Helper()
	r := c.cli(args...)
	if r.code != 0 {
		c.t.Fatalf("switchyard %s: exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

func (c *cluster) status() *apiv1.ClusterStatusResponse {
	c.t.Helper()
	var s apiv1.ClusterStatusResponse
	decode(c.t, c.mustCLI("cluster", "status", "-o", "json"), &s)
	return &s
}

func (c *cluster) job(id string) *apiv1.GetJobResponse {
	c.t.Helper()
	var r apiv1.GetJobResponse
	decode(c.t, c.mustCLI("job", "status", id, "-o", "json"), &r)
	return &r
}

// submit writes the spec and submits it; it returns the job id.
func (c *cluster) submit(name, spec string) string {
	c.t.Helper()
	path := filepath.Join(c.dir, name+".yaml")
	if err := os.WriteFile(path, []byte(spec), 0o644); err != nil {
		c.t.Fatal(err)
	}
	var j pb.Job
	decode(c.t, c.mustCLI("job", "submit", path, "-o", "json"), &j)
	if j.Id == "" {
		c.t.Fatalf("submit %s: no job id", name)
	}
	return j.Id
}

// waitJob polls job status until cond holds.
func (c *cluster) waitJob(id string, timeout time.Duration, what string, cond func(*pb.Job) bool) *pb.Job {
	c.t.Helper()
	var last *pb.Job
	eventually(c.t, timeout, "job "+id+" "+what, func() error {
		r := c.cli("job", "status", id, "-o", "json")
		if r.code != 0 {
			return fmt.Errorf("exit %d: %s", r.code, r.stderr)
		}
		var g apiv1.GetJobResponse
		decode(c.t, r, &g)
		last = g.Job
		if cond(g.Job) {
			return nil
		}
		return fmt.Errorf("state %s (%s: %s) step %d", g.Job.State, g.Job.Reason, g.Job.Message, g.Job.Progress.GetStep())
	})
	return last
}

func stateIs(st pb.JobState) func(*pb.Job) bool {
	return func(j *pb.Job) bool { return j.State == st }
}

// ranAttempts is the number of times the job's history shows it entering
// RUNNING (one per attempt that started). Waits on a transition look at
// the history, not the current state, which a fast attempt can pass
// between two polls.
func ranAttempts(j *pb.Job) int {
	n := 0
	for _, e := range j.Events {
		if e.Type == "Running" {
			n++
		}
	}
	return n
}

// startedRunning: the job has been RUNNING (it may be further on by now).
func startedRunning(j *pb.Job) bool { return ranAttempts(j) >= 1 }

// pastStep: the job's first attempt has reported step n or later (whatever
// its state is by now).
func pastStep(n int64) func(*pb.Job) bool {
	return func(j *pb.Job) bool { return j.Restarts == 0 && j.Progress.GetStep() >= n }
}

// mustBeRunning fails the test when the job ended before the fault it is
// about to suffer: the job was too short for this machine, which the test
// must say rather than test something else.
func (c *cluster) mustBeRunning(j *pb.Job, fault string) {
	c.t.Helper()
	if jobstate.Final(j.State) {
		c.t.Fatalf("job %s ended (%s at step %d) before %s: lengthen it", j.Id, j.State, j.Progress.GetStep(), fault)
	}
}

// leader returns the leader's index as the cluster reports it.
func (c *cluster) leader() int {
	c.t.Helper()
	idx := -1
	eventually(c.t, 20*time.Second, "a leader", func() error {
		s := c.status()
		for i, id := range c.coordIDs {
			if id == s.LeaderId {
				idx = i
				return nil
			}
		}
		return fmt.Errorf("leader %q", s.LeaderId)
	})
	return idx
}

// jobSpec is a small MoE job (DP=2, EP=2) on the built-in corpus.
func jobSpec(name string, steps, maxRestarts, ckptEvery int) string {
	return fmt.Sprintf(`name: %s
model: {preset: tiny, dim: 64, layers: 2, heads: 2, experts: 4, top_k: 2, hidden: 64, seq_len: 64}
parallel: {dp: 2, ep: 2}
lbl: {mode: global}
data: {corpus: demo, demo_bytes: 131072, eval_seqs: 4}
micro_batch: 4
steps: %d
resources: {cpu_cores: 1, memory_mib: 512}
checkpoint: {interval_steps: %d}
restart: {max_restarts: %d, backoff_seconds: 0}
`, name, steps, ckptEvery, maxRestarts)
}

func eventTime(j *pb.Job, typ string, after int64) int64 {
	for _, e := range j.Events {
		if e.Type == typ && e.UnixNano > after {
			return e.UnixNano
		}
	}
	return 0
}

// committedBefore is the newest step of the job's CheckpointCommitted
// events recorded before its first event of type typ (0: none).
func committedBefore(j *pb.Job, typ string) int64 {
	var newest int64
	for _, e := range j.Events {
		if e.Type == typ {
			break
		}
		var step int64
		if e.Type == "CheckpointCommitted" {
			if _, err := fmt.Sscanf(e.Message, "checkpoint of step %d committed", &step); err == nil {
				newest = max(newest, step)
			}
		}
	}
	return newest
}

func placedOn(j *pb.Job) []string {
	var ws []string
	for _, a := range j.Placement {
		ws = append(ws, a.WorkerId)
	}
	return ws
}

// waitIdleWorkers waits until n workers are healthy and without a job.
func (c *cluster) waitIdleWorkers(n int) {
	c.t.Helper()
	eventually(c.t, 30*time.Second, fmt.Sprintf("%d idle healthy workers", n), func() error {
		idle := 0
		for _, w := range c.status().Workers {
			if w.Healthy && w.JobId == "" {
				idle++
			}
		}
		if idle != n {
			return fmt.Errorf("%d idle healthy workers", idle)
		}
		return nil
	})
}
