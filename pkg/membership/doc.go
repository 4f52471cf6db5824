// Package membership owns worker liveness: workers register their info
// (address, resources, labels) under a prefix with a lease they keep alive;
// the coordinator lists and watches the registrations. A worker that stops
// renewing (killed, cut off) disappears when its lease expires, and watchers
// see a Leave event; a worker that closes its registration leaves at once.
//
// Registry is the boundary; Etcd is the real implementation (keys
// /switchyard/workers/<id>, JSON values, etcd leases) and Memory the
// in-process one for tests. One contract suite runs against
// both (contract_test.go). The package knows nothing about jobs, placement or raft: the
// coordinator decides what a Leave means.
package membership
