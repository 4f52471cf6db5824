#!/usr/bin/env bash
# The GPU checks of the engine, as one prepared script.
#
#   scripts/gpu-check.sh build [SHARED_BENCH_DIR] [CORPUS.jsonl]
#       here (Go, no GPU): builds static binaries (CGO_ENABLED=0: the
#       switchyard CLI and the test binaries of pkg/cuda, pkg/devcomm,
#       pkg/gpu and pkg/train) into bin/gpu/, with PyTorch's reference benchmark
#       (moe_bench.py from ../shared/bench) and a corpus (from
#       ../shared/corpus/build_corpus.sh) for the training run.
#   scripts/gpu-check.sh run [PHASE...]
#       on the GPU machine (no Go needed): runs the phases (default all)
#       and writes JSON and logs to $OUT (or results/gpu-check/):
#         tests   every GPU test of pkg/cuda, pkg/devcomm and pkg/gpu (each
#                 kernel against the CPU references on random shapes, NCCL
#                 against the expected results and the host-staged
#                 collectives, the engine against the CPU engine, memory
#                 estimate)
#         equiv   pkg/train's GPU tests: tiny 30 steps CPU vs GPU fp32
#                 (each step from the same state: loss, LBL, grad norm
#                 <= 1e-4 relative at every step; free-running: 1e-4
#                 through step 8, the loss within 2% after),
#                 bf16 vs fp32 after 200 steps (<= 2%), checkpoints GPU->CPU
#                 and CPU->GPU (validation loss to 1e-5), data, expert and
#                 tensor parallelism against one process (ranks sharing the
#                 GPU: host-staged), the attention recomputed
#         bench   ours (bf16, fp32, bf16 with the experts' GEMMs one by
#                 one, and bf16 with the attention recomputed) vs
#                 moe_bench.py --device cuda --dtype bf16 eager, on medium
#                 (small: bf16, fp32)
#         train   switchyard train --device cuda --preset medium on the corpus
#                 for TRAIN_SECONDS (280, --max-time), its schedule sized at
#                 the step time the bench measured
#         compile moe_bench.py --compile on medium and small (not in the
#                 default phases: it takes minutes per config)
#         command the PyTorch example (examples/torch-moe, one rank) as a
#                 command job on `switchyard dev --gpus 1`, then directly:
#                 tokens/s of both, each run at most COMMAND_LIMIT (240)
#                 seconds (not in the default phases)
#         cluster data and expert parallelism on the GPU through a dev
#                 cluster: dp 2 ep 2 (CLUSTER_EP) on the one GPU (so the
#                 host-staged collectives), kill -9 of a rank, resume, the
#                 loss against one process of the same global batch
#                 (issue 10; preset small, CLUSTER_PRESET=medium for the
#                 issue's size; the one process at most
#                 CLUSTER_SINGLE_LIMIT (180) seconds; not in the default
#                 phases, about 5 minutes)
#         science medium, micro vs global-batch LBL for the same tokens as an
#                 experiment on `switchyard dev --gpus 1`: the report
#                 (science-report.txt) and its plots, spec and runs'
#                 metrics (science.tar.xz) (issue 16; not in the default
#                 phases, about 9 minutes)
#         overlap train and compile together: torch.compile's compiling
#                 (minutes of CPU) overlaps our training, which is paused
#                 (SIGSTOP) from the end of moe_bench's last warm-up step
#                 until it exits, so its timed steps have the GPU and the
#                 CPUs alone (the pauses are logged; moe_bench itself
#                 reports the other processes' CPU use in its timed steps)
#       gpu-check.json holds every result; the last lines printed are the
#       summary.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
gdir="$root/bin/gpu"

