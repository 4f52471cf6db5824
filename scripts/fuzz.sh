#!/usr/bin/env bash
# Runs every fuzz target for a bounded time each (default 10s; FUZZTIME=1m
# for longer): job specs, worker configs, raft commands (FSM apply), the
# data plane's frames, checkpoint manifests and shard files, corpora, the
# GEMM kernel. A failure leaves its input under the package's
# testdata/fuzz/ (commit it: it becomes a regression test of `go test`).
set -euo pipefail
cd "$(dirname "$0")/.."
t=${FUZZTIME:-10s}
targets=(
  ./pkg/jobspec:FuzzParse
  ./pkg/workerconfig:FuzzParse
  ./pkg/coordinator:FuzzFSMApply
  ./pkg/parallel:FuzzDecodeFrame
  ./pkg/checkpoint:FuzzDecodeManifest
  ./pkg/checkpoint:FuzzReadShard
  ./pkg/data:FuzzReadJSONL
  ./pkg/kernels:FuzzSgemm
)
found=$(grep -rl --include='*_test.go' '^func Fuzz' pkg cmd | xargs grep -ho '^func Fuzz[A-Za-z0-9_]*' | wc -l)
if [ "$found" -ne "${#targets[@]}" ]; then
  echo "fuzz.sh: $found fuzz targets in the tree, ${#targets[@]} listed here: list the new one" >&2
  exit 1
fi
for tg in "${targets[@]}"; do
  pkg=${tg%%:*} name=${tg##*:}
  echo "== $name ($pkg, $t)"
  go test -run '^$' -fuzz "^${name}\$" -fuzztime "$t" "$pkg"
done
