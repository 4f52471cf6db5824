// Package etcdconn opens the etcd clients of coordinators, workers and
// ranks one way: mutual TLS from the process's TLS files when it has them,
// and the etcd user from the environment (SWITCHYARD_ETCD_USERNAME and
// SWITCHYARD_ETCD_PASSWORD; never from flags or config files, which end up
// in process lists and logs), unless the caller gives one (the dev
// coordinator, whose embedded etcd's password it generated). A worker's
// ranks inherit its environment and its TLS files, so they reach etcd as
// it does.
package etcdconn

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/switchyard-ml/switchyard/pkg/security"
)

// The environment variables holding the etcd user.
const (
	UsernameEnv = "SWITCHYARD_ETCD_USERNAME"
	PasswordEnv = "SWITCHYARD_ETCD_PASSWORD"
)

// DialTimeout bounds the first connection.
const DialTimeout = 5 * time.Second

// Config is what Open needs beyond the endpoints.
type Config struct {
	TLS security.TLSFiles // all empty: plain TCP
	// Context is the client's lifetime context (nil: background).
	Context context.Context
	// Username and Password are the etcd user, both or neither; given,
	// they win over the environment.
	Username, Password string
	// Getenv reads the user when Config gives none (nil: os.Getenv).
	Getenv func(string) string
}

// Open returns an etcd client for endpoints.
func Open(endpoints []string, c Config) (*clientv3.Client, error) {
	getenv := c.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	cc := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: DialTimeout,
		Logger:      zap.NewNop(),
		Username:    c.Username,
		Password:    c.Password,
		Context:     c.Context,
	}
	if (cc.Username == "") != (cc.Password == "") {
		return nil, errors.New("etcd: give both the username and the password, or neither")
	}
	if cc.Username == "" {
		cc.Username, cc.Password = getenv(UsernameEnv), getenv(PasswordEnv)
		if (cc.Username == "") != (cc.Password == "") {
			return nil, fmt.Errorf("etcd: give both %s and %s, or neither", UsernameEnv, PasswordEnv)
		}
	}
	if c.TLS.Enabled() {
		tc, err := security.ClientTLS(c.TLS, "")
		if err != nil {
			return nil, fmt.Errorf("etcd TLS: %w", err)
		}
		cc.TLS = tc
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		return nil, fmt.Errorf("etcd %v: %w", endpoints, err)
	}
	return cli, nil
}
