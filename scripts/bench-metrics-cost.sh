#!/usr/bin/env bash
# What Prometheus metrics cost training (issue 12: < 0.5% of step time).
#
# 1. go test -bench: the worker's per-step cost of recording a step of the
#    science preset (4 MoE layers x 32 experts) and one scrape.
# 2. The dev demo back to back, metrics off and on (on: the coordinator and
#    both workers serve /metrics and are scraped every second, 15x
#    Prometheus's default rate), alternating, PAIRS pairs: mean step time of
#    rank 0 over steps 11..end from its metrics.jsonl.
# Prints one JSON object.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${PAIRS:-3}
STEPS=${STEPS:-150}
go build -o bin/ ./cmd/switchyard ./cmd/coordinator ./cmd/worker
bench=$(go test -run XXX -bench 'TrainingObserve|WorkerScrape' -benchtime 2s ./pkg/metrics | awk '/^Benchmark/ {print $1, $3}')
observe_ns=$(echo "$bench" | awk '/TrainingObserve/ {print $2}')
scrape_ns=$(echo "$bench" | awk '/WorkerScrape/ {print $2}')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() { # $1: off|on, $2: index -> mean step_s
  local dir="$work/$1-$2" args=()
  [ "$1" = on ] && args=(--metrics)
  ./bin/switchyard dev --steps "$STEPS" --http-addr "" --data-dir "$dir" "${args[@]}" > "$dir.log" 2>&1 &
  local pid=$!
  if [ "$1" = on ]; then
    # the scraper: the targets read once, then one curl a second fetching
    # all three endpoints (what runs here besides the cluster is kept to
    # that: a python3 start-up a second alone costs about 3% of a core)
    while kill -0 $pid 2>/dev/null && [ ! -s "$dir/metrics-targets.json" ]; do sleep 0.2; done
    local urls=()
    for t in $(python3 -c "import json,sys;print(' '.join(t for g in json.load(open(sys.argv[1])) for t in g['targets']))" "$dir/metrics-targets.json" 2>/dev/null); do
      urls+=(-o /dev/null "http://$t/metrics")
    done
    while kill -0 $pid 2>/dev/null; do
      curl -s "${urls[@]}" || true
      sleep 1
    done
  fi
  wait $pid
  python3 - "$dir" <<'PY'
import glob, json, sys
f = glob.glob(sys.argv[1] + "/storage/jobs/*/attempt-0/rank-0/metrics.jsonl")[0]
s = [json.loads(l)["step_s"] for l in open(f)][10:]
print(sum(s) / len(s))
PY
}
off=(); on=()
for i in $(seq 1 "$PAIRS"); do
  off+=("$(run off "$i")")
  on+=("$(run on "$i")")
done
python3 - "$observe_ns" "$scrape_ns" "${off[*]}" "${on[*]}" <<'PY'
import json, statistics, sys
obs, scr = float(sys.argv[1]), float(sys.argv[2])
off = [float(x) for x in sys.argv[3].split()]
on = [float(x) for x in sys.argv[4].split()]
mo, mn = statistics.mean(off), statistics.mean(on)
print(json.dumps({
  "observe_ns_per_step": obs, "scrape_ns": scr,
  "observe_over_demo_step": obs * 1e-9 / mo,
  "demo_step_s_metrics_off": off, "demo_step_s_metrics_on": on,
  "mean_off": mo, "mean_on": mn, "on_over_off": mn / mo,
  "spread_off": (max(off) - min(off)) / mo,
}, indent=1))
PY
