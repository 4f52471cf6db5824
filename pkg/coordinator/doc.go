// Package coordinator owns the coordinator's replicated state: the raft FSM
// over jobs (spec, state with conditions and reasons, placement, restarts,
// progress, capped event history, submit order) and Node, one raft replica
// over TCP with bolt-backed log and stable stores and file snapshots.
//
// Every change is a proto Command (proto/switchyard/coordinator/v1) that the
// leader stamps with its time and proposes; every replica applies it in log
// order. Apply is a switch that calls state-store methods and never reads a
// clock, draws a random number or invents an ID. Writes go to the leader: a
// follower's Apply returns a *NotLeaderError that wraps ErrNotLeader and
// carries the leader's ID and raft address, so the API layer can forward or
// redirect. Reads (Job, Jobs) are served from the local replica and may lag
// the leader by the replication delay.
//
// The package must not touch the scheduler, membership, the event bus or the
// network API: those live in their own packages and call Node.
package coordinator
