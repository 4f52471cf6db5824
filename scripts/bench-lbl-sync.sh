#!/usr/bin/env bash
# Cost of the global-batch LBL sync: the same 4-process run (tiny preset,
# data parallel) with balance group dp (one all-reduce of every MoE layer's
# expert counts and the token count, fused into one message, per
# micro-batch) and none (no sync), and the time rank 0 spent inside the
# count all-reduce.
#
#   scripts/bench-lbl-sync.sh [steps] [rounds] [warmup]
#
# Method. The two variants run in pairs, the order alternating from round to
# round (dp,none then none,dp: ABBA), so that drift in the load of a shared
# machine falls on both alike. Each run's first `warmup` steps are dropped
# and the run is summarised by its median step time. The figure is the
# paired ratio dp/none of each round's two medians; the report gives the
# median of those ratios, their quartiles and extremes, and a bootstrap
# 90% interval of the median ratio, together with the pooled medians, the
# share of a dp step rank 0 spent inside the sync (which includes waiting
# for the slowest rank to arrive) and the load average around each run.
set -euo pipefail
steps=${1:-20}
rounds=${2:-6}
warmup=${3:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
go build -o "$root/bin/switchyard" "$root/cmd/switchyard"
out=$(mktemp -d)
run() { # variant round
  cut -d' ' -f1 /proc/loadavg > "$out/$1-$2.load"
  "$root/bin/switchyard" launch --nproc 4 --balance "$1" -- --preset tiny --micro-batch 2 --accum 2 \
    --steps "$steps" --demo-mb 0.5 --eval-seqs 4 --out "$out/$1-$2" > "$out/$1-$2.log" 2>&1
  cut -d' ' -f1 /proc/loadavg >> "$out/$1-$2.load"
}
for r in $(seq 1 "$rounds"); do
  if (( r % 2 )); then run dp "$r"; run none "$r"; else run none "$r"; run dp "$r"; fi
done
/usr/bin/python3 - "$out" "$rounds" "$warmup" <<'PY'
import json, random, statistics, sys
out, rounds, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def load(b, r):
    ms = [json.loads(l) for l in open(f"{out}/{b}-{r}/metrics.jsonl")][warmup:]
    return [m["step_s"] for m in ms], [m["lbl_sync_s"] for m in ms]
def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * (len(xs) - 1) + 0.5))]
runs = {(b, r): load(b, r) for b in ("dp", "none") for r in range(1, rounds + 1)}
ratios = [statistics.median(runs["dp", r][0]) / statistics.median(runs["none", r][0]) for r in range(1, rounds + 1)]
rng = random.Random(1)
boot = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
res = {"method": f"{rounds} rounds of dp/none pairs, order alternating (ABBA), {warmup} warm-up steps dropped per run; "
                 "figure = per-round ratio of median step times",
       "ratio_dp_over_none": {"median": statistics.median(ratios), "q25": q(ratios, .25), "q75": q(ratios, .75),
                              "min": min(ratios), "max": max(ratios), "boot90": [boot[100], boot[1899]],
                              "per_round": [round(x, 4) for x in ratios]}}
for b in ("dp", "none"):
    steps = [s for r in range(1, rounds + 1) for s in runs[b, r][0]]
    res[b] = {"median_step_s": statistics.median(steps), "steps": len(steps),
              "per_round_median_step_s": [round(statistics.median(runs[b, r][0]), 4) for r in range(1, rounds + 1)],
              "loadavg_before_after": [open(f"{out}/{b}-{r}.load").read().split() for r in range(1, rounds + 1)]}
share = [sy / st for r in range(1, rounds + 1) for st, sy in zip(*runs["dp", r])]
res["dp"]["sync_share_of_step"] = {"median": statistics.median(share), "q25": q(share, .25), "q75": q(share, .75)}
res["dp"]["median_lbl_sync_s"] = statistics.median(s for r in range(1, rounds + 1) for s in runs["dp", r][1])
print(json.dumps(res, indent=1))
PY
