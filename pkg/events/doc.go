// Package events owns the coordinator's and workers' message bus: job
// lifecycle events, per-step metrics, worker log lines and control
// messages (cancel), each addressed by kind and job ID.
//
// Bus is the boundary. NATS is the real implementation: events, logs and
// metrics go to JetStream streams (one per kind, with age, size and
// per-job count limits) so their history survives a reconnect and can be
// replayed after a job ends (`job logs`), and a follower resumes where it
// was after NATS restarts (`job logs -f`); control messages use core NATS.
// Memory is the in-process implementation for tests. One contract suite
// (contract_test.go) runs against both.
//
// Publishing never blocks the caller (a training step): messages go into a
// bounded buffer that a background loop sends; when the buffer is full,
// e.g. because NATS is down, new messages are dropped and counted in Stats.
// Losing NATS loses at most metrics and log lines, never training progress.
//
// The package knows nothing about raft, scheduling or training; it carries
// what it is given.
package events
