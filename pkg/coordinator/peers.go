package coordinator

import (
	"fmt"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// peerAddrs is the transport's raft.ServerAddressProvider when
// Config.PeerAddrs is set: a peer in the map is dialled at its address
// there; any other at its address in the latest raft configuration (the
// provider is asked by ID alone, and raft logs a warning for every dial
// it has to fall back on by itself).
type peerAddrs struct {
	over map[raft.ServerID]raft.ServerAddress
	// raft is set once NewRaft returned; until then only the map answers.
	raft atomic.Pointer[raft.Raft]
}

func newPeerAddrs(m map[string]string) *peerAddrs {
	p := &peerAddrs{over: make(map[raft.ServerID]raft.ServerAddress, len(m))}
	for id, addr := range m {
		p.over[raft.ServerID(id)] = raft.ServerAddress(addr)
	}
	return p
}

var _ raft.ServerAddressProvider = (*peerAddrs)(nil)

// ServerAddr is where this replica dials the replica id.
func (p *peerAddrs) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	if a, ok := p.over[id]; ok {
		return a, nil
	}
	if r := p.raft.Load(); r != nil {
		// GetConfiguration answers from an atomic copy of the latest
		// configuration, without a round trip through raft's loop
		for _, s := range r.GetConfiguration().Configuration().Servers {
			if s.ID == id {
				return s.Address, nil
			}
		}
	}
	return "", fmt.Errorf("coordinator: no address known for replica %q", id)
}
