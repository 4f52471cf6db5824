// Package client dials the coordinator's API (proto/switchyard/api/v1) for
// the CLI and the workers: every replica's address in one connection that
// fails over between them, retries of calls that found no replica or no
// leader, the bearer token on every call, and mutual TLS when files are
// given.
package client

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/switchyard-ml/switchyard/pkg/security"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// Options say how to reach the coordinators.
type Options struct {
	// Endpoints are the replicas' API addresses (host:port); any one will do.
	Endpoints []string
	// Token is the bearer token ("" : none).
	Token string
	// TLS files; all empty: plaintext.
	TLS security.TLSFiles
	// ServerName overrides the name checked in the server certificate.
	ServerName string
}

// Client is a connection to the coordinator cluster.
type Client struct {
	apiv1.CoordinatorClient
	conn *grpc.ClientConn
}

// retryConfig: calls wait for a connection (bounded by their deadline) and
// are retried on UNAVAILABLE, which is what a replica without a leader or
// a dead replica gives.
const retryConfig = `{
  "loadBalancingConfig": [{"pick_first": {}}],
  "methodConfig": [{
    "name": [{"service": "switchyard.api.v1.Coordinator"}],
    "waitForReady": true,
    "retryPolicy": {
      "maxAttempts": 5,
      "initialBackoff": "0.2s",
      "maxBackoff": "2s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

// Dial connects lazily (the first call connects).
func Dial(o Options) (*Client, error) {
	var eps []string
	for _, e := range o.Endpoints {
		for _, p := range strings.Split(e, ",") {
			if p = strings.TrimSpace(p); p != "" {
				eps = append(eps, p)
			}
		}
	}
	if len(eps) == 0 {
		return nil, errors.New("client: no coordinator endpoint given")
	}
	creds := insecure.NewCredentials()
	if o.TLS.Enabled() {
		tc, err := security.ClientTLS(o.TLS, o.ServerName)
		if err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(tc)
	}
	r := manual.NewBuilderWithScheme("switchyard")
	addrs := make([]resolver.Address, len(eps))
	for i, e := range eps {
		addrs[i] = resolver.Address{Addr: e}
		if o.ServerName == "" {
			// Check each replica's certificate against the host dialled,
			// not the channel's made-up target name ("coordinators").
			addrs[i].ServerName = e
		}
	}
	r.InitialState(resolver.State{Addresses: addrs})
	opts := []grpc.DialOption{
		grpc.WithResolvers(r),
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultServiceConfig(retryConfig),
	}
	if o.Token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(security.Token(o.Token)))
	}
	conn, err := grpc.NewClient(r.Scheme()+":///coordinators", opts...)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	return &Client{CoordinatorClient: apiv1.NewCoordinatorClient(conn), conn: conn}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }
