// Package devcluster starts the coordinator's external dependencies inside
// the process for `coordinator --dev` and for integration tests: an embedded
// single-member etcd (go.etcd.io/etcd/server/v3/embed) and an embedded NATS
// server with JetStream (nats-server/v2), both bound to 127.0.0.1 on free
// ports, with their data in a directory of the caller's choice.
//
// It is for one machine only: nothing here listens beyond loopback or uses
// TLS. Start's servers want passwords it generates on the first start and
// keeps in the data directory's ports.json (mode 0600): etcd's root user
// and NATS's one user; StartEtcd and StartNATS, for tests, want none. It
// knows nothing about jobs, workers or raft.
package devcluster
