// Package metrics owns the Prometheus metrics of Switchyard's processes:
// what a coordinator, a worker and the training runs a worker supervises
// export on their --metrics-addr, and the HTTP endpoint that serves them.
//
// Names follow Prometheus's rules: a switchyard_ prefix, the unit in the
// name (_seconds, _bytes), _total on counters, histograms for latencies,
// and bounded label sets: a job id, an MoE layer, an expert, an operation
// or a reason, never a step or a time. A job's training series are
// removed when its rank ends, so a long-lived worker does not accumulate
// the label values of every job it ever ran.
//
// The package measures nothing by itself. Its owners call the record
// methods (every one is safe on a nil receiver, so a process without
// metrics passes nil), or hand it a function that reads their state at
// scrape time (raft, jobs by state, the event bus), which costs nothing
// between scrapes. It knows nothing of raft, etcd or training beyond the
// numbers it is given.
package metrics
