// Package scheduler owns job placement: a pure function from a cluster
// snapshot and a queue of jobs to placements (rank -> worker) and, for every
// job it cannot place, the reason why.
//
// Nothing here touches the network, the clock or a random source: the same
// snapshot and queue always give the same plans, whatever the order of the
// workers or jobs in the input (workers are sorted by id, the queue by
// priority, submit sequence and id). The raft leader runs Schedule, re-checks
// each plan against fresh state with Recheck, and commits it; the package
// does not know about raft, etcd, job specs or the training processes.
//
// # Placement rules
//
//   - One rank per worker. A Worker here is one slot of a worker process:
//     the controller shows a worker of several slots (several ranks at
//     once, each with its share of the resources and its own GPUs) as
//     that many Workers "id/k" on the worker's host, and Snapshot.Unit
//     names them in reasons. A Worker runs at most one rank of one job,
//     so no GPU is given to two ranks. A Worker can take a rank
//     when it is healthy, idle (no current job, not given to an earlier plan
//     of the same Schedule call), carries every label the job asks for
//     (exact key and value), holds each of the job's paths under one of
//     its roots (by name; a worker that names no roots holds any), and its
//     free resources (CPU cores, memory MiB, GPUs) cover the job's
//     per-rank request.
//   - Gang placement: every rank of a job is placed, or none.
//   - A tensor-parallel group (TP consecutive ranks) runs on one host
//     (Worker.Host; a worker without a host is its own host).
//   - Expert-parallel groups are packed. The ranks of one expert-data-parallel
//     replica (EP tensor-parallel groups, EP*TP consecutive ranks) exchange
//     tokens every layer, so each replica is placed in the narrowest domain
//     that holds it whole: one host, else hosts sharing the first topology
//     label (Snapshot.TopologyKeys, default "rack" then "zone"; a domain at
//     level i is the set of hosts with equal values of keys i, i+1, ...),
//     else the next label, else anywhere. Among domains that fit, the one
//     with the fewest free slots wins (best fit, ties by name), which packs
//     jobs tightly and keeps large hosts free for large TP groups. Inside a
//     domain the hosts with the most free TP slots are used first, so a
//     replica spans as few hosts as possible. A host's topology labels are
//     those of its lowest-id worker.
//   - Rank order follows pkg/parallel's layout: rank = dpRank*TP + tpRank,
//     dpRank = replica*EP + epRank.
//
// # Queue policy
//
// The queue is ordered by priority (higher first), then submit sequence
// (lower first), then job id. Jobs are placed in that order against what the
// earlier plans left. A job that does not fit does not stop the queue, but it
// claims every idle worker it could ever use (healthy, right labels, total
// resources covering its request, on a host with room for a TP group): jobs
// behind it may only use workers it could not use. This is backfill that
// cannot delay a waiting job: lower-priority jobs run only on capacity the
// waiting job has no use for, so it starts as soon as enough of its own kind
// of workers free up. In a uniform cluster this is strict priority order.
// A job that could never fit the cluster (not enough workers of its kind
// even counting busy and unhealthy ones, or no hosts large enough for its TP
// groups) claims nothing, so an impossible job cannot block the queue.
// There is no preemption.
//
// # Elastic jobs
//
// A job with MinDP > 0 that does not fit whole (ErrNoFit or ErrTooLarge)
// is placed with the largest data-parallel degree in [MinDP, DP) that EP
// divides and that fits what the earlier plans left, without the workers
// waiting jobs claim; its Plan.Job carries that layout, which Recheck
// verifies like any other. A job that waits for a higher-priority one
// (ErrBlocked) keeps its size, and one that fits nowhere even shrunk waits
// and claims as a fixed-size job. The controller sets MinDP from the spec's
// elastic range for jobs restarted after losing workers.
//
// # Reasons
//
// Every job that is not placed gets a Pending entry whose Err wraps one of
// ErrInvalidJob, ErrTooLarge, ErrNoFit or ErrBlocked and whose Reason is a
// sentence for `job status`, for example
// "needs 8 workers with 1 GPU, 5 free (2 busy, 1 unhealthy)" or
// "no host can hold a TP group of 4 (largest host has 2 free workers)".
package scheduler
