// Package agent is the worker daemon: it registers the worker in the
// membership registry under a lease, and runs the ranks of training jobs
// that the coordinator assigns it as child processes of the `switchyard`
// binary (`switchyard train ...`).
//
// A worker of several slots (workerconfig's slots) holds several tasks at
// once, of one job or several: the task names its slot, whose rank listens
// on the worker's port + slot and sees the slot's GPUs
// (CUDA_VISIBLE_DEVICES, in nvidia-smi's PCI order).
//
// The agent owns, for each task it was given (a task is one rank of one
// attempt of one job, identified by job id, attempt and rank):
//
//   - its run directory <storage_path>/jobs/<job-id>/attempt-<n>/rank-<r>,
//     holding run.yaml (the job spec's training config), the trainer's
//     stdout.log and stderr.log, and, for rank 0, metrics.jsonl and
//     report.json;
//   - the trainer process, started in its own process group, stopped with
//     SIGTERM to the group and SIGKILL after Options.StopGrace;
//   - the lines the trainer prints, published as events.LogLine (cut at
//     MaxLogLine bytes), and rank 0's metrics.jsonl, followed and published
//     as events.StepMetrics.
//
// Every Options.SyncInterval the agent sends the coordinator the state of
// every task it holds (SyncWorker) and gets back the full set of tasks it
// must run: it starts those it does not have, stops those no longer listed
// and forgets them once they exited, and keeps reporting finished tasks
// (never restarting them) until they are no longer listed. While the
// coordinator cannot be reached (a leader fail-over, a network cut) the
// tasks keep running and the agent keeps asking.
//
// Checkpoints go to <root>/<job-id>, where root is the job spec's
// checkpoint.path or by default <storage_path>/checkpoints: the rank gets
// --checkpoint-dir <root> --checkpoint-job <job-id>. The checkpoint
// catalogue is kept in etcd, but a rank reaches it only through the
// coordinator (--commit-via, below): ranks get no etcd endpoint, and the
// worker's etcd credentials are taken out of their environment (a
// trainer finds no etcd access at hand; it runs as the worker's user, so
// this does not stop a hostile one). Every rank is started with
// --resume, so a restarted rank continues from the newest committed
// checkpoint, or from the task's resume_from_step (--resume-step) when the
// coordinator names one. For jobs whose ranks span several workers the
// root must be shared storage (the same path on every worker and, as
// --checkpoint-root, on the coordinators), or s3://bucket/prefix reached
// with the worker's SWITCHYARD_S3_* and AWS_* environment, since rank 0
// verifies and commits what every rank wrote. Ranks read the catalogue,
// and rank 0 commits and retires checkpoints, through the coordinator
// (--commit-via with the worker's coordinator endpoints, --attempt with
// the task's attempt, and in SWITCHYARD_TOKEN a rank token made from the
// worker's: security.RankToken, good for that job's catalogue only, for
// commits and retention only as rank 0 of that attempt, never for a sync),
// and the coordinator refuses the commits and deletions of an attempt
// that is over.
//
// A rank announces job events (resumed from a step, checkpoint unusable)
// on lines starting with train.EventPrefix (the agent sets
// SWITCHYARD_EVENTS=1 for it); they are reported with the task's status,
// numbered, for the coordinator to record once in the job's history, and
// are not log lines. A NATS control message about a job the worker runs
// (cancel, an ended attempt) makes it sync at once.
//
// With rank_user in the worker's config, every rank runs as that OS user
// (the worker runs as root; New checks that it may, that the user reaches
// the storage path and the trainer, and cannot change the way to the
// storage path): the worker gives the user the rank's run directory and
// its job's checkpoint directory (for a command job, the staging
// directories too, made through an os.Root on the checkpoint path's
// steady, resolved form), sets HOME (the run directory for a user without
// one), USER and LOGNAME, and the rank cannot read the worker's
// environment. The rank reaches the coordinator through the worker: Run
// serves a unix socket (rankProxy) that relays its catalogue calls with
// its rank token over Options.Relay, the worker's connections without its
// token (a worker starting removes the socket directories of workers
// killed -9: nobody listens on their sockets). The worker opens the files it keeps in a rank's run directory
// anew, without following links, and refuses anything but a regular file.
//
// A command job (runtime: command) runs each rank as `switchyard exec
// --config run.yaml`, run.yaml being the rank's jobspec.CommandConfig:
// it resumes from the newest committed checkpoint that verifies and then
// becomes the job's program (see cmd/switchyard/exec.go for its
// environment). The process group's master is rank 0's worker at the
// data-plane port it keeps for its rank. Rank 0's stdout lines that start
// with MetricsPrefix are its step metrics: they go to metrics.jsonl (not
// to the log), are followed like the engine's, and malformed ones are
// counted in the job's history. A worker runs command jobs only with
// allow_commands in its config.
//
// A rank that could only fail at its start, and at every restart, is
// refused before it starts (the job fails at once, reason Refused): a
// path outside the worker's storage_path and allowed_paths, an engine
// job's corpus that does not open as a regular file (data.CheckFile), a
// command job's program that `switchyard exec` would not find in the
// rank's PATH or could not execute (fsutil.LookProgram). An I/O error
// meeting these checks is not a refusal: a restart may not meet it.
//
// The agent does not decide placement, does not touch the raft state or
// the checkpoint catalogue, and does not talk to the other ranks: the
// trainer processes do.
package agent
