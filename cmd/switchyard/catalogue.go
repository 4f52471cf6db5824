package main

import (
	"fmt"
	"os"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/client"
	"github.com/switchyard-ml/switchyard/pkg/etcdconn"
	"github.com/switchyard-ml/switchyard/pkg/train"
)

// openCatalogue opens the checkpoint catalogue a rank's config names:
// through the coordinator when checkpoint.commit_via is set (a worker's
// ranks: the coordinator refuses the commits and deletions of an attempt
// that is over, and the rank needs no access to etcd; the bearer token
// comes from $SWITCHYARD_TOKEN), else the cluster's etcd catalogue
// directly (checkpoint.etcd: `train` run by hand). nil: the checkpoint
// storage keeps the manifests itself. closeCat releases the connections,
// after the trainer is closed.
func openCatalogue(c train.CheckpointConfig) (cat checkpoint.Catalogue, closeCat func() error, err error) {
	switch {
	case len(c.CommitVia) > 0:
		coord, err := client.Dial(client.Options{Endpoints: c.CommitVia, Token: os.Getenv("SWITCHYARD_TOKEN"), TLS: c.CommitTLS})
		if err != nil {
			return nil, nil, fmt.Errorf("checkpoint catalogue via the coordinator %v: %w", c.CommitVia, err)
		}
		return coord.Catalogue(c.Attempt), coord.Close, nil
	case len(c.Etcd) > 0:
		// TLS files and etcd user from the environment
		cli, err := etcdconn.Open(c.Etcd, etcdconn.Config{TLS: c.CommitTLS})
		if err != nil {
			return nil, nil, fmt.Errorf("checkpoint catalogue: %w", err)
		}
		return checkpoint.NewEtcdCatalogue(cli, checkpoint.CataloguePrefix), cli.Close, nil
	}
	return nil, func() error { return nil }, nil
}
