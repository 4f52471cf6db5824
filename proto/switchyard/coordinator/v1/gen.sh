#!/usr/bin/env bash
# Regenerates the Go code of proto/switchyard/coordinator/v1 with Debian's
# protoc (apt-get install -y protobuf-compiler) and the protoc-gen-go /
# protoc-gen-go-grpc versions pinned as `tool` directives in go.mod.
# Usage: proto/switchyard/coordinator/v1/gen.sh [OUTDIR]
# OUTDIR is the root the source-relative paths are written under
# (default: proto/, i.e. in place). The flags match proto/gen.sh, so both
# produce byte-identical files.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../.." && pwd)
out=${1:-$root/proto}
command -v protoc >/dev/null || { echo "gen.sh: protoc not found (apt-get install -y protobuf-compiler)" >&2; exit 1; }
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
cd "$root"
go build -o "$bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
go build -o "$bin/protoc-gen-go-grpc" google.golang.org/grpc/cmd/protoc-gen-go-grpc
mkdir -p "$out"
cd "$root/proto"
find switchyard/coordinator/v1 -name '*.proto' -print0 | sort -z | xargs -0 protoc -I . \
  --plugin=protoc-gen-go="$bin/protoc-gen-go" --plugin=protoc-gen-go-grpc="$bin/protoc-gen-go-grpc" \
  --go_out="$out" --go_opt=paths=source_relative \
  --go-grpc_out="$out" --go-grpc_opt=paths=source_relative