build() {
  set -e
  local bench=${1:-$root/../shared/bench} corpus=${2:-}
  mkdir -p "$gdir/bench"
  cd "$root"
  export CGO_ENABLED=0
  local flags=(-trimpath -ldflags=-s\ -w)
  go build "${flags[@]}" -o "$gdir/switchyard" ./cmd/switchyard
  for p in cuda devcomm gpu train; do
    go test -c "${flags[@]}" -o "$gdir/$p.test" "./pkg/$p"
  done
  cp "$bench/moe_bench.py" "$bench/wait_idle.py" "$gdir/bench/"
  if [ -n "$corpus" ]; then xz -T2 -6 -c "$corpus" > "$gdir/corpus.jsonl.xz"; fi
  (cd "$gdir" && tar cf - switchyard cuda.test devcomm.test gpu.test train.test | xz -T2 -6 > bins.tar.xz && rm -f switchyard ./*.test)
  du -sh "$gdir"
}

out=${OUT:-$root/results/gpu-check}
bd=/tmp/switchyard-gpu   # the unpacked binaries
work=/tmp/gpu-check-work # every intermediate file; $out gets at most 8
log() { echo "[gpu-check $(date +%T)] $*"; }

# run_tests NAME BINARY TIMEOUT ARGS... : the test binary's verbose log and
# a JSON list of {test, status, seconds} plus the tests' log lines.
run_tests() {
  local name=$1 bin=$2 limit=$3
  shift 3
  log "$name: $bin $*"
  (cd "$root/pkg/${bin%.test}" && timeout "$limit" "$bd/$bin" -test.v -test.count=1 "$@") > "$work/$name.log" 2>&1
  echo $? > "$work/$name.rc"
  python3 - "$work/$name.log" "$work/$name.rc" > "$work/$name.json" <<'PY'
import json, re, sys
tests, logs = [], []
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"\s*--- (PASS|FAIL|SKIP): (\S+) \(([\d.]+)s\)", line)
    if m:
        tests.append({"test": m.group(2), "status": m.group(1), "seconds": float(m.group(3))})
    elif re.match(r"\s+\S+_test\.go:\d+: ", line):
        logs.append(line.strip())
rc = int(open(sys.argv[2]).read().strip() or 1)
print(json.dumps({"rc": rc, "passed": sum(t["status"] == "PASS" for t in tests),
                  "failed": [t["test"] for t in tests if t["status"] == "FAIL"],
                  "skipped": [t["test"] for t in tests if t["status"] == "SKIP"], "tests": tests, "logs": logs}))
PY
  log "$name: rc $(cat "$work/$name.rc"), $(python3 -c "import json;d=json.load(open('$work/$name.json'));print(d['passed'],'passed, failed:',d['failed'])")"
}

phase_tests() {
  # the tests against stand-in libraries built from C run here in CI (the
  # GPU machine may have no C compiler); the real libraries are tested here.
  # NCCL_DEBUG=WARN in this phase only: NCCL's own reason for a failure in
  # the tests' log (it writes to stdout, which other phases parse)
  local -x NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  run_tests tests-cuda cuda.test 120 -test.skip 'OnFake'
  run_tests tests-devcomm devcomm.test 60
  run_tests tests-gpu gpu.test 240
}

phase_equiv() {
  run_tests equiv train.test 360 -test.run 'TestGPU'
}

bench_summary() {
  local b="$work/bench"
  python3 - "$b" > "$work/bench.json" <<'PY'
import glob, json, os, sys
d = sys.argv[1]
def load(f):
    try:
        return json.load(open(f))
    except Exception:
        return None
rows = []
for p in ("small", "medium"):
    ours = {prec: load(f"{d}/ours-{p}-{prec}.json") for prec in ("bf16", "fp32", "bf16-loop", "bf16-recompute")}
    torch = {m: load(f"{d}/torch-{p}-{m}.json") for m in ("eager", "compile")}
    if not any(ours.values()) and not any(torch.values()):
        continue
    r = {"preset": p}
    for prec, o in ours.items():
        if o:
            r[f"ours_{prec}"] = {k: o.get(k) for k in ("tokens_per_s", "median_step_s", "gflops", "mfu_vs_measured_gemm", "gemm_ceiling_tflops",
                                                    "mfu_vs_spec_peak", "device_mem_gib", "device_used_gib", "split_s", "first_loss", "last_loss", "gpu")}
    for m, t in torch.items():
        if t:
            r[f"torch_{m}"] = {k: t.get(k) for k in ("tokens_per_s", "step_s_median", "achieved_gflops", "gpu_peak_mem_mib", "fwd_s_median",
                                                   "bwd_s_median", "opt_s_median", "first_ce", "last_ce", "torch")}
    ob = (ours.get("bf16") or {}).get("tokens_per_s")
    for m in ("eager", "compile"):
        t = torch.get(m)
        if ob and t and t.get("tokens_per_s"):
            r[f"ratio_bf16_vs_torch_{m}"] = round(ob / t["tokens_per_s"], 3)
    rows.append(r)
print(json.dumps(rows, indent=1))
PY
}

phase_bench() {
  local sy="$bd/switchyard" pt="$gdir/bench/moe_bench.py" b="$work/bench"
  mkdir -p "$b"
  for p in ${BENCH_PRESETS:-medium small}; do
    local vs=${VARIANTS:-bf16 fp32 bf16-loop bf16-recompute}
    [ "$p" = small ] && vs=${VARIANTS_SMALL:-${VARIANTS:-bf16 fp32}}
    for v in $vs; do
      # bf16-loop: the experts' GEMMs one by one instead of cuBLAS's grouped
      # call; bf16-recompute: the attention probabilities recomputed in the
      # backward (its memory and its cost)
      [ "$v" = none ] && continue
      local prec=${v%%-*} env=() extra=()
      case $v in
        *-loop) env=(SWITCHYARD_EXPERT_GEMM=loop) ;;
        *-recompute) extra=(--recompute attention) ;;
      esac
      log "bench ours $p $v"
      env "${env[@]}" timeout 120 "$sy" bench engine --device cuda --preset "$p" --precision "$prec" "${extra[@]}" --warmup 3 --steps 10 --json \
        > "$b/ours-$p-$v.json" 2> "$b/ours-$p-$v.err" || log "ours $p $v failed: $(tail -3 "$b/ours-$p-$v.err")"
    done
    for mode in ${TORCH_MODES:-eager}; do
      log "bench pytorch $p bf16 $mode"
      local lim=100
      [ "$mode" = compile ] && lim=${COMPILE_LIMIT:-330}
      torch_bench "$p" "$mode" "$lim"
      bench_summary
      collect
    done
  done
}

# torch_bench PRESET MODE LIMIT: moe_bench.py, bf16 on the GPU, its steps
# printed (--verbose) so that a run cut short still shows its step times.
torch_bench() {
  local p=$1 mode=$2 lim=$3 extra=() b="$work/bench"
  local envs=(PYTHONUNBUFFERED=1)
  # compile: its recompilations and graph breaks go to the log (why it takes minutes)
  [ "$mode" = compile ] && extra=(--compile) && envs+=("TORCH_LOGS=${COMPILE_TORCH_LOGS:-recompiles,graph_breaks}")
  env "${envs[@]}" timeout "$lim" python3 -B "$gdir/bench/moe_bench.py" --config "$p" --procs 1 --no-wait-idle --device cuda --dtype bf16 \
    --verbose "${extra[@]}" --out "$b/torch-$p-$mode.json" > "$b/torch-$p-$mode.log" 2>&1 || log "pytorch $p $mode failed (rc $?): $(tail -3 "$b/torch-$p-$mode.log")"
}

# compile: torch.compile's runs alone (it recompiles as the experts' token
# counts change; on an H200 neither config finished 3+10 steps in 150 s).
phase_compile() {
  TORCH_MODES=compile VARIANTS=none phase_bench
}

# train_start: switchyard train --device cuda --preset medium in the
# background for TRAIN_SECONDS (--max-time), its LR schedule sized to end
# then at TRAIN_RATE (1.0) times the step time the bench measured; the pid
# is in $train_pid.
train_start() {
  local c="$bd/corpus.jsonl" secs=${TRAIN_SECONDS:-280}
  [ -f "$c" ] || xz -dc "$gdir/corpus.jsonl.xz" > "$c"
  local steps=${TRAIN_STEPS:-}
  if [ -z "$steps" ]; then
    steps=$(python3 -c "import json;b=json.load(open('$work/bench/ours-medium-bf16.json'));print(max(50,min(8000,int($secs*${TRAIN_RATE:-1.0}/b['median_step_s']))))" 2>/dev/null || echo 1500)
  fi
  log "train medium: schedule $steps steps, at most $secs s, on $(wc -c < "$c") bytes"
  "$bd/switchyard" train --device cuda --precision bf16 --preset medium --corpus "$c" --max-time "${secs}s" \
    --steps "$steps" --lr 5e-4 --warmup $((steps / 20)) --eval-every 0 --eval-seqs 64 --seed 1 --json --out "$work/train-medium" \
    > "$work/train-report.json" 2> "$work/train.log" &
  train_pid=$!
}

train_wait() {
  # --max-time ends it; the evaluation follows; the limit is a safety net
  local t0=$SECONDS
  while kill -0 "$train_pid" 2> /dev/null && [ $((SECONDS - t0)) -lt "${TRAIN_LIMIT:-420}" ]; do sleep 1; done
  kill -0 "$train_pid" 2> /dev/null && { log "train: over TRAIN_LIMIT, killed"; kill -CONT "$train_pid"; kill "$train_pid"; }
  wait "$train_pid"
  echo $? > "$work/train.rc"
  log "train: rc $(cat "$work/train.rc"); $(tail -c 300 "$work/train.log")"
}

phase_train() {
  train_start
  train_wait
}

# overlap: the training and torch.compile's runs (medium, then small while
# time is left before the training's end) at once. The training is paused
# from the end of moe_bench's last warm-up step until moe_bench exits.
phase_overlap() {
  local b="$work/bench" ev="$work/bench/overlap-events.log" end
  mkdir -p "$b"
  train_start
  end=$((SECONDS + ${TRAIN_SECONDS:-280}))
  for p in ${COMPILE_PRESETS:-medium small}; do
    # medium gets COMPILE_LIMIT, small what is left of the training's time
    local lim=$((end - SECONDS))
    [ "$p" = medium ] && lim=${COMPILE_LIMIT:-330}
    [ "$lim" -lt "${COMPILE_MIN:-60}" ] && { log "compile $p: skipped, $lim s left"; continue; }
    log "bench pytorch $p bf16 compile (limit $lim s), training alongside"
    torch_bench "$p" compile "$lim" &
    local tb=$! paused=0
    while kill -0 "$tb" 2> /dev/null; do
      if [ $paused = 0 ] && grep -Eq '^  step +([2-9]|[1-9][0-9]+) ce=' "$b/torch-$p-compile.log" 2> /dev/null; then
        kill -STOP "$train_pid" 2> /dev/null && paused=1 && echo "$(date +%T.%N) $p: warm-up done, training paused" >> "$ev"
      fi
      sleep 0.05
    done
    wait "$tb"
    kill -CONT "$train_pid" 2> /dev/null
    echo "$(date +%T.%N) $p: moe_bench exited, training resumed (paused: $paused)" >> "$ev"
    bench_summary
    collect
  done
  train_wait
}

# corpus_ready FILE: the corpus the build packed, else one made here from
# this repository's Go and Markdown (two domains).
corpus_ready() {
  local c=$1
  [ -f "$c" ] || { [ -f "$gdir/corpus.jsonl.xz" ] && xz -dc "$gdir/corpus.jsonl.xz" > "$c"; }
  [ -f "$c" ] || python3 - "$root" > "$c" <<'PY'
import glob, json, sys
for f in sorted(glob.glob(sys.argv[1] + "/pkg/*/*.go")):
    print(json.dumps({"domain": "code_go", "source": f, "text": open(f).read()}))
for f in sorted(glob.glob(sys.argv[1] + "/**/*.md", recursive=True)):
    print(json.dumps({"domain": "english", "source": f, "text": open(f).read()}))
PY
}

# command: the PyTorch example (examples/torch-moe: one rank on the GPU, so
# no NCCL: its torch.distributed starts only for a world of several) as a
# command job on a dev cluster whose worker declares the GPU, then the same
# trainer run directly; tokens/s of both (issue 11's GPU check).
phase_command() {
  local c="$bd/corpus.jsonl" d="$work/command" py
  py=$(command -v python3)
  mkdir -p "$d"
  corpus_ready "$c"
  local steps=${COMMAND_STEPS:-80} cfg=${COMMAND_CONFIG:-small} limit=${COMMAND_LIMIT:-240} mem
  mem=$(mem_share 1 16384)
  local args=(train.py --device "${COMMAND_DEVICE:-cuda}" --config "$cfg" --steps "$steps" --corpus "$c" --threads 4 ${COMMAND_ARGS:-})
  cat > "$d/job.yaml" <<YAML
name: torch-gpu
runtime: command
command: $py
args: $("$py" -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "${args[@]}" --ckpt-every 40)
working_dir: $root/examples/torch-moe
ranks: 1
steps: $steps
resources: {cpu_cores: 1, memory_mib: $mem, gpus: 1}
YAML
  log "command job: torch-moe $cfg on the GPU through a dev cluster"
  timeout "$limit" "$bd/switchyard" dev --workers 1 --gpus 1 --spec "$d/job.yaml" --data-dir "$d/dev" > "$d/dev.log" 2>&1
  echo $? > "$d/dev.rc"
  log "command job: rc $(cat "$d/dev.rc"); direct run"
  (cd "$root/examples/torch-moe" && timeout "$limit" "$py" "${args[@]}" > "$d/direct.out" 2> "$d/direct.err")
  echo $? > "$d/direct.rc"
  python3 - "$d" > "$work/command.json" <<'PY'
import glob, json, sys
d = sys.argv[1]
def steps(lines):
    out = []
    for l in lines:
        l = l.strip()
        if l.startswith("SWITCHYARD_METRICS "):
            l = l[len("SWITCHYARD_METRICS "):]
        if l.startswith("{"):
            out.append(json.loads(l))
    return out
job = steps(open(m).readlines()) if (m := next(iter(glob.glob(f"{d}/dev/storage/jobs/*/attempt-0/rank-0/metrics.jsonl")), None)) else []
direct = steps(open(f"{d}/direct.out").readlines())
def tps(s):
    s = s[5:]
    return sum(x["tokens_per_s"] for x in s) / len(s) if s else None
r = {"dev_rc": int(open(f"{d}/dev.rc").read()), "direct_rc": int(open(f"{d}/direct.rc").read()),
     "job_steps": len(job), "direct_steps": len(direct), "job_tokens_per_s": tps(job), "direct_tokens_per_s": tps(direct),
     "job_last_loss": job[-1]["loss"] if job else None, "direct_last_loss": direct[-1]["loss"] if direct else None,
     "dev_log_tail": open(f"{d}/dev.log").read()[-1500:], "direct_err_tail": open(f"{d}/direct.err").read()[-800:]}
if r["job_tokens_per_s"] and r["direct_tokens_per_s"]:
    r["ratio_job_over_direct"] = r["job_tokens_per_s"] / r["direct_tokens_per_s"]
print(json.dumps(r, indent=1))
PY
  log "command: $(python3 -c "import json; r=json.load(open('$work/command.json')); print({k: r.get(k) for k in ('dev_rc', 'job_steps', 'job_tokens_per_s', 'direct_tokens_per_s', 'ratio_job_over_direct', 'job_last_loss', 'direct_last_loss')})")"
}

# science: issue 16 on the GPU: the medium preset (64 experts, top-6),
# micro vs global-batch LBL for the same tokens, as an experiment on a dev
# cluster whose one worker has the GPU (the jobs queue for it), domain
# order (every micro-batch one domain), balance batch 16 vs
# 16 x SCIENCE_ACCUM sequences; then `experiment report` (table, JSON,
# plots). SCIENCE_STEPS each (default 300: 300 x 4 x 16 x 1024 = 19.7 M
# tokens a run, under 3 minutes each at the 120k tokens/s measured).
phase_science() {
  local c="$bd/corpus.jsonl" d="$work/science" sw="$bd/switchyard"
  mkdir -p "$d"
  corpus_ready "$c"
  local steps=${SCIENCE_STEPS:-300} accum=${SCIENCE_ACCUM:-4} limit=${SCIENCE_LIMIT:-560}
  local device=${SCIENCE_DEVICE:-cuda} preset=${SCIENCE_PRESET:-medium} gpus=1 precision="precision: bf16"
  # SCIENCE_DEVICE=cpu SCIENCE_PRESET=tiny tries the phase without a GPU
  [ "$device" = cpu ] && { gpus=0; precision=""; }
  cat > "$d/experiment.yaml" <<YAML
name: gpu-$preset-lbl
base:
  device: $device
  $precision
  model: {preset: $preset}
  data: {corpus: $c, order: domain, eval_seqs: 32}
  lbl: {coef: 0.01}
  optim: {lr: 0.0005, warmup_steps: $((steps / 10)), clip_norm: 1.0}
  accumulation: $accum
  steps: $steps
  eval_every: $((steps / 4))
  resources: {cpu_cores: 1, memory_mib: ${SCIENCE_MEMORY_MIB:-$(mem_share 1 32768)}, gpus: $gpus}
axes:
  seed: [1]
variants:
  micro: {lbl: {mode: micro}}
  global: {lbl: {mode: global, window: 0}}
YAML
  local t0=$SECONDS
  dev_start "$d/dev" "$(dirname "$c")" --workers 1 --gpus 1 || { echo '{"error": "dev cluster did not start"}' > "$work/science.json"; return; }
  "$sw" experiment submit "$d/experiment.yaml" > "$d/submit.txt" 2>&1
  log "science: submitted to $SWITCHYARD_COORDINATOR: $(tr '\n' ' ' < "$d/submit.txt")"
  local done=0
  while [ $((SECONDS - t0)) -lt "$limit" ]; do
    sleep 10
    done=$("$sw" experiment report "$d/experiment.yaml" -o json 2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)
print(int(all(v["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") for v in r["variants"])))' 2>/dev/null || echo 0)
    [ "$done" = 1 ] && break
  done
  log "science: all ended: $done after $((SECONDS - t0)) s"
  "$sw" experiment report "$d/experiment.yaml" --storage "$d/dev/storage" -o json > "$work/science.json" 2> "$d/report.err"
  # the report in $out, and with it the plots, the spec and every run's
  # metrics as one archive: the device gives back at most 8 files of $out
  local keep="$d/keep"
  mkdir -p "$keep/plots"
  "$sw" experiment report "$d/experiment.yaml" --storage "$d/dev/storage" --plots "$keep/plots" > "$out/science-report.txt" 2>> "$d/report.err"
  cp "$d/experiment.yaml" "$out/science-report.txt" "$keep/"
  for m in "$d"/dev/storage/jobs/*/attempt-*/rank-0/metrics.jsonl; do
    [ -f "$m" ] && cp "$m" "$keep/$(basename "$(dirname "$(dirname "$(dirname "$m")")")")-metrics.jsonl"
  done
  tar -C "$keep" -cf - . | xz -T4 > "$out/science.tar.xz"
  dev_stop
  log "science: $(head -30 "$out/science-report.txt")"
}

# mem_share WORKERS MIB: MIB, or what each of WORKERS dev workers declares
# (this machine's MemTotal over WORKERS, as switchyard dev divides it)
# where that is less, so that a job asking for it is placed; logged when
# it is less.
mem_share() {
  local kb have
  kb=$(sed -n 's/^MemTotal: *\([0-9]*\) kB$/\1/p' /proc/meminfo 2> /dev/null)
  have=$(( ${kb:-0} / 1024 / $1 ))
  if [ "$have" -gt 0 ] && [ "$have" -lt "$2" ]; then
    log "memory: $1 dev worker(s) declare $have MiB each (MemTotal $((${kb:-0} / 1024)) MiB): the ranks ask for that, not $2" >&2
    echo "$have"
  else
    echo "$2"
  fi
}

# kill9_matching TEXT: kill -9 of every process whose command line holds
# TEXT (pkill -9 -f without procps, which the GPU machine's image may
# lack); prints their pids.
kill9_matching() {
  local p cmd
  for p in /proc/[0-9]*; do
    [ "${p#/proc/}" = "$$" ] || [ "${p#/proc/}" = "$BASHPID" ] && continue
    cmd=$(tr '\0' ' ' < "$p/cmdline" 2> /dev/null) || continue
    [[ $cmd == *"$1"* ]] && kill -9 "${p#/proc/}" 2> /dev/null && echo "${p#/proc/}"
  done
}

# dev_start DIR ALLOW ARGS...: `switchyard dev --no-job` in the background
# (data in DIR, corpora readable in ALLOW), SWITCHYARD_COORDINATOR set to
# it; dev_stop ends it. Fails when it does not come up within a minute.
dev_start() {
  local dir=$1 allow=$2 t0=$SECONDS addr=""
  shift 2
  mkdir -p "$dir"
  "$bd/switchyard" dev --no-job --data-dir "$dir" --allow-path "$allow" "$@" > "$dir.log" 2>&1 &
  dev_pid=$!
  while [ -z "$addr" ] && [ $((SECONDS - t0)) -lt 60 ] && kill -0 $dev_pid 2>/dev/null; do
    sleep 1
    addr=$(grep -o 'job submit SPEC.yaml --coordinator [^ ]*' "$dir.log" | awk '{print $NF}' | head -1)
  done
  if [ -z "$addr" ]; then
    log "dev: did not start: $(tail -5 "$dir.log")"
    dev_stop
    return 1
  fi
  export SWITCHYARD_COORDINATOR=$addr
}

dev_stop() {
  kill -INT "$dev_pid" 2>/dev/null
  wait "$dev_pid" 2>/dev/null
}

# job_field ID EXPR: a Python expression over the job record j (job status
# -o json), printed; empty when the status cannot be read.
job_field() {
  "$bd/switchyard" job status "$1" -o json 2>/dev/null | python3 -c "import json, sys; j = json.load(sys.stdin)['job']; print($2)" 2>/dev/null
}

# cluster: issue 10 on one GPU: a dev cluster of 2 workers sharing the GPU
# runs a data-parallel job (dp 2, both ranks on the GPU, the gradients
# averaged through the host), submitted with the CLI; rank 1 is killed
# (kill -9) past half its steps, the job resumes from its checkpoint and
# finishes; then one process trains the same global batch (micro-batch x
# 2) and the losses are compared step by step. CLUSTER_PRESET (small:
# medium's 1.26 B parameters would pass 5 GB of gradients a step through
# the host), CLUSTER_STEPS (60), CLUSTER_MICRO (2 a rank);
# CLUSTER_DEVICE=cpu CLUSTER_PRESET=tiny tries it without a GPU.
phase_cluster() {
  local c="$bd/corpus.jsonl" d="$work/cluster" sw="$bd/switchyard"
  mkdir -p "$d"
  corpus_ready "$c"
  local preset=${CLUSTER_PRESET:-small} steps=${CLUSTER_STEPS:-60} micro=${CLUSTER_MICRO:-2} device=${CLUSTER_DEVICE:-cuda} ep=${CLUSTER_EP:-2}
  local gpus=1 prec=(--precision bf16) precline="precision: bf16" limit=${CLUSTER_LIMIT:-420} t0=$SECONDS
  [ "$device" = cpu ] && { gpus=0; prec=(); precline=""; }
  cat > "$d/job.yaml" <<YAML
name: gpu-dp
device: $device
$precline
model: {preset: $preset}
parallel: {dp: 2, ep: $ep}
micro_batch: $micro
accumulation: 2
steps: $steps
seed: 1
optim: {lr: 0.0005, warmup_steps: $((steps / 10))}
data: {corpus: $c, eval_seqs: 16}
checkpoint: {interval_steps: $((steps / 4))}
restart: {max_restarts: 2, backoff_seconds: 2}
resources: {cpu_cores: 1, memory_mib: ${CLUSTER_MEMORY_MIB:-$(mem_share 2 16384)}, gpus: $gpus}
YAML
  dev_start "$d/dev" "$(dirname "$c")" --workers 2 --gpus 1 || { echo '{"error": "dev cluster did not start"}' > "$work/cluster.json"; return; }
  "$sw" job submit "$d/job.yaml" --id gpu-dp > "$d/submit.txt" 2>&1
  log "cluster: $(cat "$d/submit.txt")"
  local step=0 killed=""
  while [ $((SECONDS - t0)) -lt "$limit" ]; do
    sleep 2
    step=$(job_field gpu-dp "j.get('progress', {}).get('step', 0)")
    if [ -z "$killed" ] && [ "${step:-0}" -gt $((steps / 2)) ]; then
      [ -n "$(kill9_matching "jobs/gpu-dp/attempt-0/rank-1/run.yaml")" ] && killed=$step
      log "cluster: kill -9 of rank 1 at step $step: ${killed:-no such process}"
    fi
    case $(job_field gpu-dp "j['state']") in *SUCCEEDED|*FAILED|*CANCELLED) break ;; esac
  done
  "$sw" job status gpu-dp > "$out/cluster-status.txt" 2>&1
  "$sw" job status gpu-dp -o json > "$d/status.json" 2>&1
  dev_stop
  log "cluster: the job ended after $((SECONDS - t0)) s; one process, micro-batch $((2 * micro))"
  timeout "${CLUSTER_SINGLE_LIMIT:-180}" "$sw" train --device "$device" "${prec[@]}" --preset "$preset" --corpus "$c" --micro-batch $((2 * micro)) --accum 2 --steps "$steps" \
    --seed 1 --lr 5e-4 --warmup $((steps / 10)) --eval-seqs 16 --json --out "$d/single" > "$d/single.json" 2> "$d/single.log"
  python3 - "$d" "${killed:-0}" > "$work/cluster.json" <<'PY'
import glob, json, sys
d, killed = sys.argv[1], int(sys.argv[2])
def losses(path):
    out = {}
    for line in open(path):
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if "loss" in m and "step" in m:
            out[m["step"]] = m["loss"]
    return out
job = json.load(open(f"{d}/status.json"))["job"]
r = {"state": job.get("state"), "restarts": job.get("restarts", 0), "killed_at_step": killed,
     "events": [e.get("type", "") + ": " + e.get("message", "") for e in job.get("events", [])][-12:]}
single = losses(f"{d}/single/metrics.jsonl") if glob.glob(f"{d}/single/metrics.jsonl") else {}
for a in sorted(glob.glob(f"{d}/dev/storage/jobs/gpu-dp/attempt-*/rank-0/metrics.jsonl")):
    got = losses(a)
    diffs = [abs(got[s] - single[s]) / abs(single[s]) for s in got if s in single]
    r[a.split("/")[-3]] = {"steps": len(got), "first": min(got, default=None), "last": max(got, default=None),
                           "max_rel_loss_diff_vs_single": max(diffs, default=None),
                           "mean_rel_loss_diff_vs_single": sum(diffs) / len(diffs) if diffs else None}
r["single_steps"] = len(single)
try:
    r["single_report"] = {k: v for k, v in json.load(open(f"{d}/single.json")).items() if k in ("tokens_per_s", "final_train_loss", "steps")}
except Exception as e:
    r["single_report"] = str(e)
print(json.dumps(r, indent=1))
PY
  log "cluster: $(python3 -c "import json; r=json.load(open('$work/cluster.json')); print({k: v for k, v in r.items() if k != 'events'})")"
}

