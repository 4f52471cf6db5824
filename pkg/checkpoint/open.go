package checkpoint

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// Environment variables that configure the S3 backend of OpenStorage.
const (
	EnvS3Endpoint = "SWITCHYARD_S3_ENDPOINT" // host[:port], required for s3:// locations
	EnvS3Insecure = "SWITCHYARD_S3_INSECURE" // "1": plain HTTP (default HTTPS)
	EnvS3Region   = "SWITCHYARD_S3_REGION"   // optional
	EnvAccessKey  = "AWS_ACCESS_KEY_ID"      // both empty: anonymous requests
	EnvSecretKey  = "AWS_SECRET_ACCESS_KEY"
)

// OpenStorage opens the checkpoint storage a job spec names: a directory
// (an absolute or relative path) or "s3://bucket[/prefix]" on the
// S3-compatible server the environment describes (see the Env
// constants). getenv is os.Getenv when nil.
func OpenStorage(location string, getenv func(string) string) (Storage, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	rest, ok := strings.CutPrefix(location, "s3://")
	if !ok {
		return NewDirStorage(location)
	}
	bucket, prefix, _ := strings.Cut(rest, "/")
	if bucket == "" {
		return nil, fmt.Errorf("checkpoint: storage %q: no bucket", location)
	}
	endpoint := getenv(EnvS3Endpoint)
	if endpoint == "" {
		return nil, errors.New("checkpoint: storage " + location + ": set " + EnvS3Endpoint + " (host:port of the S3 server)")
	}
	insecure := getenv(EnvS3Insecure) == "1"
	return NewS3Storage(S3Config{
		Endpoint: endpoint, Bucket: bucket, Prefix: strings.Trim(prefix, "/"),
		AccessKey: getenv(EnvAccessKey), SecretKey: getenv(EnvSecretKey),
		Region: getenv(EnvS3Region), UseTLS: !insecure,
		// over plain HTTP send unsigned payloads: some S3-compatible
		// servers do not decode minio-go's streaming signature
		DisableContentSHA256: insecure,
	})
}
