package controller

import (
	"fmt"

	"github.com/switchyard-ml/switchyard/pkg/coordinator"
)

// Check reports what Start would refuse before it opens a file or a
// socket: the raft settings, the listener rules, raft TLS without TLS
// files, a partial set of TLS files and missing etcd endpoints. It reads
// no file and resolves no name, so that a command line can be checked away
// from the machine (or pod) it is meant for (coordinator --check-config):
// the raft advertise address is checked as HOST:PORT with an IP or a DNS
// name, not resolved (a cluster DNS name resolves in the cluster only),
// and the TLS files must be named, not readable. Start itself checks the
// rest: it reads the files and resolves the names.
func (cfg DaemonConfig) Check() error {
	rc := cfg.Raft
	if rc.AdvertiseAddr != "" {
		if err := coordinator.ValidRaftAddr(rc.AdvertiseAddr); err != nil {
			return fmt.Errorf("%w: AdvertiseAddr: %v", coordinator.ErrInvalidConfig, err)
		}
		rc.AdvertiseAddr = "" // checked above; Validate would resolve it
	}
	if err := rc.Validate(); err != nil {
		return err
	}
	if err := cfg.checkListeners(); err != nil {
		return err
	}
	t := cfg.TLS
	if t.Enabled() && (t.CA == "" || t.Cert == "" || t.Key == "") {
		return fmt.Errorf("%w: TLS needs all of ca, cert and key (got ca=%q cert=%q key=%q)", coordinator.ErrInvalidConfig, t.CA, t.Cert, t.Key)
	}
	if cfg.RaftTLS && !t.Enabled() {
		return fmt.Errorf("%w: raft TLS needs the TLS files", coordinator.ErrInvalidConfig)
	}
	if !cfg.Dev && len(cfg.EtcdEndpoints) == 0 {
		return fmt.Errorf("%w: no etcd endpoints (give --etcd-endpoints, or --dev)", coordinator.ErrInvalidConfig)
	}
	return nil
}