# collect writes $out: gpu-check.json (every result) and the logs.
collect() {
  python3 - "$work" > "$out/gpu-check.json" <<'PY'
import glob, json, os, sys
d = sys.argv[1]
res = {"gpu": open(f"{d}/nvidia-smi.txt").read().strip()}
for f in sorted(glob.glob(f"{d}/*.json")):
    n = os.path.basename(f)[:-5]
    if n == "gpu-check":
        continue
    try:
        res[n] = json.load(open(f))
    except Exception as e:
        res[n] = {"error": str(e)}
print(json.dumps(res, indent=1))
PY
  # the logs, one file each, where there are any ($out: at most 8 files)
  for n in tests-cuda tests-devcomm tests-gpu equiv; do [ -f "$work/$n.log" ] && { echo "===== $n"; cat "$work/$n.log"; }; done > "$work/tests.log"
  for f in "$work"/bench/*.log "$work"/bench/*.err; do [ -f "$f" ] && { echo "===== $(basename "$f")"; cat "$f"; }; done > "$work/bench.log" 2>/dev/null
  for n in tests bench; do [ -s "$work/$n.log" ] && cp "$work/$n.log" "$out/$n.log"; done
  [ -f "$work/train.log" ] && cp "$work/train.log" "$out/train.log"
  [ -f "$work/train-medium/metrics.jsonl" ] && xz -T4 -c "$work/train-medium/metrics.jsonl" > "$out/train-metrics.jsonl.xz"
  [ -f "$work/run.log" ] && cp "$work/run.log" "$out/run.log"
}

run() {
  mkdir -p "$out" "$bd" "$work"
  export SWITCHYARD_REQUIRE_GPU=1 # on the GPU machine a test that cannot open the GPU, NCCL or NVML fails
  # always the binaries of this build (a warm machine may hold an older one)
  rm -f "$bd/switchyard" "$bd"/*.test
  xz -dc "$gdir/bins.tar.xz" | tar xf - -C "$bd" || { log "cannot unpack $gdir/bins.tar.xz (run build first)"; exit 1; }
  local phases=("$@")
  [ ${#phases[@]} -eq 0 ] && phases=(tests equiv bench train)
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader > "$work/nvidia-smi.txt" 2>&1 || true
  # the machine's topology table as nvidia-smi prints it (a fixture for
  # pkg/workerconfig's ParseTopo, whose testdata was written by hand)
  nvidia-smi topo -m > "$out/nvidia-smi-topo.txt" 2>&1 || true
  log "GPU: $(cat "$work/nvidia-smi.txt")"
  # what the engine finds: the driver, the devices, where each library is
  "$bd/switchyard" gpus --json > "$work/gpus.json" 2> /dev/null
  log "switchyard gpus: $("$bd/switchyard" gpus 2>&1)"
  for ph in "${phases[@]}"; do
    local t0=$SECONDS
    "phase_$ph"
    log "phase $ph took $((SECONDS - t0)) s"
    collect # after every phase: a run cut short still returns what it measured
  done
  python3 - "$out/gpu-check.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for k in ("tests-cuda", "tests-devcomm", "tests-gpu", "equiv"):
    if k in r:
        print(f"{k}: rc {r[k]['rc']} passed {r[k]['passed']} failed {r[k]['failed']} skipped {len(r[k]['skipped'])}")
for row in r.get("bench", []):
    b, f = row.get("ours_bf16") or {}, row.get("ours_fp32") or {}
    e, c = row.get("torch_eager") or {}, row.get("torch_compile") or {}
    print(f"{row['preset']}: ours bf16 {b.get('tokens_per_s', 0):.0f} tok/s (MFU {b.get('mfu_vs_measured_gemm') or 0:.3f}), fp32 {f.get('tokens_per_s', 0):.0f}; "
          f"torch eager {e.get('tokens_per_s') or 0:.0f}, compile {c.get('tokens_per_s') or 0:.0f}; "
          f"ratios {row.get('ratio_bf16_vs_torch_eager')} / {row.get('ratio_bf16_vs_torch_compile')}")
    print(f"  split bf16 {b.get('split_s')}")
t = r.get("train-report")
if isinstance(t, dict) and "domains" in t:
    print("train:", t.get("steps"), "steps in", round(t.get("seconds", 0)), "s,", t.get("stopped") or "all steps run,", round(t.get("tokens_per_s", 0)), "tok/s, final loss", t.get("final_train_loss"),
          "mean top share", t.get("mean_top_share"), "max load", t.get("max_load"))
    print("  domains:", [(d.get("domain"), round(d.get("val_bits_per_byte", 0), 3)) for d in t["domains"]])
PY
}

case "${1:-}" in
  build) shift; build "$@" ;;
  run)
    shift
    mkdir -p "$work"
    run "$@" 2>&1 | tee "$work/run.log"
    cp "$work/run.log" "$out/run.log" 2> /dev/null
    ;;
  *) echo "usage: $0 build [SHARED_BENCH_DIR] [CORPUS] | run [tests equiv bench train compile overlap command cluster science]" >&2; exit 2 ;;
esac
