package controller

import (
	"context"
	"net"
	"time"

	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// Changes of the raft membership are checked before raft sees them: a bad
// voter (an address nothing listens on, a second entry for a live replica)
// is in every configuration from then on and can cost the cluster its
// quorum for good, so the leader refuses what it can tell is wrong.

// reachTimeout bounds the leader's dial of a new replica's raft address.
const reachTimeout = 3 * time.Second

// addChange is what adding a voter would do to the configuration
// (replicas as ClusterStatus reports them, Alive meaning registered).
type addChange struct {
	id, addr  string
	reachable error // the leader's dial of addr; nil when it answered
}

// planAdd decides an AddReplica: noop when the replica is already a voter
// at that address (the request is idempotent), or the reason to refuse.
func planAdd(replicas []*apiv1.Replica, c addChange) (noop bool, err error) {
	for _, r := range replicas {
		switch {
		case r.Id == c.id && r.RaftAddress == c.addr && r.Voter:
			return true, nil
		case r.Id == c.id:
			return false, failure(errRefused, "replica %s is already a member at %s: remove it first to move it", r.Id, r.RaftAddress)
		case r.RaftAddress == c.addr:
			return false, failure(errRefused, "raft address %s is replica %s's: one address, one replica", c.addr, r.Id)
		}
	}
	if c.reachable != nil {
		return false, failure(errRefused, "replica %s: nothing answers at raft address %s from the leader (%v); start the replica (without --bootstrap) before adding it: an unreachable voter can cost the cluster its quorum", c.id, c.addr, c.reachable)
	}
	voters, alive := 1, 1 // the new one, reachable
	for _, r := range replicas {
		if r.Voter {
			voters++
			if r.Alive {
				alive++
			}
		}
	}
	if alive < voters/2+1 {
		return false, failure(errRefused, "adding %s would make %d voters of which %d are alive, short of the quorum of %d: bring the missing replicas back (or remove them) first", c.id, voters, alive, voters/2+1)
	}
	return false, nil
}

// planRemove decides a RemoveReplica: the reason to refuse, if any. A
// replica that is not a member is refused by name; removing a live voter
// must leave the alive voters a quorum of those that remain.
func planRemove(replicas []*apiv1.Replica, id string) error {
	voters, alive, found := 0, 0, (*apiv1.Replica)(nil)
	for _, r := range replicas {
		if r.Id == id {
			found = r
			continue
		}
		if r.Voter {
			voters++
			if r.Alive {
				alive++
			}
		}
	}
	if found == nil {
		return failure(errRefused, "replica %s is not a member of the cluster", id)
	}
	if voters == 0 {
		return failure(errRefused, "replica %s is the last voter: the cluster cannot remove all of them", id)
	}
	if alive < voters/2+1 {
		return failure(errRefused, "removing %s would leave %d voters of which %d are alive, short of the quorum of %d", id, voters, alive, voters/2+1)
	}
	return nil
}

// reach dials addr once: whether a raft transport could.
func reach(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, reachTimeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return c.Close()
}
