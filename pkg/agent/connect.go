package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/client"
	"github.com/switchyard-ml/switchyard/pkg/etcdconn"
	"github.com/switchyard-ml/switchyard/pkg/events"
	"github.com/switchyard-ml/switchyard/pkg/membership"
	"github.com/switchyard-ml/switchyard/pkg/security"
	"github.com/switchyard-ml/switchyard/pkg/workerconfig"
)

// OwnerEnv marks the processes of a worker's ranks (and what they start)
// with "ID@STORAGE_PATH": the worker's next run kills those of its
// earlier run that are still there.
const OwnerEnv = "SWITCHYARD_RANK_OWNER"

// InstanceEnv marks the processes of one rank (and what they start, in
// its process group or not): OWNER#JOB/ATTEMPT/RANK. What is left of
// them when the rank ends is stopped (leftovers).
const InstanceEnv = "SWITCHYARD_RANK_INSTANCE"

// ExecLogPrefix begins the log lines `switchyard exec` writes to a
// command rank's stderr before it becomes the program: never taken for
// the reason the rank failed.
const ExecLogPrefix = "[switchyard exec] "

// TokenEnv is the environment variable holding the coordinator's bearer
// token ("" or unset: none).
const TokenEnv = "SWITCHYARD_TOKEN"

// etcdDialTimeout bounds the first connection to etcd.
const etcdDialTimeout = 5 * time.Second

// Connect builds what a worker talks to from its config: the etcd registry
// (cfg.EtcdEndpoints), the NATS bus (when cfg.NATSURL is set; NATS may be
// down, the bus reconnects) and the coordinator client (cfg.Coordinators,
// the token from $SWITCHYARD_TOKEN, see OwnToken), with mutual TLS from cfg.TLS for etcd
// and the coordinator. It returns Options with Config, Logger and the
// connections set, and a function that closes them after Run returned.
func Connect(ctx context.Context, cfg workerconfig.Config, log *slog.Logger) (Options, func() error, error) {
	if log == nil {
		log = slog.Default()
	}
	files := security.TLSFiles{CA: cfg.TLS.CA, Cert: cfg.TLS.Cert, Key: cfg.TLS.Key}
	var closers []func() error
	closeAll := func() error {
		var errs []error
		for i := len(closers) - 1; i >= 0; i-- {
			errs = append(errs, closers[i]())
		}
		return errors.Join(errs...)
	}

	cli, err := etcdconn.Open(cfg.EtcdEndpoints, etcdconn.Config{TLS: files, Context: context.WithoutCancel(ctx)})
	if err != nil {
		return Options{}, nil, fmt.Errorf("agent: %w", err)
	}
	closers = append(closers, cli.Close)
	reg := membership.NewEtcd(cli, membership.DefaultPrefix, log)
	closers = append(closers, reg.Close)

	var bus events.Bus
	if cfg.NATSURL != "" {
		nb, err := events.NewNATS(events.NATSConfig{URL: cfg.NATSURL, Name: "switchyard worker " + cfg.ID, Logger: log, TLS: files, CredsFile: os.Getenv(events.CredsEnv)})
		if err != nil {
			closeAll()
			return Options{}, nil, fmt.Errorf("agent: %w", err)
		}
		bus = nb
		closers = append(closers, nb.Close)
	}

	token, err := OwnToken(os.Getenv(TokenEnv), cfg.ID)
	if err != nil {
		closeAll()
		return Options{}, nil, err
	}
	cc, err := client.Dial(client.Options{Endpoints: cfg.Coordinators, Token: token, TLS: files})
	if err != nil {
		closeAll()
		return Options{}, nil, fmt.Errorf("agent: %w", err)
	}
	closers = append(closers, cc.Close)
	o := Options{Config: cfg, Client: cc, Registry: reg, Bus: bus, Logger: log, Token: token}
	if cfg.RankUser != "" {
		// the ranks' calls, each with its rank's token, not the worker's
		rc, err := client.Dial(client.Options{Endpoints: cfg.Coordinators, TLS: files})
		if err != nil {
			closeAll()
			return Options{}, nil, fmt.Errorf("agent: %w", err)
		}
		closers = append(closers, rc.Close)
		o.Relay = rc
	}
	return o, closeAll, nil
}

// OwnToken is the token worker id calls the coordinator with, from the one
// it was given: its own worker token as is; the cluster token turned into
// the worker token made from it (the coordinator lets a worker act only as
// itself); "" for a coordinator without tokens. Another worker's token is
// an error.
func OwnToken(given, id string) (string, error) {
	if given == "" {
		return "", nil
	}
	if w, ok := security.WorkerOf(given); ok {
		if w != id {
			return "", fmt.Errorf("agent: $%s is worker %s's token; this worker is %s", TokenEnv, w, id)
		}
		return given, nil
	}
	return security.WorkerToken(given, id), nil
}

// rankEnviron is the environment a rank inherits from the worker's: all of
// it but the worker's etcd user and NATS credentials (a rank reaches the
// checkpoint catalogue through the coordinator and the bus through the
// worker, and a trainer should not find a way to change the cluster's
// state at hand; the rank runs as the worker's user, so this is no
// barrier to a hostile one) and its coordinator token (the rank gets a
// token of its own, security.RankToken, added after).
func rankEnviron(env []string) []string {
	return slices.DeleteFunc(slices.Clone(env), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		return k == etcdconn.UsernameEnv || k == etcdconn.PasswordEnv || k == events.CredsEnv || k == TokenEnv
	})
}
