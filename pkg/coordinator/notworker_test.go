package coordinator

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"strings"
	"testing"

	"github.com/switchyard-ml/switchyard/pkg/security"
)

// A worker's certificate, signed by the cluster's one CA, does not speak
// raft: the raft listener and dialer refuse it; a replica's passes.
func TestRaftRefusesWorkerCertificates(t *testing.T) {
	state := func(ou ...string) tls.ConnectionState {
		return tls.ConnectionState{PeerCertificates: []*x509.Certificate{{Subject: pkix.Name{CommonName: "gpu-17", OrganizationalUnit: ou}}}}
	}
	if err := notWorker(state(security.WorkerCertOU)); err == nil || !strings.Contains(err.Error(), "worker's certificate") {
		t.Fatalf("a worker's certificate: %v", err)
	}
	if err := notWorker(state("ops")); err != nil {
		t.Fatalf("a replica's certificate: %v", err)
	}
}
