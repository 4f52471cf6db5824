// Package controller is the coordinator's brain around the replicated state
// of pkg/coordinator: it serves the gRPC API (proto/switchyard/api/v1), keeps
// the view of live workers and coordinator replicas from etcd, and, on the
// raft leader only, runs the supervision loop.
//
// # API
//
// Any replica answers reads (GetJob, ListJobs, ClusterStatus, streams) from
// its own state. Writes (SubmitJob, CancelJob, ResumeJob, SyncWorker,
// replica changes, checkpoint deletion) run on the leader: a follower
// forwards them to the leader's API address, which it learns from the
// replica directory in etcd (each replica registers its API and raft
// addresses there under a lease). While no leader is known writes fail
// with UNAVAILABLE, which clients retry. Every handler and stream maps its
// errors to status codes through one table (errors.go).
//
// The controller reads and writes the replicated state through a Replica
// (apply, barrier, read jobs, leadership), which *coordinator.Node
// implements over raft; with a coordinator.FSM behind it, supervision runs
// in tests with no network (local_test.go).
//
// # Supervision (leader only)
//
// Every tick the leader
//   - fails over jobs whose workers died: a placed worker whose etcd lease
//     expired is lost; the job is requeued when its restart policy allows
//     another try (it resumes from its newest committed checkpoint), else it
//     fails with a reason naming the worker;
//   - schedules the queue with pkg/scheduler (gang placement, priority,
//     topology, fit), re-checks each plan and commits it; every job left
//     pending gets a "Scheduled" condition whose message says why; a
//     worker of several slots is one scheduler worker per slot ("id/k"),
//     and a placement records each rank's slot, which SyncWorker hands on
//     with the peers' slot ports and the ranks' node and local ranks;
//   - a requeued job waits for its backoff before it is placed again; if
//     it no longer fits and its spec has an elastic range, the scheduler
//     places it with a smaller data-parallel degree (scheduler.Job.MinDP;
//     the accumulation grows to keep the global batch) and it resumes from
//     a checkpoint resharded to that layout.
//
// A rank failure is held for FailureGrace before it is acted on: when a
// worker dies its peers fail at once, long before its lease expires, and
// the failure should name the dead worker. A worker that has not synced
// for Silence is blamed for such a failure and gets no new work.
//
// # Checkpoints
//
// Ranks write their shards to storage; rank 0 verifies them and asks the
// leader to commit the manifest (CommitCheckpoint). The leader commits it
// to the etcd catalogue — one transaction, only for a step newer than the
// job's latest — only if the caller's attempt is still the job's current
// one, so a rank of an abandoned attempt can never commit. That check is
// the leader's; across leaders the catalogue fences: before an attempt is
// placed (and before a job is deleted) the leader raises the job's fence
// in etcd to that attempt, and every commit or retention step carries its
// attempt into the same transaction, so one that a deposed leader admitted
// and sends late is refused (checkpoint.Fencing). Listing and
// deleting (catalogued deletion, then files) go through the same catalogue.
// Ranks have no access to etcd: they read their job's manifests with
// ListCheckpoints (manifests: true; a worker only its own jobs'), and rank
// 0's retention marks and removes entries with RetireCheckpoint, fenced
// and registered in flight like a commit (the rank deletes the files).
//
// Workers call SyncWorker every half second with the state of their tasks
// and get back the tasks they must run: one per rank placed on them, with
// the peers' addresses. The reports drive the job: the first step report
// moves it to RUNNING, rank 0's progress is recorded (at most every
// ProgressEvery), a failed rank requeues or fails the job, and the job
// succeeds when every rank of the current attempt exited cleanly. The
// state lives in raft and the reports are repeated, so a new leader takes
// over running jobs without restarting any rank.
//
// Lifecycle events go to the event bus (NATS) as well as the job history,
// with the events ranks announce (resumed from a step, checkpoint unusable)
// and every committed checkpoint. Cancelling a job, or ending an attempt,
// also sends a control message on the bus so the job's workers sync at
// once rather than at their next period.
package controller
