package checkpoint

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"sort"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Config configures an S3Storage.
type S3Config struct {
	// Endpoint is the server's host[:port], without a scheme
	// ("s3.amazonaws.com", "127.0.0.1:9000").
	Endpoint string
	// Bucket holds the blobs. NewS3Storage does not create it; see
	// EnsureBucket.
	Bucket string
	// Prefix, if not empty, is put in front of every key, so that several
	// stores can share a bucket: key "job/x" is object Prefix+"/job/x". It
	// follows the key rules (see Storage); a trailing slash is optional.
	Prefix string
	// AccessKey and SecretKey sign requests (AWS signature V4). Both empty
	// means anonymous requests.
	AccessKey string
	SecretKey string
	// UseTLS selects https.
	UseTLS bool
	// Region is the bucket's region; empty lets the client discover it
	// (and defaults to "us-east-1" for servers that do not say).
	Region string
	// PartSize is the multipart part size in bytes, and also the size up
	// to which a blob goes in a single PUT. 0 means 16 MiB; S3 requires at
	// least 5 MiB.
	PartSize uint64
	// Transport, if set, carries the HTTP requests (custom TLS roots,
	// proxies, tests).
	Transport http.RoundTripper
	// DisableContentSHA256 sends upload bodies as UNSIGNED-PAYLOAD. Over
	// plain HTTP minio-go otherwise uses the streaming (aws-chunked)
	// signature, which some S3-compatible servers do not decode in
	// UploadPart (gofakes3 among them). Over TLS payloads are unsigned
	// anyway and this changes nothing.
	DisableContentSHA256 bool
}

const (
	s3DefaultPartSize = 16 << 20
	s3MinPartSize     = 5 << 20
)

// S3Storage is a Storage in a bucket of S3-compatible object storage,
// accessed with minio-go. Key k is the object Prefix+k.
//
// Put is atomic because S3 makes an object visible only when its upload
// completes: a blob up to PartSize goes in one PUT; a bigger one is
// streamed as a multipart upload (parts of PartSize, one buffered at a
// time), which becomes an object only on CompleteMultipartUpload and is
// aborted if the source or a part fails. The SHA-256 and size are
// computed while streaming, from the bytes handed to the client. A Put
// that returns success is as durable as the server makes an acknowledged
// object (S3 and most compatible servers: durable).
//
// A crash during a multipart Put can leave an incomplete multipart upload
// on the server (invisible to Get, List and Stat, but holding space);
// configure the bucket's lifecycle rule AbortIncompleteMultipartUpload, or
// remove them with AbortIncompleteUploads.
//
// Unlike DirStorage, S3 could store both "a/b" and "a/b/c"; callers must
// not rely on it (see Storage). List skips objects under the prefix whose
// names are not valid keys (such as "dir/" markers made by other tools).
type S3Storage struct {
	client   *minio.Client
	bucket   string
	prefix   string // "" or ends in "/"
	partSize uint64
	noSHA    bool
}

var _ Storage = (*S3Storage)(nil)

// NewS3Storage returns an S3Storage for cfg. It does not contact the
// server.
func NewS3Storage(cfg S3Config) (*S3Storage, error) {
	if cfg.Endpoint == "" {
		return nil, errors.New("checkpoint: s3 storage: empty endpoint")
	}
	if strings.Contains(cfg.Endpoint, "://") {
		return nil, fmt.Errorf("checkpoint: s3 storage: endpoint %q must be host[:port], without a scheme (use UseTLS)", cfg.Endpoint)
	}
	if cfg.Bucket == "" {
		return nil, errors.New("checkpoint: s3 storage: empty bucket")
	}
	prefix := strings.TrimSuffix(cfg.Prefix, "/")
	if prefix != "" {
		if err := ValidateKey(prefix); err != nil {
			return nil, fmt.Errorf("checkpoint: s3 storage: prefix: %w", err)
		}
		prefix += "/"
	}
	partSize := cfg.PartSize
	if partSize == 0 {
		partSize = s3DefaultPartSize
	}
	if partSize < s3MinPartSize {
		return nil, fmt.Errorf("checkpoint: s3 storage: part size %d below the S3 minimum of %d", partSize, s3MinPartSize)
	}
	var creds *credentials.Credentials
	if cfg.AccessKey != "" || cfg.SecretKey != "" {
		creds = credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, "")
	} else {
		creds = credentials.New(&credentials.Static{Value: credentials.Value{SignerType: credentials.SignatureAnonymous}})
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:     creds,
		Secure:    cfg.UseTLS,
		Region:    cfg.Region,
		Transport: cfg.Transport,
	})
	if err != nil {
		return nil, fmt.Errorf("checkpoint: s3 storage: %w", err)
	}
	return &S3Storage{client: client, bucket: cfg.Bucket, prefix: prefix, partSize: partSize, noSHA: cfg.DisableContentSHA256}, nil
}

