package main

// switchyard cluster: status, add-replica, remove-replica.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/switchyard-ml/switchyard/pkg/client"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	"github.com/switchyard-ml/switchyard/pkg/jobstate"
	"github.com/switchyard-ml/switchyard/pkg/security"
	"github.com/switchyard-ml/switchyard/pkg/workerconfig"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

func (c *cli) cmdCluster(ctx context.Context, args []string) error {
	return c.group(ctx, "cluster", args, []command{
		{"status", "", "show the coordinator replicas and the workers", c.clusterStatus},
		{"add-replica", "ID RAFT_ADDR", "add a coordinator replica (raft voter) to the cluster", c.clusterAddReplica},
		{"remove-replica", "ID", "remove a coordinator replica from the cluster", c.clusterRemoveReplica},
		{"worker-token", "WORKER_ID", "print worker WORKER_ID's own token, made from the cluster token (it can only sync as that worker and commit its rank 0's checkpoints)", c.clusterWorkerToken},
	})
}

// clusterWorkerToken prints a worker's token: computed here from the
// cluster token, no call is made.
func (c *cli) clusterWorkerToken(_ context.Context, name string, args []string) error {
	fs, r := c.flags(name)
	pos, err := c.parse(fs, r, args, 1, 1)
	if err != nil {
		return err
	}
	token := r.bearer()
	if token == "" {
		return usageError{errors.New("cluster worker-token: needs the cluster token (--token or SWITCHYARD_TOKEN)")}
	}
	if _, ok := security.WorkerOf(token); ok {
		return usageError{errors.New("cluster worker-token: --token is a worker's token; give the cluster token")}
	}
	if err := workerconfig.ValidID(pos[0]); err != nil {
		return usageError{fmt.Errorf("cluster worker-token: %w", err)}
	}
	fmt.Fprintln(c.out, security.WorkerToken(token, pos[0]))
	return nil
}

func (c *cli) clusterStatus(ctx context.Context, name string, args []string) error {
	fs, r := c.flags(name)
	if _, err := c.parse(fs, r, args, 0, 0); err != nil {
		return err
	}
	resp, err := unary(ctx, r, "cluster status", func(ctx context.Context, cl *client.Client) (*apiv1.ClusterStatusResponse, error) {
		return cl.ClusterStatus(ctx, &apiv1.ClusterStatusRequest{})
	})
	if err != nil {
		return err
	}
	if r.json() {
		return printProto(c.out, resp, false)
	}
	w := c.out
	fmt.Fprintf(w, "Answered by: %s\n", orDash(resp.GetAnsweredBy()))
	fmt.Fprintf(w, "Leader:      %s\n", orDash(resp.GetLeaderId()))
	if raft := resp.GetRaft(); len(raft) > 0 {
		var kv []string
		// the counters that tell raft health; -o json has them all
		for _, k := range []string{"state", "term", "commit_index", "applied_index", "last_contact", "num_peers"} {
			if v, ok := raft[k]; ok {
				kv = append(kv, k+"="+v)
			}
		}
		fmt.Fprintf(w, "Raft:        %s\n", strings.Join(kv, " "))
	}
	fmt.Fprintln(w, "\nReplicas:")
	printReplicas(w, resp.GetReplicas(), resp.GetLeaderId())

	fmt.Fprintln(w, "\nWorkers:")
	if len(resp.GetWorkers()) == 0 {
		fmt.Fprintln(w, "  (none)")
		return nil
	}
	t := newTable(w, "  ", "ID", "HOST", "ADDRESS", "CORES", "MEMORY", "GPUS", "SLOTS", "LABELS", "HEALTH", "JOB/RANK")
	for _, wk := range resp.GetWorkers() {
		res := wk.GetResources()
		// the labels placement sees: allow_commands=true and
		// rank_user=true are the worker's settings, not labels it may
		// claim
		shown := jobspec.SettingLabels(wk.GetLabels(), wk.GetCommands(), wk.GetRankUser())
		var labels []string
		for _, k := range slices.Sorted(maps.Keys(shown)) {
			labels = append(labels, k+"="+shown[k])
		}
		job := "-"
		if wk.GetJobId() != "" {
			job = fmt.Sprintf("%s/%d", wk.GetJobId(), wk.GetRank())
			if more := wk.GetBusySlots() - 1; more > 0 {
				job += fmt.Sprintf(" +%d", more) // further ranks in its other slots
			}
		}
		t.row(wk.GetId(), orDash(wk.GetHost()), orDash(wk.GetAddress()), res.GetCpuCores(),
			fmtBytes(res.GetMemoryMib()<<20), res.GetGpus(), fmt.Sprintf("%d/%d", wk.GetBusySlots(), max(wk.GetSlots(), 1)),
			orDash(strings.Join(labels, ",")), jobstate.WorkerHealth(wk), job)
	}
	if err := t.flush(); err != nil {
		return err
	}
	if err := printGPUs(w, resp.GetWorkers()); err != nil {
		return err
	}
	return printRoots(w, resp.GetWorkers())
}

