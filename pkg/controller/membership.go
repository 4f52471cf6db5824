package controller

import (
	"context"
	"fmt"
	"net"
	"time"

	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// Changes of the raft membership are checked before raft sees them: a bad
// voter (an address nothing listens on, a second entry for a live replica)
// is in every configuration from then on and can cost the cluster its
// quorum for good, so the leader refuses what it can tell is wrong.

// reachTimeout bounds how long the leader tries to reach a new replica's
// raft address (one just started may not listen yet).
var reachTimeout = 10 * time.Second

// addChange is what adding a voter would do to the configuration
// (replicas as ClusterStatus reports them, Alive meaning registered).
type addChange struct {
	id, addr string
	// reach dials addr from the leader (nil when it answered), then probe
	// asks what answers whether it is raft replica id; called only for a
	// change that is otherwise acceptable.
	reach, probe func() error
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
	if err := c.reach(); err != nil {
		return false, failure(errRefused, "replica %s: nothing answers at raft address %s from the leader (%v); start the replica (without --bootstrap) before adding it: an unreachable voter can cost the cluster its quorum", c.id, c.addr, err)
	}
	if err := c.probe(); err != nil {
		return false, failure(errRefused, "replica %s: %v; give the replica's raft address (its --raft-addr, not its API or any other port) and its --id: a voter that is not that replica can cost the cluster its quorum", c.id, err)
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
		return failure(errNotFound, "replica %s is not a member of the cluster", id)
	}
	if voters == 0 {
		return failure(errRefused, "replica %s is the last voter: the cluster cannot remove all of them", id)
	}
	if alive < voters/2+1 {
		return failure(errRefused, "removing %s would leave %d voters of which %d are alive, short of the quorum of %d", id, voters, alive, voters/2+1)
	}
	return nil
}

// reach dials addr until it answers or reachTimeout passes: whether a
// raft transport could reach it. The error is the last dial's (connection
// refused, no route), not the timeout's.
func reach(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, reachTimeout)
	defer cancel()
	var d net.Dialer
	var last error
	for {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			return c.Close()
		}
		if ctx.Err() == nil || last == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s", last) // a message, not a cause: the refusal is the answer
		case <-time.After(100 * time.Millisecond):
		}
	}
}