// Client returns the underlying minio client.
func (s *S3Storage) Client() *minio.Client { return s.client }

// Bucket returns the bucket name.
func (s *S3Storage) Bucket() string { return s.bucket }

// EnsureBucket creates the bucket if it does not exist.
func (s *S3Storage) EnsureBucket(ctx context.Context) error {
	ok, err := s.client.BucketExists(ctx, s.bucket)
	if err != nil {
		return fmt.Errorf("checkpoint: s3 bucket %s: %w", s.bucket, err)
	}
	if ok {
		return nil
	}
	if err := s.client.MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{}); err != nil {
		if c := minio.ToErrorResponse(err).Code; c == "BucketAlreadyOwnedByYou" {
			return nil
		}
		return fmt.Errorf("checkpoint: s3 make bucket %s: %w", s.bucket, err)
	}
	return nil
}

// AbortIncompleteUploads aborts the incomplete multipart uploads under the
// store's prefix (left by Puts that crashed). Only call it when no Put is
// in progress, or it aborts that Put (which then fails; no blob is lost).
func (s *S3Storage) AbortIncompleteUploads(ctx context.Context) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var names []string
	for u := range s.client.ListIncompleteUploads(ctx, s.bucket, s.prefix, true) {
		if u.Err != nil {
			return 0, fmt.Errorf("checkpoint: s3 list uploads: %w", u.Err)
		}
		names = append(names, u.Key)
	}
	n := 0
	for _, name := range names {
		if err := s.client.RemoveIncompleteUpload(ctx, s.bucket, name); err != nil {
			return n, fmt.Errorf("checkpoint: s3 abort upload %s: %w", name, err)
		}
		n++
	}
	return n, nil
}

func (s *S3Storage) object(key string) string { return s.prefix + key }

// isS3NotFound reports whether err says the object (or its bucket) does
// not exist.
func isS3NotFound(err error) bool {
	r := minio.ToErrorResponse(err)
	switch r.Code {
	case "NoSuchKey", "NoSuchObject", "NotFound":
		return true
	}
	return r.StatusCode == http.StatusNotFound && r.Code != "NoSuchBucket"
}

// hashingReader hashes and counts what is read through it, and stops when
// its context is cancelled.
type hashingReader struct {
	ctx context.Context
	r   io.Reader
	h   hash.Hash
	n   int64
}

func (hr *hashingReader) Read(p []byte) (int, error) {
	if err := hr.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := hr.r.Read(p)
	if n > 0 {
		hr.h.Write(p[:n])
		hr.n += int64(n)
	}
	return n, err
}

