package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/client"
	"github.com/switchyard-ml/switchyard/pkg/etcdconn"
	"github.com/switchyard-ml/switchyard/pkg/train"
)

// openCatalogue opens the checkpoint catalogue a rank's config names: the
// cluster's etcd catalogue (checkpoint.etcd), committed to through the
// coordinator when checkpoint.commit_via is set (it refuses the commits of
// an attempt that is over; the bearer token comes from $SWITCHYARD_TOKEN).
// nil: the checkpoint storage keeps the manifests itself. closeCat
// releases the connections, after the trainer is closed.
func openCatalogue(c train.CheckpointConfig) (cat checkpoint.Catalogue, closeCat func() error, err error) {
	nothing := func() error { return nil }
	if len(c.Etcd) == 0 {
		if len(c.CommitVia) > 0 {
			return nil, nil, usageError{errors.New("checkpoint commits through the coordinator (checkpoint.commit_via) need the etcd catalogue (checkpoint.etcd)")}
		}
		return nil, nothing, nil
	}
	// the worker's TLS files and etcd user (inherited environment)
	cli, err := etcdconn.Open(c.Etcd, etcdconn.Config{TLS: c.CommitTLS})
	if err != nil {
		return nil, nil, fmt.Errorf("checkpoint catalogue: %w", err)
	}
	cat = checkpoint.NewEtcdCatalogue(cli, checkpoint.CataloguePrefix)
	if len(c.CommitVia) == 0 {
		return cat, cli.Close, nil
	}
	coord, err := client.Dial(client.Options{Endpoints: c.CommitVia, Token: os.Getenv("SWITCHYARD_TOKEN"), TLS: c.CommitTLS})
	if err != nil {
		cli.Close()
		return nil, nil, fmt.Errorf("checkpoint commits via %v: %w", c.CommitVia, err)
	}
	return coord.Committer(cat, c.Attempt), func() error { return errors.Join(coord.Close(), cli.Close()) }, nil
}