// printRoots lists where each worker lets jobs read corpora and write
// checkpoints (a job naming a path elsewhere is not placed there).
func printRoots(w io.Writer, workers []*apiv1.Worker) error {
	var t *table
	for _, wk := range workers {
		if len(wk.GetRoots()) == 0 {
			continue
		}
		if t == nil {
			fmt.Fprintln(w, "\nPaths jobs may use (storage_path, allowed_paths):")
			t = newTable(w, "  ", "WORKER", "PATHS")
		}
		t.row(wk.GetId(), strings.Join(wk.GetRoots(), ", "))
	}
	if t == nil {
		return nil
	}
	return t.flush()
}

// printGPUs lists the detected GPUs of the workers that have any, in
// slot order.
func printGPUs(w io.Writer, workers []*apiv1.Worker) error {
	var t *table
	for _, wk := range workers {
		for _, g := range wk.GetGpuDevices() {
			if t == nil {
				fmt.Fprintln(w, "\nGPUs:")
				t = newTable(w, "  ", "WORKER", "INDEX", "MODEL", "MEMORY", "UUID", "LINKS")
			}
			t.row(wk.GetId(), g.GetIndex(), g.GetName(), fmtBytes(g.GetMemoryMib()<<20), g.GetUuid(), orDash(fmtLinks(g.GetLinks())))
		}
	}
	if t == nil {
		return nil
	}
	return t.flush()
}

// fmtLinks is a GPU's links to the others, grouped by kind in the order
// of the first GPU each reaches: "NV18 to 1-3,5", "PIX to 1; SYS to 2,3".
func fmtLinks(links map[int32]string) string {
	var kinds []string
	to := map[string][]int{}
	for _, j := range slices.Sorted(maps.Keys(links)) {
		k := links[j]
		if to[k] == nil {
			kinds = append(kinds, k)
		}
		to[k] = append(to[k], int(j))
	}
	parts := make([]string, 0, len(kinds))
	for _, k := range kinds {
		parts = append(parts, k+" to "+ranges(to[k]))
	}
	return strings.Join(parts, "; ")
}

// ranges is sorted ints as "0-3,5,7-8".
func ranges(xs []int) string {
	var b strings.Builder
	for i := 0; i < len(xs); {
		j := i
		for j+1 < len(xs) && xs[j+1] == xs[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		if j > i {
			fmt.Fprintf(&b, "%d-%d", xs[i], xs[j])
		} else {
			fmt.Fprintf(&b, "%d", xs[i])
		}
		i = j + 1
	}
	return b.String()
}

// printReplicas is the replica table; "*" marks the leader.
func printReplicas(w io.Writer, reps []*apiv1.Replica, leaderID string) {
	if len(reps) == 0 {
		fmt.Fprintln(w, "  (none)")
		return
	}
	t := newTable(w, "  ", "ID", "RAFT ADDRESS", "API ADDRESS", "LEADER", "VOTER", "ALIVE", "STATE")
	for _, rp := range reps {
		lead := ""
		if rp.GetLeader() || (leaderID != "" && rp.GetId() == leaderID) {
			lead = "*"
		}
		t.row(rp.GetId(), orDash(rp.GetRaftAddress()), orDash(rp.GetApiAddress()), lead, yesNo(rp.GetVoter()), yesNo(rp.GetAlive()), orDash(rp.GetState()))
	}
	t.flush()
}

func (c *cli) clusterAddReplica(ctx context.Context, name string, args []string) error {
	fs, r := c.flags(name)
	pos, err := c.parse(fs, r, args, 2, 2)
	if err != nil {
		return err
	}
	resp, err := unary(ctx, r, "cluster add-replica "+pos[0], func(ctx context.Context, cl *client.Client) (*apiv1.AddReplicaResponse, error) {
		return cl.AddReplica(ctx, &apiv1.AddReplicaRequest{Id: pos[0], RaftAddress: pos[1]})
	})
	if err != nil {
		return err
	}
	return c.printMembership(r, resp, fmt.Sprintf("added replica %s (%s)", pos[0], pos[1]))
}

func (c *cli) clusterRemoveReplica(ctx context.Context, name string, args []string) error {
	fs, r := c.flags(name)
	pos, err := c.parse(fs, r, args, 1, 1)
	if err != nil {
		return err
	}
	resp, err := unary(ctx, r, "cluster remove-replica "+pos[0], func(ctx context.Context, cl *client.Client) (*apiv1.RemoveReplicaResponse, error) {
		return cl.RemoveReplica(ctx, &apiv1.RemoveReplicaRequest{Id: pos[0]})
	})
	if err != nil {
		return err
	}
	return c.printMembership(r, resp, "removed replica "+pos[0])
}

// membershipResponse is the answer of AddReplica and RemoveReplica.
type membershipResponse interface {
	proto.Message
	GetReplicas() []*apiv1.Replica
}

// printMembership prints what add-replica or remove-replica did, then the
// replicas after it.
func (c *cli) printMembership(r *remoteFlags, resp membershipResponse, done string) error {
	if r.json() {
		return printProto(c.out, resp, false)
	}
	fmt.Fprintf(c.out, "%s\n\nReplicas:\n", done)
	printReplicas(c.out, resp.GetReplicas(), "")
	return nil
}
