#!/usr/bin/env bash
# The command runtime's overhead: the PyTorch example (examples/torch-moe,
# 2 gloo ranks on CPU) run directly (two processes, torchrun's variables by
# hand) and as a 2-rank command job on a dev cluster (`switchyard dev`),
# back to back, ROUNDS times alternating. Prints JSON: the mean tokens/s of
# each run over the steps after WARMUP, and the ratio job/direct of the
# medians.
#
#   scripts/bench-command-overhead.sh CORPUS.jsonl [STEPS] [ROUNDS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
corpus=${1:?usage: $0 CORPUS.jsonl [STEPS] [ROUNDS]}
steps=${2:-40}
rounds=${3:-3}
warmup=5
py=/usr/bin/python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go build -o "$work/switchyard" "$root/cmd/switchyard"
args=(train.py --corpus "$corpus" --steps "$steps" --dim 128 --layers 2 --heads 4 --experts 8 --top-k 2 --hidden 256 --seq-len 128 --micro-batch 8)

# mean tokens/s of the steps after the warm-up in a metrics file or log
tps() { sed -n 's/^\(SWITCHYARD_METRICS \)\{0,1\}\({.*}\)$/\2/p' "$1" | $py -c '
import json, sys
w = int(sys.argv[1])
v = [json.loads(l)["tokens_per_s"] for l in sys.stdin if l.strip()]
v = v[w:]
print(sum(v) / len(v))' "$warmup"; }

direct() {
  local port; port=$($py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  (cd "$root/examples/torch-moe" && env RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port OMP_NUM_THREADS=1 $py "${args[@]}" >/dev/null 2>&1) &
  (cd "$root/examples/torch-moe" && env RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port OMP_NUM_THREADS=1 $py "${args[@]}" > "$work/direct.out" 2>/dev/null)
  wait
  tps "$work/direct.out"
}

job() {
  local q; q=$($py -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "${args[@]}")
  cat > "$work/job.yaml" <<YAML
name: overhead
runtime: command
command: $py
args: $q
working_dir: $root/examples/torch-moe
env: {OMP_NUM_THREADS: "1"}
ranks: 2
steps: $steps
YAML
  rm -rf "$work/dev"
  "$work/switchyard" dev --workers 2 --spec "$work/job.yaml" --data-dir "$work/dev" >/dev/null 2>&1
  tps "$(ls "$work"/dev/storage/jobs/*/attempt-0/rank-0/metrics.jsonl)"
}

d=(); j=()
for ((r = 0; r < rounds; r++)); do
  d+=("$(direct)")
  j+=("$(job)")
done
$py - "${d[*]}" "${j[*]}" "$steps" "$warmup" <<'PY'
import json, statistics, sys
d = [float(x) for x in sys.argv[1].split()]
j = [float(x) for x in sys.argv[2].split()]
print(json.dumps({
    "bench": "command-runtime-overhead", "trainer": "examples/torch-moe (dim 128, 2 layers, 8 experts, 2 gloo ranks)",
    "steps": int(sys.argv[3]), "warmup_steps_skipped": int(sys.argv[4]),
    "direct_tokens_per_s": d, "job_tokens_per_s": j,
    "median_direct": statistics.median(d), "median_job": statistics.median(j),
    "ratio_job_over_direct": statistics.median(j) / statistics.median(d),
}, indent=1))
PY
