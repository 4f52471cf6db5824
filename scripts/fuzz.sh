#!/usr/bin/env bash
# Runs every fuzz target for a bounded number of inputs each (about 10s of
# fuzzing on 2 cores; FUZZTIME=1m fuzzes each for that long instead):
# job specs, experiments, run configs, command ranks' run.yaml, worker
# configs, raft commands (FSM apply), the coordinator's API (sequences of
# gRPC requests to its handlers: jobs, worker syncs and reports,
# checkpoint commits, logs, membership), the data plane's frames, a
# command job's metrics lines and stdout, checkpoint manifests and shard
# files, corpora, the GEMM kernel, the unknown-key check of every YAML
# file.
# A failure leaves its input under the package's testdata/fuzz/ (commit
# it: it becomes a regression test of `go test`).
#
# Counts, not durations, by default: with a duration, Go 1.26's fuzzing
# coordinator can fail a target at the deadline with a bare "context
# deadline exceeded" and no failing input when its workers are slow to
# stop (golang/go#75804, fixed in Go 1.27); a count has no deadline to race.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=(
  ./pkg/jobspec:FuzzParse:70000x
  ./pkg/workerconfig:FuzzParse:100000x
  ./pkg/coordinator:FuzzFSMApply:100000x
  ./pkg/controller:FuzzAPI:50000x
  ./pkg/parallel:FuzzDecodeFrame:250000x
  ./pkg/checkpoint:FuzzDecodeManifest:120000x
  ./pkg/checkpoint:FuzzReadShard:100000x
  ./pkg/data:FuzzReadJSONL:600000x
  ./pkg/kernels:FuzzSgemm:80000x
  ./internal/yamlcheck:FuzzUnknownKey:30000x
  ./pkg/runconfig:FuzzParse:110000x
  ./pkg/agent:FuzzParseMetricsLine:55000x
  ./pkg/agent:FuzzMetricsTap:50000x
  ./pkg/jobspec:FuzzParseExperiment:45000x
  ./pkg/jobspec:FuzzParseCommandConfig:35000x
)
found=$(grep -rl --include='*_test.go' '^func Fuzz' pkg cmd internal | xargs grep -ho '^func Fuzz[A-Za-z0-9_]*' | wc -l)
if [ "$found" -ne "${#targets[@]}" ]; then
  echo "fuzz.sh: $found fuzz targets in the tree, ${#targets[@]} listed here: list the new one" >&2
  exit 1
fi
for tg in "${targets[@]}"; do
  IFS=: read -r pkg name count <<< "$tg"
  t=${FUZZTIME:-$count}
  echo "== $name ($pkg, $t)"
  go test -run '^$' -fuzz "^${name}\$" -fuzztime "$t" -timeout 5m "$pkg"
done