// Put implements Storage.
func (s *S3Storage) Put(ctx context.Context, key string, r io.Reader) (int64, string, error) {
	if err := ValidateKey(key); err != nil {
		return 0, "", err
	}
	if err := ctx.Err(); err != nil {
		return 0, "", err
	}
	hr := &hashingReader{ctx: ctx, r: r, h: sha256.New()}
	// Read up to one part: a blob that fits goes in a single PUT (one
	// request, atomic); a bigger one streams as a multipart upload of
	// unknown size, which is visible only once completed.
	var first bytes.Buffer
	_, err := first.ReadFrom(io.LimitReader(hr, int64(s.partSize)+1))
	if err != nil {
		return 0, "", fmt.Errorf("checkpoint: put %s: %w", key, err)
	}
	opts := minio.PutObjectOptions{ContentType: "application/octet-stream", DisableContentSha256: s.noSHA}
	var info minio.UploadInfo
	multipart := first.Len() > int(s.partSize)
	if !multipart {
		opts.DisableMultipart = true
		info, err = s.client.PutObject(ctx, s.bucket, s.object(key), bytes.NewReader(first.Bytes()), int64(first.Len()), opts)
	} else {
		opts.PartSize = s.partSize
		body := io.MultiReader(bytes.NewReader(first.Bytes()), hr)
		info, err = s.client.PutObject(ctx, s.bucket, s.object(key), body, -1, opts)
	}
	if err != nil {
		return 0, "", fmt.Errorf("checkpoint: put %s: %w", key, err)
	}
	if multipart {
		// The server assembled the object from parts; check it holds what
		// was sent (a server that mis-decodes a part body would not fail
		// the upload). One HEAD per large blob.
		oi, err := s.client.StatObject(ctx, s.bucket, s.object(key), minio.StatObjectOptions{})
		if err != nil {
			return 0, "", fmt.Errorf("checkpoint: put %s: stat after upload: %w", key, err)
		}
		info.Size = oi.Size
	}
	if info.Size != hr.n {
		return 0, "", fmt.Errorf("checkpoint: put %s: server stored %d bytes, %d were sent", key, info.Size, hr.n)
	}
	return hr.n, hex.EncodeToString(hr.h.Sum(nil)), nil
}

// Get implements Storage.
func (s *S3Storage) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	obj, err := s.client.GetObject(ctx, s.bucket, s.object(key), minio.GetObjectOptions{})
	if err != nil {
		return nil, fmt.Errorf("checkpoint: get %s: %w", key, err)
	}
	// GetObject is lazy: Stat sends the request, so a missing key is an
	// error here rather than on the first Read.
	if _, err := obj.Stat(); err != nil {
		obj.Close()
		if isS3NotFound(err) {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
		}
		return nil, fmt.Errorf("checkpoint: get %s: %w", key, err)
	}
	return obj, nil
}

// Delete implements Storage.
func (s *S3Storage) Delete(ctx context.Context, key string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.client.RemoveObject(ctx, s.bucket, s.object(key), minio.RemoveObjectOptions{}); err != nil && !isS3NotFound(err) {
		return fmt.Errorf("checkpoint: delete %s: %w", key, err)
	}
	return nil
}

// List implements Storage.
func (s *S3Storage) List(ctx context.Context, prefix string) ([]string, error) {
	if err := validatePrefix(prefix); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the lister goroutine on an early return
	keys := []string{}
	for o := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix + prefix, Recursive: true}) {
		if o.Err != nil {
			return nil, fmt.Errorf("checkpoint: list %q: %w", prefix, o.Err)
		}
		key, ok := strings.CutPrefix(o.Key, s.prefix)
		if !ok || ValidateKey(key) != nil {
			continue
		}
		keys = append(keys, key)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("checkpoint: list %q: %w", prefix, err)
	}
	sort.Strings(keys)
	return keys, nil
}

// Stat implements Storage.
func (s *S3Storage) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	if err := ValidateKey(key); err != nil {
		return ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return ObjectInfo{}, err
	}
	oi, err := s.client.StatObject(ctx, s.bucket, s.object(key), minio.StatObjectOptions{})
	if err != nil {
		if isS3NotFound(err) {
			return ObjectInfo{}, fmt.Errorf("%w: %s", ErrNotFound, key)
		}
		return ObjectInfo{}, fmt.Errorf("checkpoint: stat %s: %w", key, err)
	}
	return ObjectInfo{Key: key, Size: oi.Size}, nil
}
