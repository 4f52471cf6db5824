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
// with UNAVAILABLE, which clients retry.
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
//     pending gets a "Scheduled" condition whose message says why;
//   - a requeued job waits for its backoff before it is placed again.
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
// Lifecycle events go to the event bus (NATS) as well as the job history.
package controller
