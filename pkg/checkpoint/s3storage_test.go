package checkpoint_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"net/url"
	"os"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/minio/minio-go/v7"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
	"github.com/switchyard-ml/switchyard/pkg/checkpoint/checkpointtest"
)

// fakeS3 starts gofakes3 (an in-memory S3 server, MIT licence) as an HTTP
// server on a 127.0.0.1 TCP socket, over TLS if useTLS, and returns a
// config that reaches it. The store talks to it over the S3 REST API with
// signed requests exactly as it would to a remote server.
func fakeS3(t *testing.T, useTLS bool) checkpoint.S3Config {
	t.Helper()
	faker := gofakes3.New(s3mem.New())
	srv := httptest.NewUnstartedServer(faker.Server())
	cfg := checkpoint.S3Config{
		AccessKey: "test-access", SecretKey: "test-secret-key", Region: "us-east-1",
	}
	if useTLS {
		srv.StartTLS()
		cfg.UseTLS = true
		cfg.Transport = srv.Client().Transport
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(u.Host, "127.0.0.1:") {
		t.Fatalf("fake S3 not on a loopback TCP socket: %s", srv.URL)
	}
	cfg.Endpoint = u.Host
	return cfg
}

var bucketSeq atomic.Int64

func newS3Store(t *testing.T, cfg checkpoint.S3Config, bucket, prefix string) *checkpoint.S3Storage {
	t.Helper()
	cfg.Bucket, cfg.Prefix = bucket, prefix
	st, err := checkpoint.NewS3Storage(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.EnsureBucket(context.Background()); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestS3StorageContract(t *testing.T) {
	tlsCfg := fakeS3(t, true)
	httpCfg := fakeS3(t, false)
	// gofakes3 does not decode the aws-chunked bodies minio-go sends over
	// plain HTTP, so plain HTTP runs with unsigned payloads.
	httpCfg.DisableContentSHA256 = true
	t.Run("TLS", func(t *testing.T) {
		checkpointtest.Storage(t, func(t *testing.T) checkpoint.Storage {
			return newS3Store(t, tlsCfg, fmt.Sprintf("ckpt-%d", bucketSeq.Add(1)), "")
		})
	})
	t.Run("HTTP", func(t *testing.T) {
		checkpointtest.Storage(t, func(t *testing.T) checkpoint.Storage {
			return newS3Store(t, httpCfg, fmt.Sprintf("ckpt-%d", bucketSeq.Add(1)), "")
		})
	})
	// Stores under distinct prefixes of one bucket must not see each other.
	t.Run("Prefix", func(t *testing.T) {
		checkpointtest.Storage(t, func(t *testing.T) checkpoint.Storage {
			return newS3Store(t, tlsCfg, "shared", fmt.Sprintf("team/run-%d/", bucketSeq.Add(1)))
		})
	})
}

// TestS3StorageExternal runs the contract against a real server when one
// is configured, e.g. SWITCHYARD_S3_ENDPOINT=127.0.0.1:9000
// SWITCHYARD_S3_ACCESS_KEY=... SWITCHYARD_S3_SECRET_KEY=...
// SWITCHYARD_S3_BUCKET=ckpt [SWITCHYARD_S3_TLS=1]. Each store gets its own
// prefix in the bucket.
func TestS3StorageExternal(t *testing.T) {
	endpoint := os.Getenv("SWITCHYARD_S3_ENDPOINT")
	if endpoint == "" {
		t.Skip("SWITCHYARD_S3_ENDPOINT not set")
	}
	bucket := os.Getenv("SWITCHYARD_S3_BUCKET")
	if bucket == "" {
		bucket = "switchyard-test"
	}
	run := fmt.Sprintf("contract-%x", randBytes(t, 4))
	checkpointtest.Storage(t, func(t *testing.T) checkpoint.Storage {
		st, err := checkpoint.NewS3Storage(checkpoint.S3Config{
			Endpoint: endpoint, Bucket: bucket,
			Prefix:    fmt.Sprintf("%s/%d", run, bucketSeq.Add(1)),
			AccessKey: os.Getenv("SWITCHYARD_S3_ACCESS_KEY"), SecretKey: os.Getenv("SWITCHYARD_S3_SECRET_KEY"),
			UseTLS: os.Getenv("SWITCHYARD_S3_TLS") == "1", Region: os.Getenv("SWITCHYARD_S3_REGION"),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.EnsureBucket(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx := context.Background()
			keys, _ := st.List(ctx, "")
			for _, k := range keys {
				st.Delete(ctx, k)
			}
		})
		return st
	})
}

func randBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// failAfter yields r's bytes and then fails instead of returning EOF.
type failAfter struct{ r io.Reader }

func (f failAfter) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, errors.New("source failed")
	}
	return n, err
}

// TestS3StorageMultipart covers blobs bigger than a part: streamed as a
// multipart upload of unknown size, hashed on the way, invisible until
// complete, and aborted (leaving the old blob) when the source fails
// after some parts were uploaded.
func TestS3StorageMultipart(t *testing.T) {
	ctx := context.Background()
	const part = 5 << 20
	cfg := fakeS3(t, true)
	cfg.PartSize = part
	st := newS3Store(t, cfg, "big", "p")

	data := randBytes(t, 2*part+12345) // three parts, the last short
	want := sha256.Sum256(data)
	// Hide the length: the store must not depend on a sized reader.
	n, h, err := st.Put(ctx, "j/step-1/rank-0/params.bin", io.MultiReader(bytes.NewReader(data)))
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(data)) || h != hex.EncodeToString(want[:]) {
		t.Fatalf("Put = %d, %s; want %d, %x", n, h, len(data), want)
	}
	rc, err := st.Get(ctx, "j/step-1/rank-0/params.bin")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Get: %d bytes, equal %v, err %v", len(got), bytes.Equal(got, data), err)
	}
	if info, err := st.Stat(ctx, "j/step-1/rank-0/params.bin"); err != nil || info.Size != int64(len(data)) {
		t.Fatalf("Stat = %+v, %v", info, err)
	}

	// Exactly one part: still a single PUT.
	one := randBytes(t, part)
	if n, _, err := st.Put(ctx, "j/one", bytes.NewReader(one)); err != nil || n != part {
		t.Fatalf("Put one part = %d, %v", n, err)
	}

	// The source fails in the third part: two parts were uploaded; the
	// upload must be aborted and the old blob stay.
	_, _, err = st.Put(ctx, "j/step-1/rank-0/params.bin", failAfter{bytes.NewReader(data[:2*part+100])})
	if err == nil {
		t.Fatal("Put from a failing reader succeeded")
	}
	rc, err = st.Get(ctx, "j/step-1/rank-0/params.bin")
	if err != nil {
		t.Fatal(err)
	}
	got, _ = io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, data) {
		t.Fatalf("after a failed multipart Put the blob changed (%d bytes)", len(got))
	}
	// A new key that fails mid-multipart leaves no blob.
	if _, _, err := st.Put(ctx, "j/new", failAfter{bytes.NewReader(data[:part+1])}); err == nil {
		t.Fatal("Put from a failing reader succeeded")
	}
	if _, err := st.Stat(ctx, "j/new"); !errors.Is(err, checkpoint.ErrNotFound) {
		t.Fatalf("failed multipart Put left a blob: %v", err)
	}
	// A cancelled context mid-stream fails the Put too.
	cctx, cancel := context.WithCancel(ctx)
	pr := &cancelAt{r: bytes.NewReader(data), at: part + 10, cancel: cancel}
	if _, _, err := st.Put(cctx, "j/cancelled", pr); err == nil {
		t.Fatal("Put cancelled mid-stream succeeded")
	}
	if _, err := st.Stat(ctx, "j/cancelled"); !errors.Is(err, checkpoint.ErrNotFound) {
		t.Fatalf("cancelled multipart Put left a blob: %v", err)
	}
	keys, err := st.List(ctx, "")
	if err != nil || !reflect.DeepEqual(keys, []string{"j/one", "j/step-1/rank-0/params.bin"}) {
		t.Fatalf("List = %v, %v", keys, err)
	}
	// Failed multipart uploads were aborted, not left behind.
	if n, err := st.AbortIncompleteUploads(ctx); err != nil || n != 0 {
		t.Fatalf("AbortIncompleteUploads = %d, %v; want 0 left over", n, err)
	}
}

