#!/usr/bin/env bash
# Cost of the global-batch LBL sync: the same 4-process run (tiny preset,
# data parallel) with balance group dp (one all-reduce of every MoE layer's
# expert counts per micro-batch) and none (no sync), run back to back,
# alternating, and the time rank 0 spent inside the count all-reduce.
#
#   scripts/bench-lbl-sync.sh [steps] [rounds]
set -euo pipefail
steps=${1:-12}
rounds=${2:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
go build -o "$root/bin/switchyard" "$root/cmd/switchyard"
out=$(mktemp -d)
for r in $(seq 1 "$rounds"); do
  for b in dp none; do
    "$root/bin/switchyard" launch --nproc 4 --balance "$b" -- --preset tiny --micro-batch 2 --accum 2 \
      --steps "$steps" --demo-mb 0.5 --eval-seqs 4 --out "$out/$b-$r" > "$out/$b-$r.log" 2>&1
  done
done
/usr/bin/python3 - "$out" "$rounds" <<'PY'
import json, sys, statistics
out, rounds = sys.argv[1], int(sys.argv[2])
res = {}
for b in ("dp", "none"):
    steps, sync = [], []
    for r in range(1, rounds + 1):
        ms = [json.loads(l) for l in open(f"{out}/{b}-{r}/metrics.jsonl")][2:]  # skip warm-up steps
        steps += [m["step_s"] for m in ms]
        sync += [m["lbl_sync_s"] for m in ms]
    res[b] = {"median_step_s": statistics.median(steps), "median_lbl_sync_s": statistics.median(sync), "steps": len(steps)}
res["step_time_ratio_dp_over_none"] = res["dp"]["median_step_s"] / res["none"]["median_step_s"]
res["sync_share_of_step"] = res["dp"]["median_lbl_sync_s"] / res["dp"]["median_step_s"]
print(json.dumps(res, indent=1))
PY
