package train

import (
	"context"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/switchyard-ml/switchyard/pkg/checkpoint"
)

// A run checkpoints to an S3-compatible server (gofakes3 over a loopback
// socket, reached through the S3 REST API) and resumes from it.
func TestCheckpointToS3AndResume(t *testing.T) {
	srv := httptest.NewServer(gofakes3.New(s3mem.New()).Server())
	defer srv.Close()
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(checkpoint.EnvS3Endpoint, u.Host)
	t.Setenv(checkpoint.EnvS3Insecure, "1")
	t.Setenv(checkpoint.EnvAccessKey, "key")
	t.Setenv(checkpoint.EnvSecretKey, "secret-key")
	st, err := checkpoint.OpenStorage("s3://ckpt/runs", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.(*checkpoint.S3Storage).EnsureBucket(context.Background()); err != nil {
		t.Fatal(err)
	}

	cfg, corpus := smallRun(t, "global", 4)
	cfg.Checkpoint = CheckpointConfig{Dir: "s3://ckpt/runs", Every: 2}
	trainToEnd(t, cfg, corpus)
	keys, err := st.List(context.Background(), "run/")
	if err != nil || len(keys) == 0 {
		t.Fatalf("nothing in the bucket: %v %v", keys, err)
	}
	cfg.Resume, cfg.Steps = true, 6
	tr, err := NewWithCorpus(cfg, corpus, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if tr.Step() != 4 {
		t.Fatalf("resumed at step %d from S3, want 4", tr.Step())
	}
	if _, err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
}
