package security_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/security"
)

// testPKI is key material generated for one test into t.TempDir(): a CA
// that signs a server certificate (127.0.0.1, ::1, localhost) and a client
// certificate, and an unrelated CA with a client certificate of its own.
// Nothing is committed to the repository.
type testPKI struct {
	Server      security.TLSFiles // CA, server cert and key
	Client      security.TLSFiles // CA, client cert (CN test-client) and key
	OtherClient security.TLSFiles // CA, a client cert signed by the other CA
	OtherCA     string            // the unrelated CA's certificate
	// Worker names worker w1 (OU switchyard-worker, CN w1); NamelessWorker
	// is a worker certificate with an empty common name
	Worker, NamelessWorker security.TLSFiles
	dir                    string
}

const clientCN = "test-client"

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	ca, caKey := newCA(t, "switchyard test CA")
	other, otherKey := newCA(t, "unrelated CA")
	p := testPKI{dir: dir}
	caFile := writePEM(t, dir, "ca.pem", "CERTIFICATE", ca.Raw)
	p.OtherCA = writePEM(t, dir, "other-ca.pem", "CERTIFICATE", other.Raw)

	srvCert, srvKey := newLeaf(t, ca, caKey, "switchyard-server", x509.ExtKeyUsageServerAuth)
	p.Server = security.TLSFiles{
		CA:   caFile,
		Cert: writePEM(t, dir, "server.pem", "CERTIFICATE", srvCert),
		Key:  writeKey(t, dir, "server-key.pem", srvKey),
	}
	cliCert, cliKey := newLeaf(t, ca, caKey, clientCN, x509.ExtKeyUsageClientAuth)
	p.Client = security.TLSFiles{
		CA:   caFile,
		Cert: writePEM(t, dir, "client.pem", "CERTIFICATE", cliCert),
		Key:  writeKey(t, dir, "client-key.pem", cliKey),
	}
	oCert, oKey := newLeaf(t, other, otherKey, clientCN, x509.ExtKeyUsageClientAuth)
	p.OtherClient = security.TLSFiles{
		CA:   caFile, // trusts the real server; only its own certificate is foreign
		Cert: writePEM(t, dir, "other-client.pem", "CERTIFICATE", oCert),
		Key:  writeKey(t, dir, "other-client-key.pem", oKey),
	}
	for _, w := range []struct {
		files *security.TLSFiles
		cn    string
	}{{&p.Worker, "w1"}, {&p.NamelessWorker, ""}} {
		cert, key := newLeaf(t, ca, caKey, w.cn, x509.ExtKeyUsageClientAuth, security.WorkerCertOU)
		*w.files = security.TLSFiles{
			CA:   caFile,
			Cert: writePEM(t, dir, "worker-"+w.cn+".pem", "CERTIFICATE", cert),
			Key:  writeKey(t, dir, "worker-"+w.cn+"-key.pem", key),
		}
	}
	return p
}

func template(t *testing.T, cn string) *x509.Certificate {
	t.Helper()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
	}
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newCA(t *testing.T, cn string) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key := newKey(t)
	tmpl := template(t, cn)
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func newLeaf(t *testing.T, ca *x509.Certificate, caKey crypto.Signer, cn string, usage x509.ExtKeyUsage, ou ...string) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key := newKey(t)
	tmpl := template(t, cn)
	tmpl.Subject.OrganizationalUnit = ou
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{usage}
	if usage == x509.ExtKeyUsageServerAuth {
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func writeKey(t *testing.T, dir, name string, key *ecdsa.PrivateKey) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, dir, name, "PRIVATE KEY", der)
}