// cancelAt cancels its context once at bytes have been read.
type cancelAt struct {
	r      io.Reader
	at     int
	read   int
	cancel context.CancelFunc
}

func (c *cancelAt) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read += n
	if c.read >= c.at {
		c.cancel()
	}
	return n, err
}

// TestS3StorageForeignObjects: objects in the bucket that are not valid
// keys (directory markers, dot-names written by other tools) or lie outside
// the prefix are not listed.
func TestS3StorageForeignObjects(t *testing.T) {
	ctx := context.Background()
	st := newS3Store(t, fakeS3(t, true), "mixed", "ckpt")
	raw := st.Client()
	for _, name := range []string{"ckpt/dir/", "ckpt/a/.tmp-x", "other/a", "ckptx/a"} {
		if _, err := raw.PutObject(ctx, "mixed", name, strings.NewReader("x"), 1, minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := st.Put(ctx, "a/b", strings.NewReader("y")); err != nil {
		t.Fatal(err)
	}
	keys, err := st.List(ctx, "")
	if err != nil || !reflect.DeepEqual(keys, []string{"a/b"}) {
		t.Fatalf("List = %v, %v; want [a/b]", keys, err)
	}
}

func TestNewS3StorageConfig(t *testing.T) {
	for _, cfg := range []checkpoint.S3Config{
		{Bucket: "b"},
		{Endpoint: "http://127.0.0.1:9000", Bucket: "b"},
		{Endpoint: "127.0.0.1:9000"},
		{Endpoint: "127.0.0.1:9000", Bucket: "b", Prefix: "../x"},
		{Endpoint: "127.0.0.1:9000", Bucket: "b", Prefix: "/abs"},
		{Endpoint: "127.0.0.1:9000", Bucket: "b", PartSize: 1 << 20},
	} {
		if _, err := checkpoint.NewS3Storage(cfg); err == nil {
			t.Errorf("NewS3Storage(%+v) succeeded", cfg)
		}
	}
	if _, err := checkpoint.NewS3Storage(checkpoint.S3Config{Endpoint: "s3.example.com", Bucket: "b", Prefix: "x/y/", UseTLS: true}); err != nil {
		t.Fatal(err)
	}
}

// TestS3StorageDetectsMisstoredParts: over plain HTTP with signed payloads
// minio-go sends parts aws-chunked, and gofakes3 v1.2.0 stores the chunk
// framing as data. The upload "succeeds"; Put's size check after a
// multipart upload must turn that into an error (the manager then never
// commits the checkpoint).
func TestS3StorageDetectsMisstoredParts(t *testing.T) {
	ctx := context.Background()
	cfg := fakeS3(t, false)
	cfg.PartSize = 5 << 20
	st := newS3Store(t, cfg, "mis", "")
	_, _, err := st.Put(ctx, "big", bytes.NewReader(randBytes(t, 6<<20)))
	if err == nil || !strings.Contains(err.Error(), "server stored") {
		t.Fatalf("Put on a server that mis-stores parts: err = %v, want a size mismatch", err)
	}
}

// OpenStorage reaches the same S3 server from a location and the
// environment, and refuses a location it cannot use with the reason.
func TestOpenStorageS3(t *testing.T) {
	cfg := fakeS3(t, false)
	env := map[string]string{
		checkpoint.EnvS3Endpoint: cfg.Endpoint, checkpoint.EnvS3Insecure: "1",
		checkpoint.EnvAccessKey: cfg.AccessKey, checkpoint.EnvSecretKey: cfg.SecretKey,
	}
	newS3Store(t, cfg, "ckpt", "") // creates the bucket
	st, err := checkpoint.OpenStorage("s3://ckpt/runs/a", func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, _, err := st.Put(ctx, "job/x", strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	direct := newS3Store(t, cfg, "ckpt", "runs/a")
	rc, err := direct.Get(ctx, "job/x")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || string(got) != "hello" {
		t.Fatalf("read back %q %v", got, err)
	}
	if _, err := checkpoint.OpenStorage("s3://", func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), "no bucket") {
		t.Fatalf("no bucket: %v", err)
	}
	if _, err := checkpoint.OpenStorage("s3://b/p", func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), checkpoint.EnvS3Endpoint) {
		t.Fatalf("no endpoint: %v", err)
	}
	if st, err := checkpoint.OpenStorage(t.TempDir(), nil); err != nil {
		t.Fatal(err)
	} else if _, ok := st.(*checkpoint.DirStorage); !ok {
		t.Fatalf("a path opened %T", st)
	}
}
