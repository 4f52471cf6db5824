// Package security owns how the coordinator's API is protected: TLS
// configurations for mutual TLS (server and client side, from PEM files),
// bearer-token authentication (per-RPC client credentials and server
// interceptors that compare in constant time), and the listen rule: an
// address that is not loopback needs TLS unless insecure mode is asked for.
//
// It knows nothing about jobs or raft; pkg/controller and pkg/client use it.
package security
