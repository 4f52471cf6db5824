// Package dashboard owns the coordinator's web dashboard: an http.Handler
// serving one hand-written page (HTML, JavaScript and CSS embedded in the
// binary; no framework, no CDN, works offline), JSON endpoints under
// /api/ and a live stream of a job's metrics and state in Server-Sent
// Events format.
//
// Source is the boundary: the controller implements it over its API
// (cluster status, jobs, checkpoints), the event bus (stored and live
// metrics) and the job's storage (rank 0's report). Tests use a fake.
//
// Every /api/ request must carry "Authorization: Bearer <cluster token>"
// when the coordinator has a token; worker tokens (and, over mutual TLS,
// workers' certificates) are refused: they may sync and commit, not read.
// With Config.ClientCert every request, the page's files included, must
// also come with a verified client certificate (the daemon's listener only
// requests one, for the probes it serves beside the dashboard).
// The page holds no data: it asks for the token, keeps it in the tab's
// sessionStorage (or takes it from the URL fragment, #token=..., which
// browsers never send to the server) and reads the stream with fetch(),
// since EventSource cannot send a header.
//
// The package must not touch raft, etcd or NATS itself, and listens on
// nothing: the daemon decides the address and the TLS settings.
package dashboard
